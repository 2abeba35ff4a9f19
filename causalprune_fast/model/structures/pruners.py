"""Torch-Pruning custom pruners for modules traced as one node
(:mod:`causalprune_fast.model.structures`), and the measured layers inside them.

Each pruner is a ``tp.pruner.function.BasePruningFunc`` (Torch-Pruning's documented extension
point). ``prune_out_channels`` removes the module's output channels, ``prune_in_channels`` its
input channels; a **pass-through** pruner has one function for both (``prune_in_channels =
prune_out_channels``, Torch-Pruning's intra-layer dependency): the module's input and output
are the same channels (a residual stream through an attention whose width is the stream's).
Beside Torch-Pruning's interface, :meth:`StructurePruner.members` lists the measured layers
inside the module that a group's channels reach, with their indices, so that causal scores
(``channel_members``) see through the node.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch.nn as nn
import torch_pruning as tp

# (layer, role, [(index in the layer, position in the group's idxs)])
Members = list[tuple[nn.Module, str, list[tuple[int, int]]]]


class StructurePruner(tp.pruner.function.BasePruningFunc):
    """Base of the pruners of :mod:`causalprune_fast.model.structures`."""

    TARGET_MODULES = None

    def members(self, layer: nn.Module, idxs: Sequence[int], out: bool) -> Members:
        """Measured layers inside ``layer`` that channels ``idxs`` of its output (``out``) or
        input reach: ``(sublayer, "producer" | "consumer", [(sub_idx, k)])``, ``k`` indexing
        ``idxs``."""
        return []


def sub(layer: nn.Module, path: str) -> nn.Module:
    """``layer``'s submodule at the dotted ``path``."""
    return operator.attrgetter(path)(layer)


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def drop_rows(layer: nn.Module, idxs: Sequence[int]) -> None:
    """Remove output channels ``idxs`` of a Linear, Conv or norm."""
    idxs = sorted({int(i) for i in idxs})
    if isinstance(layer, nn.Linear):
        tp.prune_linear_out_channels(layer, idxs)
    elif isinstance(layer, nn.LayerNorm):
        tp.prune_layernorm_out_channels(layer, idxs)
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        tp.prune_batchnorm_out_channels(layer, idxs)
    elif isinstance(layer, _CONV) and layer.groups == layer.out_channels:
        tp.prune_depthwise_conv_out_channels(layer, idxs)
    elif isinstance(layer, _CONV):
        tp.prune_conv_out_channels(layer, idxs)
    else:
        raise TypeError(f"cannot prune the outputs of {type(layer).__name__}")


def drop_cols(layer: nn.Module, idxs: Sequence[int]) -> None:
    """Remove input channels ``idxs`` of a Linear or Conv."""
    idxs = sorted({int(i) for i in idxs})
    if isinstance(layer, nn.Linear):
        tp.prune_linear_in_channels(layer, idxs)
    elif isinstance(layer, _CONV):
        tp.prune_conv_in_channels(layer, idxs)
    else:
        raise TypeError(f"cannot prune the inputs of {type(layer).__name__}")


def width(layer: nn.Module, out: bool) -> int:
    """Output (``out``) or input channels of a Linear or Conv."""
    if isinstance(layer, nn.Linear):
        return layer.out_features if out else layer.in_features
    return layer.out_channels if out else layer.in_channels


def same(idxs: Sequence[int]) -> list[tuple[int, int]]:
    return [(int(i), k) for k, i in enumerate(idxs)]


def per_head(idxs: Sequence[int], channels: int, heads: int, where: str) -> None:
    """Raise a ValueError unless ``idxs`` remove as many of ``channels`` from every one of
    ``heads`` equal blocks (what the module's forward needs; Torch-Pruning's channel groups,
    ``get_out_channel_groups``, ensure it)."""
    if channels % heads:
        raise ValueError(f"{where}: {channels} channels are not {heads} equal heads")
    size = channels // heads
    counts = [0] * heads
    for i in idxs:
        counts[int(i) // size] += 1
    if len(set(counts)) > 1:
        raise ValueError(
            f"{where}: pruning {len(idxs)} of {channels} channels would leave heads of different "
            f"widths (removed per head: {counts}); prune the same number from each of the "
            f"{heads} heads"
        )


class StreamPruner(StructurePruner):
    """A module that reads and writes a stream and keeps its inside (heads, head dims): input
    channels are the input columns of ``inputs`` (Linear layers, dotted paths), output channels
    the output rows of ``outputs`` (with the norms listed there, in order)."""

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str]):
        super().__init__()
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        for path in self.outputs:
            drop_rows(sub(layer, path), idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        for path in self.inputs:
            drop_cols(sub(layer, path), idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return width(sub(layer, self.outputs[0]), True)

    def get_in_channels(self, layer: nn.Module) -> int:
        return width(sub(layer, self.inputs[0]), False)

    def members(self, layer: nn.Module, idxs: Sequence[int], out: bool) -> Members:
        if out:
            return [(sub(layer, self.outputs[0]), "producer", same(idxs))]
        return [(sub(layer, p), "consumer", same(idxs)) for p in self.inputs]


class FusedAttentionPruner(StructurePruner):
    """Pass-through: an attention whose width is its input's (its forward reshapes the fused
    ``qkv`` output with ``C // num_heads``, C the input width: torchvision Swin and MaxViT,
    CoaT). Stream channel ``i`` is pruned with head dim ``i`` (head ``i // head_dim``): the
    input column and the q, k and v rows ``i``, ``C + i``, ``2C + i`` of ``qkv``, the input
    column and output row ``i`` of ``proj``. The heads stay; every head loses the same
    number of dims (``get_out_channel_groups`` = the heads). ``head_dim``, where named, is kept
    equal to the new width over the heads."""

    def __init__(self, qkv: str, proj: str, heads: str, head_dim: str | None = None):
        super().__init__()
        self.qkv, self.proj, self.heads, self.head_dim = qkv, proj, heads, head_dim

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        qkv, proj = sub(layer, self.qkv), sub(layer, self.proj)
        c, heads = proj.out_features, getattr(layer, self.heads)
        per_head(idxs, c, heads, type(layer).__name__)
        self.before(layer, idxs, c, heads)
        drop_rows(qkv, [i + k * c for k in range(3) for i in idxs])
        drop_cols(qkv, idxs)
        drop_rows(proj, idxs)
        drop_cols(proj, idxs)
        if self.head_dim is not None:
            setattr(layer, self.head_dim, proj.out_features // heads)
        return layer

    prune_in_channels = prune_out_channels

    def before(self, layer: nn.Module, idxs: Sequence[int], width: int, heads: int) -> None:
        """Whatever else the module holds per head dim (CoaT's shared position encoding)."""

    def get_out_channels(self, layer: nn.Module) -> int:
        return sub(layer, self.proj).out_features

    get_in_channels = get_out_channels

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return int(getattr(layer, self.heads))

    get_in_channel_groups = get_out_channel_groups

    def members(self, layer: nn.Module, idxs: Sequence[int], out: bool) -> Members:
        qkv, proj = sub(layer, self.qkv), sub(layer, self.proj)
        c = proj.out_features
        rows = [(i + j * c, k) for j in range(3) for k, i in enumerate(idxs)]
        return [
            (qkv, "consumer", same(idxs)),
            (qkv, "producer", rows),
            (proj, "consumer", same(idxs)),
            (proj, "producer", same(idxs)),
        ]


class PassThroughPruner(StructurePruner):
    """A module that moves tokens, never channels (torchvision MaxViT's window partition):
    nothing of its own to prune."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    get_in_channels = get_out_channels
