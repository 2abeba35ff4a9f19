"""Which channels :func:`~causalprune_fast.prune` would remove, chosen from scores without the
model in memory: the rules of Torch-Pruning's pruner (``tp.pruner.BasePruner``, local
pruning, one step) as ``prune()`` sets it up, applied to the groups of a Llama-layout or GPT-2
model (:mod:`causalprune_fast.pruning.checkpoint_layout`).

For every group, the importance is what
:class:`~causalprune_fast.pruning.importance.CausalImportance` returns for it: the
channel scores of its measured members under ``direction`` and ``group_reduction``, in
float32, normalised by Torch-Pruning's ``normalizer``. Then, as Torch-Pruning does:

- hidden size and MLP width: ``n = C - int(C * (1 - ratio))`` channels with the lowest
  importance (``torch.topk``) go; GPT-2's hidden size instead goes to the width of its pruned
  attention, ``heads x int(head_dim x (1 - ratio))``, as ``prune()`` gives its group the ratio
  of :func:`~causalprune_fast.pruning.hf_config.hidden_width_ratio`;
- Llama attention (whole query heads, ``prune_num_heads``): each head's importance is the mean
  over its channels; ``ceil(ratio * H)`` heads go, the lowest; with grouped-query attention
  ``ceil(that / G)`` from each of the ``G`` key/value groups (key and value heads are kept);
  without it, the same heads of ``k_proj`` and ``v_proj`` go with them;
- GPT-2 attention (head dims): the importance of head dim ``d`` is its mean over the heads;
  ``n = D - int(D * (1 - ratio))`` dims go, the same in every head (and in q, k and v);
- a group whose cut would leave no channel is left alone (Torch-Pruning's check).

GPT-2's queries are then multiplied by ``sqrt(new head_dim / old head_dim)`` where its
attention scales its scores (``scale_attn_weights``), as
:func:`~causalprune_fast.pruning.hf_config.keep_attention_scale` does in memory:
``ShardPlan.query_scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from causalprune_fast.model.block_layouts import Family
from causalprune_fast.pruning.checkpoint_layout import PruneGroup, prune_groups
from causalprune_fast.pruning.hf_config import hidden_width_ratio
from causalprune_fast.results.causal_scores import CausalScores
from causalprune_fast.results.channel_scores import channel_scores


@dataclass
class ShardPlan:
    """The channels to keep (sorted indices) of every dimension that loses channels:
    ``kept["hidden"]``, and per block ``k`` ``kept[("mlp", k)]``, ``kept[("q", k)]`` and
    ``kept[("kv", k)]`` (Llama) or ``kept[("attn", k)]`` and ``kept[("qkv", k)]`` (GPT-2);
    ``widths`` holds every group's width before and after (named as prune()'s report names
    them); ``query_scale``: the factor of GPT-2's query channels (1.0: unchanged)."""

    kept: dict = field(default_factory=dict)
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    group_channel_groups: dict[str, int] = field(default_factory=dict)
    query_scale: float = 1.0

    def keep(self, what: str, block: int | None) -> list[int]:
        return self.kept["hidden"] if what == "hidden" else self.kept[(what, block)]


def _importance(group: PruneGroup, scores: CausalScores, direction, reduction, normalizer):
    """CausalImportance of one group: None where no measured layer produces its channels."""
    members = [m for m in group.members if m.layer in scores.layers]
    if not any(m.role == "producer" for m in members):
        return None
    incoming = {n: s.incoming for n, s in scores.layers.items()}
    outgoing = {n: s.outgoing for n, s in scores.layers.items()}
    kinds = {n: s.kind for n, s in scores.layers.items()}  # direction="auto" reads them
    imp = channel_scores(
        members, group.width, incoming, outgoing, direction, reduction, kinds
    ).float()
    if not bool(imp.any()):
        return imp
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(normalizer=normalizer)._normalize(imp, normalizer)


def _lowest(imp: torch.Tensor, n: int) -> torch.Tensor:
    return torch.topk(imp, k=n, largest=False)[1]


