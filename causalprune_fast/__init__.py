"""causalprune_fast: data-free causal channel scoring for structured pruning.

Implements "On Causal Inference for Data-free Structured Pruning" (Ferianc et al., 2021): drive
a network with maximum-entropy noise and score every channel by the binned mutual information
that flows through it. What is computed is specified in docs/method.md; the estimator's entry points
are :func:`pairwise_mi` and :func:`quantize`.

The package's folders are its layers, each importing only from the ones listed before it
(README.md, "Architecture"): ``base``, ``estimator``, ``model``, ``results``, ``scoring``,
``pruning``, ``cli``. The module paths of the earlier flat layout still work for one release
(``_aliases.py``).
"""

from causalprune_fast import _aliases
from causalprune_fast.base.memory import default_memory_budget
from causalprune_fast.estimator.backends import BackendStatus, available_backends
from causalprune_fast.estimator.ops import PairwiseMISums, pairwise_mi, quantize
from causalprune_fast.pruning.checkpoint_prune import load_pruned, prune_checkpoint
from causalprune_fast.pruning.prune_model import prune
from causalprune_fast.pruning.report import PruneReport
from causalprune_fast.results.causal_scores import CausalScores
from causalprune_fast.results.layer_scores import LayerScores
from causalprune_fast.scoring.score import score_model
from causalprune_fast.scoring.score_checkpoint import score_checkpoint

_aliases.install()

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "CausalScores",
    "LayerScores",
    "PairwiseMISums",
    "PruneReport",
    "available_backends",
    "default_memory_budget",
    "load_pruned",
    "pairwise_mi",
    "prune",
    "prune_checkpoint",
    "quantize",
    "score_checkpoint",
    "score_model",
]


def __getattr__(name: str):
    """Old modules as attributes of the package (``causalprune_fast.backends``), as the flat
    layout had them: through their aliases."""
    if name in _aliases.MOVED and "." not in name:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
