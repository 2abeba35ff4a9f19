"""Channel scores from per-layer MI sums: directions ``in``/``out``/``both``/``auto`` and
reductions ``sum``/``mean``/``max`` over a channel's producers or consumers (docs/method.md
section 6).

A channel's entries are every (member layer, feature of that layer that carries the channel)
pair of its group (``channel_graph.Member``): a conv channel read through Flatten by a Linear
has one entry per feature it owns there.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from causalprune_fast.model.channel_members import Member

DIRECTIONS = ("in", "out", "both", "auto")
REDUCTIONS = ("sum", "mean", "max")
# Layer kinds (``LayerScores.kind``, the module's class name) that are convolutions: torch's
# Conv1d/2d/3d and their subclasses named after them (timm's Conv2dSame, StdConv2d, ...).
# transformers' ``Conv1D`` (GPT-2, a Linear layer) is not one.
_CONV_NAMES = ("Conv1d", "Conv2d", "Conv3d")


def is_convolution(kind: str) -> bool:
    """Whether a measured layer of this kind (its class name) is a convolution."""
    return any(name in kind for name in _CONV_NAMES)


def auto_direction(members: list[Member], kinds: Mapping[str, str] | None) -> str:
    """The direction ``"auto"`` takes for one channel group: ``"in"`` for conv channels (every
    measured producer a convolution), ``"out"`` for every other channel (attention heads or
    head dims, MLP neurons, the hidden size of transformers). Where no consumer is measured,
    ``"out"`` falls back to ``"in"`` as it always does. The choice follows
    ``benchmarks/quality/RESULTS.md`` (docs/method.md section 6.3)."""
    producers = [m.layer for m in members if m.role == "producer"]
    if kinds is not None and producers and all(is_convolution(kinds.get(p, "")) for p in producers):
        return "in"
    return "out"


def _reduce(
    members: list[Member],
    role: str,
    values: Mapping[str, torch.Tensor],
    channels: int,
    reduction: str,
) -> torch.Tensor | None:
    """Per root channel, the reduction of ``values[member][idx]`` over its entries, or None
    where no member of ``role`` is measured.

    The entries of root channel ``c`` are every pair (member of ``role``, position ``k``) with
    ``member.root_idxs[k] == c``, valued ``values[member.layer][member.idxs[k]]``: one per
    member for a channel carried one-to-one, several per member where the index map is
    many-to-one (``Flatten``/reshape into a Linear: each spatial feature of the channel is an
    entry). ``sum`` adds all entries, ``mean`` divides that sum by their number, ``max`` takes
    the largest; a channel without entries scores 0.
    """
    total = torch.zeros(channels, dtype=torch.float64)
    count = torch.zeros(channels, dtype=torch.float64)
    peak = torch.full((channels,), float("-inf"), dtype=torch.float64)
    found = False
    for m in members:
        if m.role != role or m.layer not in values:
            continue
        found = True
        v = values[m.layer].detach().double().cpu()
        root = torch.tensor(m.root_idxs, dtype=torch.long)
        idxs = torch.tensor(m.idxs, dtype=torch.long)
        # Torch-Pruning can map a channel past the end of a member (a concatenation at the
        # model's output is coupled like a sum): such entries name no channel and are dropped.
        ok = (idxs < len(v)) & (root < channels)
        root, vals = root[ok], v[idxs[ok]]
        # Scatter-add, not assignment: with repeated root indices every entry counts.
        total.index_add_(0, root, vals)
        count.index_add_(0, root, torch.ones_like(vals))
        peak.scatter_reduce_(0, root, vals, reduce="amax")
    if not found:
        return None
    if reduction == "max":
        return peak.where(count > 0, 0.0)
    if reduction == "mean":
        return total / count.clamp_min(1)
    return total


def channel_scores(
    members: list[Member],
    channels: int,
    incoming: Mapping[str, torch.Tensor],
    outgoing: Mapping[str, torch.Tensor],
    direction: str,
    reduction: str = "sum",
    kinds: Mapping[str, str] | None = None,
) -> torch.Tensor:
    """Scores of a root layer's output channels (docs/method.md section 6).

    ``in``: reduction of the producers' ``incoming``; ``out``: of the consumers'
    ``outgoing``; ``both``: the two, each divided by its mean over the channels, added;
    ``auto``: ``in`` or ``out`` by the kind of channel (:func:`auto_direction`; ``kinds`` maps
    each measured layer's name to its ``LayerScores.kind``). The reduction runs over every
    (member, feature) entry of a channel (see ``_reduce``). Where no consumer is measured
    (``has_measured_consumer`` is False), ``out`` falls back to the ``in`` scores and ``both``
    to the ``in`` term alone (``in`` divided by its mean); ``direction_fallbacks`` lists those
    layers.
    """
    if direction == "auto":
        direction = auto_direction(members, kinds)
    score_in = _reduce(members, "producer", incoming, channels, reduction)
    if score_in is None:
        raise ValueError("no measured producer for these channels")
    if direction == "in":
        return score_in
    score_out = _reduce(members, "consumer", outgoing, channels, reduction)
    if score_out is None:
        return score_in if direction == "out" else score_in / _mean_or_one(score_in)
    if direction == "out":
        return score_out
    return score_in / _mean_or_one(score_in) + score_out / _mean_or_one(score_out)


def has_measured_consumer(members: list[Member], outgoing: Mapping[str, torch.Tensor]) -> bool:
    """Whether a measured layer reads the root layer's output channels."""
    return any(m.role == "consumer" and m.layer in outgoing for m in members)


def direction_fallbacks(
    groups: Mapping[str, list[Member]],
    layers: Mapping[str, object],
    direction: str,
    warn: bool = True,
) -> dict[str, str]:
    """Layers whose ``out``/``both`` scores fell back to ``in`` (no measured consumer), with
    the reason; empty for ``direction="in"``. Under ``"auto"``, the layers it scores by
    ``out`` that fell back (conv channels are scored by ``in`` by design, not listed).

    ``layers`` maps each measured layer's name to its ``LayerScores`` (``model_output`` and
    ``kind`` are read). With ``warn``, one warning lists the fallbacks that are not model
    outputs (a model output, such as the classifier, has no consumer by construction and is
    not pruned); ``"auto"`` never warns (its fallback to ``in`` is part of its definition).
    """
    if direction == "in":
        return {}
    kinds = {n: getattr(s, "kind", "") for n, s in layers.items()}
    out = {}
    for name, layer in layers.items():
        members = groups.get(name, [])
        if has_measured_consumer(members, layers):
            continue
        if direction == "auto" and auto_direction(members, kinds) == "in":
            continue
        if getattr(layer, "model_output", False):
            out[name] = "model output, no consumer"
        else:
            out[name] = "no measured consumer"
    unexpected = [n for n, r in out.items() if r == "no measured consumer"]
    if warn and unexpected and direction != "auto":
        shown = ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
        warnings.warn(
            f"direction={direction!r}: {len(unexpected)} layer(s) have no measured consumer "
            f"(the layers reading their channels are not measured, or the channel graph lost "
            f"them: see config['graph']) and are scored by their producers' incoming MI "
            f"('in') instead: {shown}",
            stacklevel=3,
        )
    return out


def _mean_or_one(t: torch.Tensor) -> torch.Tensor:
    m = t.mean()
    return m if m > 0 else torch.ones((), dtype=t.dtype)
