"""What Torch-Pruning's pruner is told about Hugging Face language models besides their graph
(``model/llm_graph.py``; docs/method.md section 9):

- RMSNorm weights (Llama) are Torch-Pruning "unwrapped parameters" pruned with their hidden
  channels (:func:`rmsnorm_parameters`).
- A ``Conv1D`` root (GPT-2) gets its pruning ratio in the pruner as Torch-Pruning's own layer
  types do (:func:`ratio_for_customized_root`).

The names of ``model/llm_graph.py`` are imported here too: the old path
``causalprune_fast.integrations.llm_pruning`` (an alias of this module for one release) offered
them.
"""

from __future__ import annotations

import torch.nn as nn

from causalprune_fast.model.families import is_rmsnorm
from causalprune_fast.model.llm_graph import (
    conv1d_pruner,
    is_rotary_attention,
    torch_pruning_extensions,
    traceable,
)

__all__ = [
    "conv1d_pruner",
    "is_rotary_attention",
    "ratio_for_customized_root",
    "rmsnorm_parameters",
    "torch_pruning_extensions",
    "traceable",
]


def ratio_for_customized_root(pruner, root: nn.Module, ratio: float) -> None:
    """Give ``root`` (a layer with a custom pruner, such as ``Conv1D``) its ``ratio`` in
    ``pruner``, as ``pruning_ratio_dict={root: ratio}`` does for Torch-Pruning's own layer types:
    Torch-Pruning 1.6 keeps only entries whose modules are of its registered types, so a
    ``Conv1D`` entry would be dropped and its group not pruned. Sets what its constructor sets
    for such an entry (a local scope of its own and the per-step ratios); nothing for layers of
    Torch-Pruning's own types."""
    if root in pruner._layer_to_scope or type(root) not in pruner.DG.CUSTOMIZED_PRUNERS:
        return
    scope = f"_Customized_Root_Scope_{len(pruner._layer_to_scope)}"
    pruner._layer_to_scope[root] = (scope, [root])
    pruner.pruning_ratio_dict[root] = pruner.iterative_pruning_ratio_scheduler(
        ratio, pruner.iterative_steps
    )


def rmsnorm_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """``unwrapped_parameters`` for Torch-Pruning: every RMSNorm weight, pruned along dim 0 with
    its hidden channels (``torch.nn.RMSNorm`` has a pruner of its own in no Torch-Pruning 1.6)."""
    return [(m.weight, 0) for m in model.modules() if is_rmsnorm(m)]
