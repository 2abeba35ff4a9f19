"""Layer 1, the estimator: the public ops :func:`quantize` and :func:`pairwise_mi`
(``ops.py``), the one dispatcher over the backends (``backends.py``), the pure-PyTorch
reference, memory-bounded tiling, the compiled extension and the Triton kernels (``triton/``).

It imports only the base layer. The kernels never import the public ops or the dispatcher.
``causalprune_fast.estimator`` offers what the module of that name offered before the layered
layout.
"""

from causalprune_fast.base.memory import default_memory_budget
from causalprune_fast.estimator.ops import (
    PairwiseMISums,
    pairwise_mi,
    pairwise_mi_of_codes,
    quantize,
)

__all__ = [
    "PairwiseMISums",
    "default_memory_budget",
    "pairwise_mi",
    "pairwise_mi_of_codes",
    "quantize",
]
