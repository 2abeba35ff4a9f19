"""Members of a channel group: the measured layers that Torch-Pruning couples to a root
layer's output channels (docs/method.md section 6.2), as read from its groups by
:mod:`causalprune_fast.model.channel_graph`, including the virtual layers of
``nn.MultiheadAttention`` that Torch-Pruning prunes inside the attention module."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn as nn

from causalprune_fast.model.families import out_channels
from causalprune_fast.model.llm_graph import conv1d_pruner


@functools.lru_cache(maxsize=64)
def identity_indices(n: int) -> tuple[int, ...]:
    """``tuple(range(n))``, one shared tuple per ``n``: the members of a model's residual-stream
    groups all carry every hidden channel, and a tuple of their own each would take
    ``groups x members x n`` Python ints (about 1 GiB for a 1.5B Llama, 30 GB for 70B)."""
    return tuple(range(n))


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
            r = identity_indices(d["identity"])
            return Member(d["layer"], d["role"], r, r)
        return Member(d["layer"], d["role"], tuple(d["idxs"]), tuple(d["root_idxs"]))


def torch_pruning_available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


Attention = Mapping[nn.Module, tuple[str | None, str | None]]


def attention_layers(model: nn.Module, measured: set[str] | list[str]) -> dict:
    """``nn.MultiheadAttention`` modules of ``model`` with the names of their measured virtual
    layers: module -> (``<mha>.in_proj`` or None, ``<mha>.out_proj`` or None)."""
    measured = set(measured)
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            in_proj, out_proj = f"{prefix}in_proj", f"{prefix}out_proj"
            pair = (
                in_proj if in_proj in measured else None,
                out_proj if out_proj in measured else None,
            )
            if pair != (None, None):
                out[m] = pair
    return out


def members_of_group(
    group, module_names: Mapping[nn.Module, str], attention: Attention | None = None
) -> list[Member]:
    """The measured members of a Torch-Pruning group (layers not in ``module_names`` are
    skipped: norms, activations, unmeasured layers); ``attention`` (see
    :func:`attention_layers`) adds the virtual layers of the ``nn.MultiheadAttention`` members."""
    items = ((item.dep, item.idxs, item.root_idxs) for item in group)
    return members_of_items(items, module_names, attention)


def members_of_items(
    items, module_names: Mapping[nn.Module, str], attention: Attention | None = None
) -> list[Member]:
    """Members from ``(dependency, idxs, root_idxs)`` triples of a Torch-Pruning group.

    An ``nn.MultiheadAttention`` member (Torch-Pruning prunes its embedding channels: the
    columns of ``in_proj_weight`` and the rows of ``out_proj``, with the stream it reads and
    writes) contributes its measured virtual layers: ``<mha>.out_proj`` as a producer (its
    output channels are the stream's) and ``<mha>.in_proj`` as a consumer (its input units
    are). A module that Torch-Pruning sees as one node with a pruner of
    :mod:`causalprune_fast.model.structures` (window attention, patch merging, ...)
    contributes the measured layers inside it that the pruner lists
    (``StructurePruner.members``)."""
    import torch_pruning as tp

    from causalprune_fast.model.structures.pruners import StructurePruner

    out_fns = {
        tp.prune_conv_out_channels,
        tp.prune_linear_out_channels,
        tp.prune_depthwise_conv_out_channels,
        conv1d_pruner().prune_out_channels,
    }
    in_fns = {
        tp.prune_conv_in_channels,
        tp.prune_linear_in_channels,
        conv1d_pruner().prune_in_channels,
    }
    members = []
    mha_fn = tp.prune_multihead_attention_out_channels  # the same for its in-channels
    for dep, idxs, root_idxs in items:
        if any(r is None for r in root_idxs):
            continue
        if attention and dep.target.module in attention and dep.handler == mha_fn:
            in_proj, out_proj = attention[dep.target.module]
            pair = []
            if out_proj is not None:
                pair.append(Member(out_proj, "producer", tuple(idxs), tuple(root_idxs)))
            if in_proj is not None:
                pair.append(Member(in_proj, "consumer", tuple(idxs), tuple(root_idxs)))
            # The module is reached from its input and from its output with one handler.
            members += [m for m in pair if m not in members]
            continue
        pruner = getattr(dep.handler, "__self__", None)
        if isinstance(pruner, StructurePruner):
            out = dep.handler == pruner.prune_out_channels
            for layer, role, pairs in pruner.members(dep.target.module, idxs, out):
                if module_names.get(layer) is not None and pairs:
                    sub, ks = zip(*pairs, strict=True)
                    m = Member(module_names[layer], role, sub, tuple(root_idxs[k] for k in ks))
                    members += [] if m in members else [m]
            continue
        name = module_names.get(dep.target.module)
        if name is None:
            continue
        if dep.handler in out_fns:
            members.append(Member(name, "producer", tuple(idxs), tuple(root_idxs)))
            if dep.handler is tp.prune_depthwise_conv_out_channels:
                # A depthwise conv's input and output channels are the same channels.
                members.append(Member(name, "consumer", tuple(idxs), tuple(root_idxs)))
        elif dep.handler in in_fns:
            members.append(Member(name, "consumer", tuple(idxs), tuple(root_idxs)))
    return members


def out_proj_groups(groups: dict[str, list[Member]], out_projs: list[str]) -> dict:
    """The group of each ``<mha>.out_proj`` (a virtual layer, never a root of Torch-Pruning's
    walk), or of a layer inside a module Torch-Pruning sees as one node: the group of a root
    that has it as a producer of one channel per root channel, re-indexed by its own
    channels."""
    found = {}
    for root, root_members in groups.items():
        for member in root_members:
            if member.layer not in out_projs or member.role != "producer" or member.layer == root:
                continue
            if len(set(member.root_idxs)) < len(member.root_idxs):
                continue  # several of its channels per root channel (fused q, k, v rows)
            if member.layer in found:
                continue
            own = dict(zip(member.root_idxs, member.idxs, strict=True))  # root -> out_proj
            regrouped = []
            for m in root_members:
                keep = [k for k, r in enumerate(m.root_idxs) if r in own]
                if keep:
                    regrouped.append(
                        Member(
                            m.layer,
                            m.role,
                            tuple(m.idxs[k] for k in keep),
                            tuple(own[m.root_idxs[k]] for k in keep),
                        )
                    )
            found[member.layer] = regrouped
    return found


def alone(name: str, channels: int) -> list[Member]:
    """The group of a layer without coupling: the only producer of its ``channels`` output
    channels, no consumer."""
    r = identity_indices(channels)
    return [Member(name, "producer", r, r)]


def alone_groups(model: nn.Module, layer_names: list[str]) -> dict[str, list[Member]]:
    """:func:`alone` for every layer of ``layer_names`` (modules of ``model``)."""
    return {name: alone(name, out_channels(model.get_submodule(name))) for name in layer_names}
