"""Layer 5, pruning with causal scores: one-call :func:`prune` (``prune_model.py``), its report
(``report.py``), the models it refuses (``refusals.py``), Torch-Pruning's importance
(``importance.py``), what Torch-Pruning is told about attention (``attention_pruning.py``) and
about GPT-2 and Llama besides their graph (``llm_pruning.py``), and the
``torch.nn.utils.prune`` method (``nn_prune.py``).

``causalprune_fast.pruning`` offers what the module of that name offered before the layered
layout.
"""

from causalprune_fast.pruning.prune_model import SHORTFALL, model_output_layers, prune

__all__ = ["SHORTFALL", "model_output_layers", "prune"]