def _hidden_ratio(family: Family, model: nn.Module, ratio: float) -> float:
    """The ratio prune() gives the hidden size's group: GPT-2's leaves it as wide as the
    pruned attention (:func:`~causalprune_fast.pruning.hf_config.hidden_width_ratio`)."""
    if family.name != "gpt2":
        return ratio
    attn = model.get_submodule(f"{family.block_names(model)[0]}.attn")
    hidden = hidden_width_ratio([("gpt2", attn)], ratio)
    return ratio if hidden is None else hidden[1]


def _removed_channels(group: PruneGroup, imp: torch.Tensor, ratio: float, family: Family):
    """Indices (in the group's index space) that Torch-Pruning's pruner removes."""
    if group.kind != "attention":
        n = group.width - int(group.width * (1 - ratio))
        return _lowest(imp, n) if n > 0 else torch.zeros(0, dtype=torch.long)
    heads = group.heads
    dim_imp = imp.view(heads, -1).mean(dim=0)  # channel groups: one per head
    head_dim = group.width // heads
    n = len(dim_imp) - int(len(dim_imp) * (1 - ratio))
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    if family.name == "gpt2":  # head dims, the same in every head
        dims = _lowest(dim_imp, n)
        return torch.cat([dims + h * head_dim for h in range(heads)])
    head_imp = imp.view(heads, -1).mean(dim=1)
    removed = math.ceil(ratio * heads)
    if group.kv_heads < heads:  # grouped-query attention: from every key/value group
        per_group = heads // group.kv_heads
        each = math.ceil(removed / group.kv_heads)
        chosen = torch.cat(
            [
                _lowest(head_imp[g * per_group : (g + 1) * per_group], each) + g * per_group
                for g in range(group.kv_heads)
            ]
        )
    else:
        chosen = _lowest(head_imp, removed)
    if len(chosen) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in chosen.tolist()])


def plan_checkpoint_pruning(
    family: Family,
    model: nn.Module,
    scores: CausalScores,
    ratio: float,
    *,
    direction: str = "auto",
    group_reduction: str = "sum",
    normalizer="mean",
) -> ShardPlan:
    """The channels prune() keeps in a model of ``family`` (``model``: its layout, e.g. on
    ``meta``) given its ``scores`` (module docstring)."""
    plan = ShardPlan()
    hidden_ratio = _hidden_ratio(family, model, ratio)
    for group in prune_groups(family, model):
        imp = _importance(group, scores, direction, group_reduction, normalizer)
        removed: list[int] = []
        r = hidden_ratio if group.kind == "hidden" else ratio
        if imp is not None:
            removed = sorted(set(_removed_channels(group, imp, r, family).tolist()))
        if len(removed) >= group.width:  # Torch-Pruning never empties a group
            removed = []
        keep = [i for i in range(group.width) if i not in set(removed)]
        _record(plan, family, group, keep)
    if family.name == "gpt2":
        attn = model.get_submodule(f"{family.block_names(model)[0]}.attn")
        new = len(plan.kept[("attn", 0)]) // attn.num_heads
        if new != attn.head_dim and getattr(attn, "scale_attn_weights", False):
            plan.query_scale = math.sqrt(new / attn.head_dim)
    return plan


def _record(plan: ShardPlan, family: Family, group: PruneGroup, keep: list[int]) -> None:
    k, w = group.block, group.width
    if group.kind == "hidden":
        plan.kept["hidden"] = keep
        plan.groups[group.root] = (w, len(keep))
        plan.group_channel_groups[group.root] = 1
    elif group.kind == "mlp":
        plan.kept[("mlp", k)] = keep
        plan.groups[group.root] = (w, len(keep))
        plan.group_channel_groups[group.root] = 1
    elif family.name == "llama":
        plan.kept[("q", k)] = keep
        head_dim = w // group.heads
        if group.kv_heads < group.heads:
            kv = list(range(group.kv_heads * head_dim))
        else:
            kv = keep
        plan.kept[("kv", k)] = kv
        plan.groups[group.root] = (w, len(keep))
        plan.group_channel_groups[group.root] = group.heads
    else:
        plan.kept[("attn", k)] = keep
        plan.kept[("qkv", k)] = keep + [w + i for i in keep] + [2 * w + i for i in keep]
        plan.groups[group.root] = (3 * w, 3 * len(keep))
        plan.group_channel_groups[group.root] = group.heads
