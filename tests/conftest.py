"""Shared test set-up.

Without a GPU the Triton kernels run on the CPU through Triton's interpreter; it must be
switched on before any kernel is defined, so it is set here, before the package is imported.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def no_tf32():
    """TF32 off for torch's CUDA matmuls during a test (its references in full float32); the
    fused-kernel tests use it (``pytest.mark.usefixtures("no_tf32")``)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old
