"""Torch-Pruning index mappings for the fused projections of language models (installed by
:func:`causalprune_fast.model.llm_graph.traceable` while Torch-Pruning traces a model).

Torch-Pruning 1.6 maps channel indices through ``torch.split`` / ``chunk`` and ``torch.cat``
only along dim 1, the channels of an NCHW tensor. A language model's features are its last
dimension:

- **Splits** of a projection's output along the last dimension, directly (GPT-2's
  ``c_attn(x).split(E, dim=2)`` into q, k and v; Phi-3's ``gate_up_proj(x).chunk(2, dim=-1)``)
  or after views and transposes that keep that dimension last (GPT-NeoX's
  ``query_key_value(x).view(B, T, H, 3 * d).transpose(1, 2).chunk(3, dim=-1)``: per head, q, k
  and v, the layout ``[heads, 3, head_dim]``). The projection's ``F`` output features are then
  ``[F / L, L]`` (``L`` the split dimension's size; 1 group for a direct split); piece ``i``
  (offsets ``[a, b)``) holds features ``g * L + a + r`` as its features ``g * (b - a) + r``.
- **Concatenations** along the last dimension of projection outputs (the separate q, k and v
  projections that stand in for Phi-3's fused ``qkv_proj`` while it is pruned): input ``i``'s
  feature ``r`` is feature ``offset_i + r`` of the result.
"""

from __future__ import annotations

import torch.nn as nn

from causalprune_fast.model.families import is_conv1d

_SIGNED = 1 << 63  # autograd saves dim=-1 as an unsigned 64-bit integer


def _dim(saved: int | None, ndim: int) -> int | None:
    """A dimension saved by autograd as a non-negative index (None if unknown)."""
    if saved is None:
        return None
    if saved >= _SIGNED:
        saved -= 1 << 64
    return saved + ndim if saved < 0 else saved


def _features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_conv1d(module):
        return int(module.weight.shape[1])
    return None


def _keeps_last_dim(node) -> bool:
    """Whether a reshape or elementwise node keeps the features in the last dimension: any
    view (it splits or keeps the trailing features contiguous), a transpose or permute that
    leaves the last dimension in place, any other one-input elementwise op."""
    from torch_pruning import ops

    if node.type == ops.OPTYPE.RESHAPE:
        return True
    if node.type != ops.OPTYPE.ELEMENTWISE:
        return False
    g = node.grad_fn
    name = g.name() if hasattr(g, "name") else ""
    sizes = getattr(g, "_saved_self_sym_sizes", None)
    if name.startswith("TransposeBackward"):
        dims = {int(g._saved_dim0), int(g._saved_dim1)}
        return all(d >= 0 and (sizes is None or d != len(sizes) - 1) for d in dims) and (
            sizes is not None or -1 not in dims
        )
    if name.startswith("PermuteBackward"):
        order = tuple(g._saved_dims)
        return order[-1] in (len(order) - 1, -1)
    return True


def feature_source(node, depth: int = 8) -> nn.Module | None:
    """The Linear or ``Conv1D`` whose output features reach ``node``'s input in the last
    dimension, through at most ``depth`` one-input views, transposes and elementwise ops."""
    for _ in range(depth):
        if len(node.inputs) != 1:
            return None
        node = node.inputs[0]
        if _features(node.module) is not None:
            return node.module
        if not _keeps_last_dim(node):
            return None
    return None


