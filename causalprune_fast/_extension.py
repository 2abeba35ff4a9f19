"""Loading of the compiled extension ``causalprune_fast._C``.

Importing it registers ``torch.ops.causalprune_fast.*`` with their CPU (and, when built, CUDA)
kernels. A missing or broken build does not break ``import causalprune_fast``: the reference
and Triton backends keep working, and :func:`causalprune_fast.available_backends` says why the
compiled ones do not.
"""

from __future__ import annotations

from types import ModuleType

import torch  # noqa: F401  (loads libc10 and libtorch before the extension)

_C: ModuleType | None
try:
    from causalprune_fast import (
        _C,  # noqa: F401  (registers the ops)
        _fake_kernels,
    )

    _fake_kernels.register()
    LOAD_ERROR: str | None = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    _C = None
    LOAD_ERROR = f"{type(e).__name__}: {e}"


def extension() -> ModuleType:
    """The loaded extension, or a RuntimeError saying why it is not there."""
    if _C is None:
        raise RuntimeError(
            "the causalprune_fast C++ extension is not built or failed to load "
            f"({LOAD_ERROR}); build it with `pip install --no-build-isolation -e .`"
        )
    return _C
