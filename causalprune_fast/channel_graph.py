"""Producers and consumers of every prunable channel, from Torch-Pruning's dependency graph,
and the reduction of per-layer sums into channel scores (METHOD.md section 6).

A Torch-Pruning group rooted at a layer's output channels lists every coupled module with the
channel indices it shares with the root: out-channel members (conv/linear whose output
channel it is, including the other writers of a residual stream, and depthwise convolutions)
are the channel's producers, in-channel members are its consumers. No graph code of our own:
the dependency graph is Torch-Pruning's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

DIRECTIONS = ("in", "out", "both")
REDUCTIONS = ("sum", "mean", "max")


@dataclass(frozen=True)
class Member:
    """One measured layer coupled to a root layer's output channels.

    ``role`` is "producer" (the channels are its outputs) or "consumer" (its inputs);
    ``idxs[k]`` is the member's channel that carries root channel ``root_idxs[k]``.
    """

    layer: str
    role: str
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]

    def to_json(self) -> dict:
        d = {"layer": self.layer, "role": self.role}
        if self.idxs == self.root_idxs == tuple(range(len(self.idxs))):
            d["identity"] = len(self.idxs)
        else:
            d["idxs"], d["root_idxs"] = list(self.idxs), list(self.root_idxs)
        return d

    @staticmethod
    def from_json(d: dict) -> Member:
        if "identity" in d:
            r = tuple(range(d["identity"]))
            return Member(d["layer"], d["role"], r, r)
        return Member(d["layer"], d["role"], tuple(d["idxs"]), tuple(d["root_idxs"]))


def torch_pruning_available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def members_of_group(group, module_names: Mapping[nn.Module, str]) -> list[Member]:
    """The measured members of a Torch-Pruning group (layers not in ``module_names`` are
    skipped: norms, activations, unmeasured layers)."""
    import torch_pruning as tp

    out_fns = {
        tp.prune_conv_out_channels,
        tp.prune_linear_out_channels,
        tp.prune_depthwise_conv_out_channels,
    }
    in_fns = {tp.prune_conv_in_channels, tp.prune_linear_in_channels}
    members = []
    for item in group:
        dep, idxs = item.dep, item.idxs
        name = module_names.get(dep.target.module)
        if name is None or any(r is None for r in item.root_idxs):
            continue
        if dep.handler in out_fns:
            members.append(Member(name, "producer", tuple(idxs), tuple(item.root_idxs)))
            if dep.handler is tp.prune_depthwise_conv_out_channels:
                # A depthwise conv's input and output channels are the same channels.
                members.append(Member(name, "consumer", tuple(idxs), tuple(item.root_idxs)))
        elif dep.handler in in_fns:
            members.append(Member(name, "consumer", tuple(idxs), tuple(item.root_idxs)))
    return members


def build_groups(
    model: nn.Module, example_input: torch.Tensor, layer_names: list[str]
) -> tuple[dict[str, list[Member]], str]:
    """Members of the output-channel group of every layer in ``layer_names``, and a note on how
    they were found. Without Torch-Pruning (or where its graph cannot be built), every layer
    is its own only producer and has no known consumers; the note says so."""
    if not torch_pruning_available():
        note = "torch-pruning not installed: no coupled channels, no consumers"
        return _alone(model, layer_names), note
    import torch_pruning as tp

    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
    except Exception as e:  # tracing arbitrary models can fail in many ways
        note = f"Torch-Pruning could not build the dependency graph ({type(e).__name__}: {e})"
        return _alone(model, layer_names), note
    names = {m: n for n, m in model.named_modules() if n in set(layer_names)}
    groups = {}
    for name in layer_names:
        module = model.get_submodule(name)
        if module not in dg.module2node:
            groups[name] = _alone(model, [name])[name]
            continue
        pruner = dg.get_pruner_of_module(module)
        channels = pruner.get_out_channels(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        members = members_of_group(group, names)
        if not any(m.layer == name and m.role == "producer" for m in members):
            members.insert(0, _alone(model, [name])[name][0])
        groups[name] = members
    return groups, "Torch-Pruning dependency graph"


def _alone(model: nn.Module, layer_names: list[str]) -> dict[str, list[Member]]:
    out = {}
    for name in layer_names:
        m = model.get_submodule(name)
        c = m.out_channels if hasattr(m, "out_channels") else m.out_features
        out[name] = [Member(name, "producer", tuple(range(c)), tuple(range(c)))]
    return out


def _reduce(
    members: list[Member],
    role: str,
    values: Mapping[str, torch.Tensor],
    channels: int,
    reduction: str,
) -> torch.Tensor | None:
    """Per root channel, the reduction of ``values[member][idx]`` over members of ``role``."""
    parts = []
    for m in members:
        if m.role != role or m.layer not in values:
            continue
        v = torch.full((channels,), float("nan"), dtype=torch.float64)
        v[list(m.root_idxs)] = values[m.layer].double().cpu()[list(m.idxs)]
        parts.append(v)
    if not parts:
        return None
    stacked = torch.stack(parts)  # [members, channels], NaN where a member misses a channel
    present = ~torch.isnan(stacked)
    if reduction == "max":
        return stacked.nan_to_num(float("-inf")).amax(dim=0).where(present.any(0), 0.0)
    total = stacked.nan_to_num(0.0).sum(dim=0)
    if reduction == "mean":
        total = total / present.sum(dim=0).clamp_min(1)
    return total


def channel_scores(
    members: list[Member],
    channels: int,
    incoming: Mapping[str, torch.Tensor],
    outgoing: Mapping[str, torch.Tensor],
    direction: str,
    reduction: str = "sum",
) -> torch.Tensor:
    """Scores of a root layer's output channels (METHOD.md section 6).

    ``in``: reduction of the producers' ``incoming``; ``out``: of the consumers'
    ``outgoing`` (``in`` where no consumer is measured); ``both``: the two, each divided by its
    mean over the channels, added.
    """
    score_in = _reduce(members, "producer", incoming, channels, reduction)
    if score_in is None:
        raise ValueError("no measured producer for these channels")
    if direction == "in":
        return score_in
    score_out = _reduce(members, "consumer", outgoing, channels, reduction)
    if score_out is None:
        return score_in
    if direction == "out":
        return score_out
    return score_in / _mean_or_one(score_in) + score_out / _mean_or_one(score_out)


def _mean_or_one(t: torch.Tensor) -> torch.Tensor:
    m = t.mean()
    return m if m > 0 else torch.ones((), dtype=t.dtype)
