"""CoaT (timm ``coat``): factorised attention with convolutional relative position encoding.

- ``FactorAttnConvRelPosEnc`` reshapes ``qkv`` with ``C // num_heads`` (C its input width), so
  each stream is pruned together with the head dims, stream channel ``i`` with head dim ``i``
  (:class:`~.pruners.FusedAttentionPruner`); the heads stay. Its ``crpe`` (``ConvRelPosEnc``,
  shared by all attentions of a scale) convolves the value of each group of heads with a
  depthwise conv of its own: those convs lose the same head dims, once per scale, and
  ``channel_splits`` follows.
- ``ConvPosEnc`` (shared per scale: a depthwise conv on the image tokens, the class token put
  back by a concat along the tokens) is one pass-through node whose conv loses the stream's
  channels.
- The class tokens are concatenated along the tokens (``insert_cls``) and the parallel blocks
  resample the feature maps (``interpolate``): channel-preserving nodes. The class tokens
  themselves are pruned with their streams (unwrapped parameters, last dim).
- The head's ``aggregate`` (a Conv1d over the three scales, with the channels along its length)
  is hidden from Torch-Pruning: its own channels are the scales, never pruned.

In CoaT (not Lite) the parallel blocks add the scales 2-4 together and share one MLP, so their
streams are one group. MLPs and patch embeddings are pruned as usual.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch.nn as nn

from causalprune_fast.model.structures.pruners import (
    FusedAttentionPruner,
    Members,
    StructurePruner,
    drop_rows,
    same,
)


def _split_convs(crpe: nn.Module, idxs: Sequence[int], head_dim: int):
    """``(conv, [(local channel, k)])`` of ``crpe``'s convs for value channels ``idxs``."""
    start = 0
    for conv, heads in zip(crpe.conv_list, crpe.head_splits, strict=True):
        lo, hi = start * head_dim, (start + heads) * head_dim
        yield conv, [(int(i) - lo, k) for k, i in enumerate(idxs) if lo <= int(i) < hi]
        start += heads


class CoatAttentionPruner(FusedAttentionPruner):
    """:class:`~.pruners.FusedAttentionPruner` plus the shared ``crpe``'s convs."""

    def __init__(self):
        super().__init__("qkv", "proj", "num_heads")

    def before(self, layer: nn.Module, idxs: Sequence[int], width: int, heads: int) -> None:
        crpe = layer.crpe
        if crpe is None:
            return
        total = sum(crpe.channel_splits)
        if total == width - len(idxs):
            return  # shared: pruned already by another attention of this scale, same channels
        if total != width:
            raise ValueError(
                f"CoaT: the position encoding of an attention of width {width} has {total} channels"
            )
        head_dim = width // heads
        for conv, local in _split_convs(crpe, idxs, head_dim):
            drop_rows(conv, [i for i, _ in local])
        new = (width - len(idxs)) // heads
        crpe.channel_splits = [h * new for h in crpe.head_splits]

    def members(self, layer: nn.Module, idxs: Sequence[int], out: bool) -> Members:
        found = super().members(layer, idxs, out)
        if layer.crpe is not None:
            head_dim = layer.proj.out_features // layer.num_heads
            for conv, local in _split_convs(layer.crpe, idxs, head_dim):
                found += [(conv, "producer", local), (conv, "consumer", local)]
        return found


class ConvPosEncPruner(StructurePruner):
    """Pass-through: ``ConvPosEnc``'s depthwise ``proj`` loses the stream's channels."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        drop_rows(layer.proj, idxs)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.proj.out_channels

    get_in_channels = get_out_channels

    def members(self, layer: nn.Module, idxs: Sequence[int], out: bool) -> Members:
        return [(layer.proj, "producer", same(idxs)), (layer.proj, "consumer", same(idxs))]


_PRUNERS: dict[str, StructurePruner] = {}


def _pruner(kind: str) -> StructurePruner:
    if kind not in _PRUNERS:
        _PRUNERS[kind] = {"attention": CoatAttentionPruner, "cpe": ConvPosEncPruner}[kind]()
    return _PRUNERS[kind]


def _coat(ext, model: nn.Module) -> None:
    ext.add_function(sys.modules[type(model).__module__], "insert_cls")
    for i in range(1, 5):
        token = getattr(model, f"cls_token{i}", None)
        if isinstance(token, nn.Parameter):
            ext.unwrapped.append((token, token.dim() - 1))
    if isinstance(getattr(model, "aggregate", None), nn.Module):
        ext.hidden.append((model, "aggregate"))


HANDLERS = {
    "FactorAttnConvRelPosEnc": lambda ext, m: ext.add_pruner(m, _pruner("attention")),
    "ConvPosEnc": lambda ext, m: ext.add_pruner(m, _pruner("cpe")),
    "ConvRelPosEnc": lambda ext, m: None,  # pruned by the attentions that share it
    "ParallelBlock": lambda ext, m: ext.add_function(m, "interpolate"),
    "CoaT": _coat,
}