class GroupedSplitIndexMapping:
    """Features of a projection laid out ``[G, size]`` to piece ``[lo, hi)`` of a split of the
    last dimension (``reverse``: back from the piece to the projection); see the module doc."""

    def __init__(self, size: int, lo: int, hi: int, reverse: bool = False):
        self.size, self.lo, self.hi, self.reverse = size, lo, hi, reverse

    def __call__(self, idxs):
        from torch_pruning import _helpers

        size, lo, width = self.size, self.lo, self.hi - self.lo
        if self.reverse:
            return [
                _helpers._HybridIndex(
                    idx=(i.idx // width) * size + lo + i.idx % width, root_idx=i.root_idx
                )  # fmt: skip
                for i in idxs
            ]
        return [
            _helpers._HybridIndex(
                idx=(i.idx // size) * width + i.idx % size - lo, root_idx=i.root_idx
            )  # fmt: skip
            for i in idxs
            if lo <= i.idx % size < self.hi
        ]


class ConcatIndexMapping:
    """Input features ``[0, hi - lo)`` to features ``[lo, hi)`` of a concatenation along the
    last dimension (``reverse``: back)."""

    def __init__(self, lo: int, hi: int, reverse: bool = False):
        self.lo, self.hi, self.reverse = lo, hi, reverse

    def __call__(self, idxs):
        from torch_pruning import _helpers

        if self.reverse:
            return [
                _helpers._HybridIndex(idx=i.idx - self.lo, root_idx=i.root_idx)
                for i in idxs
                if self.lo <= i.idx < self.hi
            ]
        return [_helpers._HybridIndex(idx=i.idx + self.lo, root_idx=i.root_idx) for i in idxs]


def _install(node, pieces, forward, backward, slot: int) -> None:
    """Set the index mappings between ``node`` and each of ``pieces`` (its inputs or outputs):
    ``forward(i)`` on the dependency from ``node`` to piece ``i``, ``backward(i)`` on the one
    back, in ``slot`` (Torch-Pruning maps splits in slot 0 and concatenations in slot 1, so
    that a split followed by a concatenation composes). Then the node's
    ``enable_index_mapping`` is cleared: Torch-Pruning updates every mapping again in each
    ``get_pruning_group`` (after the trace, without these extensions), and its own functions
    read ``dim=-1`` as a split or concatenation of channels and would overwrite these; they
    leave a node whose index mapping is disabled alone."""
    for i, piece in enumerate(pieces):
        for dep in node.dependencies:
            if dep.target == piece:
                dep.index_mapping[slot] = forward(i)
                break
        for dep in piece.dependencies:
            if dep.target == node:
                dep.index_mapping[slot] = backward(i)
                break
    node.enable_index_mapping = False


def _split_offsets(g, size: int) -> list[int] | None:
    """Where a ``split`` / ``chunk`` (autograd node ``g``) cuts a dimension of ``size``."""
    sizes = getattr(g, "_saved_split_sizes", None)
    if sizes is None:
        step = getattr(g, "_saved_split_size", None)
        if not step:
            return None
        sizes = [min(step, size - a) for a in range(0, size, step)]
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + int(n))
    return offsets if offsets[-1] == size else None


def _piece(node, out_node) -> int | None:
    """Which output of the split ``node`` the node ``out_node`` reads (autograd's output
    number: Torch-Pruning lists a node's outputs in the order it met them)."""
    for f, nr in getattr(out_node.grad_fn, "next_functions", ()):
        if f is node.grad_fn:
            return int(nr)
    return None


def split_mapping(original):
    """Torch-Pruning's ``update_split_index_mapping`` (``original``), extended to (and, where
    Torch-Pruning 1.6 reads ``dim=-1`` as its own channel split, replacing it for) splits of a
    projection's features along the last dimension (module doc)."""

    def update(graph, node) -> None:
        original(graph, node)
        from torch_pruning import ops

        g = node.grad_fn
        sizes = getattr(g, "_saved_self_sym_sizes", None)
        if (
            node.type != ops.OPTYPE.SPLIT
            or sizes is None
            or len(sizes) < 3  # [N, C] splits along dim 1 are Torch-Pruning's own
            or _dim(getattr(g, "_saved_dim", None), len(sizes)) != len(sizes) - 1
            or not node.enable_index_mapping
        ):
            return
        size = int(sizes[-1])
        offsets = _split_offsets(g, size)
        source = feature_source(node)
        if offsets is None or source is None or _features(source) % size:
            return
        pieces = [_piece(node, out) for out in node.outputs]
        if None in pieces:
            return
        node.module.offsets = offsets
        _install(
            node,
            node.outputs,
            lambda i: GroupedSplitIndexMapping(size, offsets[pieces[i]], offsets[pieces[i] + 1]),
            lambda i: GroupedSplitIndexMapping(
                size, offsets[pieces[i]], offsets[pieces[i] + 1], reverse=True
            ),
            slot=0,
        )

    return update


def concat_mapping(original):
    """Torch-Pruning's ``update_concat_index_mapping`` (``original``), extended to a
    concatenation along the last dimension of projection outputs (module doc)."""

    def update(graph, node) -> None:
        original(graph, node)
        from torch_pruning import ops

        if node.type != ops.OPTYPE.CONCAT or not node.enable_index_mapping:
            return
        sources = [n.module for n in node.inputs]
        features = [_features(m) for m in sources]
        saved = getattr(node.grad_fn, "_saved_dim", None)
        if any(f is None for f in features) or saved is None or saved < _SIGNED:
            return  # only torch.cat(..., dim=-1) of projection outputs
        if _dim(saved, 1) != 0:
            return
        offsets = [0]
        for f in features:
            offsets.append(offsets[-1] + f)
        node.module.offsets = offsets
        _install(
            node,
            node.inputs,
            lambda i: ConcatIndexMapping(offsets[i], offsets[i + 1], reverse=True),
            lambda i: ConcatIndexMapping(offsets[i], offsets[i + 1]),
            slot=1,
        )

    return update
