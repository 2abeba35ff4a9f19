"""Shared test set-up.

Without a GPU the Triton kernels run on the CPU through Triton's interpreter; it must be
switched on before any kernel is defined, so it is set here, before the package is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
