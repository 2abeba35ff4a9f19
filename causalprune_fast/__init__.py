"""causalprune_fast: data-free causal channel scoring for structured pruning.

Implements "On Causal Inference for Data-free Structured Pruning" (Ferianc et al., 2021): drive
a network with maximum-entropy noise and score every channel by the binned mutual information
that flows through it. What is computed is specified in METHOD.md; the estimator's entry points
are :func:`pairwise_mi` and :func:`quantize`.
"""

from causalprune_fast import _extension  # noqa: F401  (loads the C++ ops)
from causalprune_fast.backends import BackendStatus, available_backends
from causalprune_fast.estimator import (
    PairwiseMISums,
    default_memory_budget,
    pairwise_mi,
    quantize,
)
from causalprune_fast.prune_report import PruneReport
from causalprune_fast.pruning import prune
from causalprune_fast.results import CausalScores, LayerScores
from causalprune_fast.score import score_model

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "CausalScores",
    "LayerScores",
    "PairwiseMISums",
    "PruneReport",
    "available_backends",
    "default_memory_budget",
    "pairwise_mi",
    "prune",
    "quantize",
    "score_model",
]
