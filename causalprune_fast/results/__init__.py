"""Layer 3, results: what one layer's measurement holds (``layer_scores.py``), channel scores
from it by direction and reduction (``channel_scores.py``), :class:`CausalScores`
(``causal_scores.py``) and its file format (``file_format.py``).

``causalprune_fast.results`` offers what the module of that name offered before the layered
layout.
"""

from causalprune_fast.results.causal_scores import CausalScores, spearman
from causalprune_fast.results.layer_scores import LayerScores, few_sample_layers

__all__ = ["CausalScores", "LayerScores", "few_sample_layers", "spearman"]
