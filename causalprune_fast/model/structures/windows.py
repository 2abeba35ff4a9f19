"""Window attention: torchvision and timm Swin, torchvision and timm MaxViT.

What is pruned (docs/method.md section 6.5):

- **torchvision Swin** (``ShiftedWindowAttention``, ``...V2``) and **torchvision MaxViT**
  (``RelativePositionalMultiHeadAttention``): the attention width is the input's (the
  functional attention reshapes ``qkv`` with ``C // num_heads``), so each stage's residual
  stream is pruned together with the head dims, stream channel ``i`` with head dim ``i``
  (:class:`~.pruners.FusedAttentionPruner`): every head loses the same number of dims, the
  heads and their relative position tables stay. The window partitions are inside the
  attention (Swin) or modules of their own that move tokens only (MaxViT), traced as one node.
- **timm Swin** (``WindowAttention``) and **timm MaxViT** (``AttentionCl``): the attention is
  one node that reads and writes the stream (:class:`~.pruners.StreamPruner`: ``qkv``'s input
  columns, ``proj``'s output rows); its heads and head dims stay. The window and grid
  partitions (module functions called by the blocks) are traced as channel-preserving nodes.
- **Patch merging** (torchvision v1/v2, timm): one node whose input channel ``i`` is the four
  channels ``i + k * C`` of the merged 2x2 patch (norm and reduction), whose output channels
  are the reduction's (and the v2 norm's); it roots the next stage's stream group.
- MLPs, patch embeddings, MaxViT's MBConv blocks and the classifier's hidden layer are
  Torch-Pruning's own.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch.nn as nn

from causalprune_fast.model.structures.pruners import (
    FusedAttentionPruner,
    Members,
    PassThroughPruner,
    StreamPruner,
    StructurePruner,
    drop_cols,
    drop_rows,
    same,
)


class PatchMergingPruner(StructurePruner):
    """Swin's patch merging (torchvision ``PatchMerging``/``...V2``, timm ``PatchMerging``):
    the 2x2 neighbours are concatenated along the channels, so input channel ``i`` is the
    merged channels ``i, C + i, 2C + i, 3C + i`` (the norm before the reduction in v1 and
    timm, the reduction's input columns); output channels are the reduction's rows and the
    norm after it (v2). ``dim`` (and timm's ``out_dim``) follow."""

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        c = layer.reduction.in_features // 4
        merged = [i + k * c for k in range(4) for i in idxs]
        drop_cols(layer.reduction, merged)
        if layer.norm.normalized_shape[0] == 4 * c:
            drop_rows(layer.norm, merged)
        layer.dim = c - len(set(idxs))
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        out = layer.reduction.out_features
        drop_rows(layer.reduction, idxs)
        if layer.norm.normalized_shape[0] == out:
            drop_rows(layer.norm, idxs)
        if hasattr(layer, "out_dim"):
            layer.out_dim = layer.reduction.out_features
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.reduction.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.reduction.in_features // 4

    def members(self, layer: nn.Module, idxs: Sequence[int], out: bool) -> Members:
        if out:
            return [(layer.reduction, "producer", same(idxs))]
        c = layer.reduction.in_features // 4
        merged = [(i + j * c, k) for j in range(4) for k, i in enumerate(idxs)]
        return [(layer.reduction, "consumer", merged)]


_PRUNERS: dict[str, StructurePruner] = {}


def _pruner(kind: str) -> StructurePruner:
    """One instance per kind (its bound methods identify its dependencies in every graph)."""
    if kind not in _PRUNERS:
        _PRUNERS[kind] = {
            "torchvision-swin": lambda: FusedAttentionPruner("qkv", "proj", "num_heads"),
            "torchvision-maxvit": lambda: FusedAttentionPruner(
                "to_qkv", "merge", "n_heads", head_dim="head_dim"
            ),
            "stream": lambda: StreamPruner(["qkv"], ["proj"]),
            "merge": PatchMergingPruner,
            "partition": PassThroughPruner,
        }[kind]()
    return _PRUNERS[kind]


def _functions(ext, module: nn.Module, names: Sequence[str]) -> None:
    owner = sys.modules[type(module).__module__]
    for name in names:
        ext.add_function(owner, name)


HANDLERS = {
    "ShiftedWindowAttention": lambda ext, m: ext.add_pruner(m, _pruner("torchvision-swin")),
    "ShiftedWindowAttentionV2": lambda ext, m: ext.add_pruner(m, _pruner("torchvision-swin")),
    "RelativePositionalMultiHeadAttention": lambda ext, m: ext.add_pruner(
        m, _pruner("torchvision-maxvit")
    ),
    "WindowPartition": lambda ext, m: ext.add_pruner(m, _pruner("partition")),
    "WindowDepartition": lambda ext, m: ext.add_pruner(m, _pruner("partition")),
    "PatchMerging": lambda ext, m: ext.add_pruner(m, _pruner("merge"), root=True),
    "PatchMergingV2": lambda ext, m: ext.add_pruner(m, _pruner("merge"), root=True),
    "WindowAttention": lambda ext, m: ext.add_pruner(m, _pruner("stream")),
    "AttentionCl": lambda ext, m: ext.add_pruner(m, _pruner("stream")),
    "SwinTransformerBlock": lambda ext, m: _functions(
        ext, m, ("window_partition", "window_reverse")
    ),
    "PartitionAttentionCl": lambda ext, m: _functions(
        ext, m, ("window_partition", "window_reverse", "grid_partition", "grid_reverse")
    ),
}
