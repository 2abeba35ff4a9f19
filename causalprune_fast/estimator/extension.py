"""Loading of the compiled extension ``causalprune_fast._C``.

Importing it registers ``torch.ops.causalprune_fast.*`` with their CPU (and, when built, CUDA)
kernels. A missing or broken build does not break ``import causalprune_fast``: the reference
and Triton backends keep working, and :func:`causalprune_fast.available_backends` says why the
compiled ones do not.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch  # noqa: F401  (loads libc10 and libtorch before the extension)

from causalprune_fast.estimator.fake_kernels import register as _register_fake_kernels

_C: ModuleType | None
try:
    # The compiled module itself, by its full name: not an attribute lookup on the package,
    # whose __init__ is still being imported when it imports this module.
    _C = importlib.import_module("causalprune_fast._C")  # registers the ops
    _register_fake_kernels()
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
