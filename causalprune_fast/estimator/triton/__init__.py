"""Triton backend of causalprune_fast: ``quantize``, ``pairwise_mi`` and ``pairwise_mi_sums``.

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` in the environment before this package is first imported). Arguments
are validated by the public API (causalprune_fast's estimator); these functions only assert.
``python -m causalprune_fast.estimator.triton.compile_check`` compiles them for an H100 (sm_90)
without a GPU and reports registers and spills.
"""

from __future__ import annotations

import os

_IMPORT_ERROR: str | None = None
try:
    from .mi_blocks import INTERPRET
    from .pairwise_mi import TileConfig, pairwise_mi, pairwise_mi_sums, tile_config
    from .quantize import quantize
except ImportError as e:  # triton missing or broken
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"
    INTERPRET = False

    def _unavailable(*args, **kwargs):
        raise RuntimeError(f"the Triton backend is not available ({_IMPORT_ERROR})")

    quantize = pairwise_mi = pairwise_mi_sums = tile_config = _unavailable  # type: ignore
    TileConfig = None  # type: ignore

__all__ = ["is_available", "quantize", "pairwise_mi", "pairwise_mi_sums"]


def is_available(device=None) -> tuple[bool, str]:
    """Whether the Triton kernels can run, and why not.

    True under the interpreter (TRITON_INTERPRET=1 when the kernels were defined; any tensor
    device), or with a CUDA GPU that Triton's NVIDIA backend can target. ``device`` (optional)
    narrows the question to tensors on that device.
    """
    if _IMPORT_ERROR is not None:
        return False, f"triton cannot be imported ({_IMPORT_ERROR})"
    if INTERPRET:
        return True, "Triton interpreter (TRITON_INTERPRET=1)"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False, (
            "TRITON_INTERPRET=1 was set after causalprune_fast.estimator.triton was imported; "
            "set it before the first import"
        )
    import torch

    if device is not None and torch.device(device).type != "cuda":
        return False, f"Triton kernels need CUDA tensors, got device {torch.device(device)}"
    if not torch.cuda.is_available():
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
    try:
        import triton

        target = triton.runtime.driver.active.get_current_target()
    except Exception as e:  # pragma: no cover - depends on the installation
        return False, f"triton has no working GPU driver ({type(e).__name__}: {e})"
    if target.backend != "cuda":
        return False, f"Triton backend {target.backend!r} is not supported (NVIDIA CUDA only)"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return False, (
            f"needs an NVIDIA GPU of compute capability >= 8.0 (int8 tensor-core products), "
            f"got {major}.x"
        )
    return True, f"Triton {triton.__version__} on {torch.cuda.get_device_name()}"
