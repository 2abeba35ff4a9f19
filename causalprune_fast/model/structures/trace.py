"""How the structures of :mod:`causalprune_fast.model.structures` look to Torch-Pruning's
tracer (it follows the autograd graph of one forward pass):

- a module with a custom pruner is one node: its output is tied to its inputs through one
  autograd node (:class:`_Reroot`), so the reshapes, splits and functional calls inside it
  never reach the graph (Torch-Pruning records the node under the module, as it does for every
  module whose type has a pruner);
- a channel-preserving function (:func:`opaque`) is one node of a kind Torch-Pruning does not
  know, which it treats as element-wise: the same channels in and out;
- a channel permutation (:func:`permuted`) is such a node too, whose index maps
  :func:`map_permutations` sets once the graph is built;
- a hidden module (:class:`_Hidden`) is not a module of the model while traced, so its own
  channels are never coupled to anything (CoaT's ``aggregate``: a Conv1d over the scale axis).

Values are unchanged: every stand-in returns the real result, computed by the model's own code.
Everything is put back when the trace ends, also on an error.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn


class _Reroot(torch.autograd.Function):
    """``result[0]`` (computed outside autograd), tied to ``inputs`` through this one node."""

    @staticmethod
    def forward(ctx, result: list, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.inputs = len(inputs)
        return result[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None,) * (1 + ctx.inputs)


class _Permute(torch.autograd.Function):
    """``result[0]``, whose channel ``p`` (dim 1) is channel ``perm[p]`` of ``x``."""

    @staticmethod
    def forward(ctx, result: list, x: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
        ctx.perm = tuple(int(p) for p in perm)
        return result[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, None


def _tensor_inputs(args: Sequence, kwargs: dict | None = None) -> list[torch.Tensor]:
    values = [*args, *(kwargs or {}).values()]
    return [a for a in values if isinstance(a, torch.Tensor) and a.requires_grad]


def reroot(output, args: Sequence, kwargs: dict | None = None):
    """``output`` tied to the tensors of ``args``/``kwargs`` through one autograd node (as is
    where it is not a tensor or nothing it depends on requires grad)."""
    inputs = _tensor_inputs(args, kwargs)
    if not isinstance(output, torch.Tensor) or not inputs or not torch.is_grad_enabled():
        return output
    return _Reroot.apply([output.detach()], *inputs)


def opaque(fn: Callable) -> Callable:
    """``fn`` traced as one channel-preserving node."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return reroot(fn(*args, **kwargs), args, kwargs)

    return wrapped


def permuted(fn: Callable, perm_of: Callable[..., Sequence[int]]) -> Callable:
    """``fn(x, *args)``, a permutation of ``x``'s channels (dim 1) given by
    ``perm_of(x, *args)``, traced as one node whose index maps :func:`map_permutations` sets."""

    @functools.wraps(fn)
    def wrapped(x, *args, **kwargs):
        out = fn(x, *args, **kwargs)
        if not (isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()):
            return out
        return _Permute.apply([out.detach()], x, perm_of(x, *args, **kwargs))

    return wrapped


class _IndexMap:
    """A Torch-Pruning index map (a callable on its ``(idx, root_idx)`` entries) through a
    permutation: entry ``i`` goes to ``table[i]``."""

    def __init__(self, table: Sequence[int]):
        self.table = table

    def __call__(self, idxs: list) -> list:
        return [i._replace(idx=self.table[i.idx]) for i in idxs]


class _ChunksAsSplits(torch.overrides.TorchFunctionMode):
    """``x.chunk(n, dim=1)`` computed as ``x.split([sizes], dim=1)`` (the same tensors), whose
    autograd node saves its sizes where Torch-Pruning 1.6.1 reads them. For a chunk it reads
    ``_saved_self_sizes``, which PyTorch 2 calls ``_saved_self_sym_sizes``, and otherwise takes
    each consumer's input width: a concat's whole width for ShuffleNetV2's
    ``cat((x1, branch2(x2)))``, and an index map that fails."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.chunk, torch.chunk) and isinstance(args[0], torch.Tensor):
            x, n = args[0], int(args[1] if len(args) > 1 else kwargs["chunks"])
            dim = int(args[2] if len(args) > 2 else kwargs.get("dim", 0))
            if x.dim() > 1 and dim % x.dim() == 1 and n > 0:
                size = -(-int(x.shape[1]) // n)
                sizes = [min(size, int(x.shape[1]) - s) for s in range(0, int(x.shape[1]), size)]
                return torch.split(x, sizes, dim=1)
        return func(*args, **kwargs)


def fix_chunks(dg) -> bool:
    """In a graph with channel permutations (ShuffleNetV2; other graphs are left as they are):
    give Torch-Pruning's nodes of a split along the channels their sizes in output order
    (Torch-Pruning 1.6.1 pairs the sizes with the consumers in the order it met them), and the
    channel concats their sizes and index maps (:func:`_fix_concats`). Returns whether the
    graph was changed (its index maps must then be updated)."""
    import torch_pruning as tp

    if not any(isinstance(n.grad_fn, _Permute._backward_cls) for n in dg.module2node.values()):
        return False
    for node in dg.module2node.values():
        g = node.grad_fn
        sizes = getattr(g, "_saved_split_sizes", None)
        if node.type != tp.ops.OPTYPE.SPLIT or sizes is None:
            continue
        if getattr(g, "_saved_dim", None) != 1:
            continue
        sizes = [int(s) for s in sizes]
        taken: dict[int, int] = {}
        order = []  # (output number, consumer), consumers in the order Torch-Pruning met them
        for out in node.outputs:
            nrs = [nr for f, nr in getattr(out.grad_fn, "next_functions", ()) if f is g]
            k = taken.get(id(out), 0)
            taken[id(out)] = k + 1
            order.append((nrs[k] if k < len(nrs) else -1, out))
        order.sort(key=lambda item: item[0])
        if [nr for nr, _ in order] != list(range(len(sizes))):
            continue  # not one consumer per chunk: Torch-Pruning's offsets cannot say it
        node.outputs[:] = [out for _, out in order]
        node.module.split_sizes = sizes
        node.module.offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    _fix_concats(dg)
    return True


class _Shift:
    """Torch-Pruning's concat index map: into the concat (``+ offset[0]``) or back out of it
    (the entries in ``[offset[0], offset[1])``, ``- offset[0]``)."""

    def __init__(self, offset: Sequence[int], reverse: bool):
        self.offset, self.reverse = list(offset), reverse

    def __call__(self, idxs: list) -> list:
        lo, hi = self.offset
        if not self.reverse:
            return [i._replace(idx=i.idx + lo) for i in idxs]
        return [i._replace(idx=i.idx - lo) for i in idxs if lo <= i.idx < hi]


def _fix_concats(dg) -> None:
    """Sizes and index maps of the channel concats of a graph with channel permutations: to
    check a concat's width Torch-Pruning 1.6.1 infers it from its consumers, which goes wrong
    through a permutation followed by a split (ShuffleNetV2), and it then maps no index."""
    import torch_pruning as tp
    from torch_pruning.dependency.shape_infer import infer_out_channels_recursively

    for cat in dg.module2node.values():
        if cat.type != tp.ops.OPTYPE.CONCAT or getattr(cat.grad_fn, "_saved_dim", None) != 1:
            continue
        fns = [(f, nr) for f, nr in cat.grad_fn.next_functions if f is not None]
        if len(fns) != len(cat.inputs) or any(
            f is not src.grad_fn for (f, _), src in zip(fns, cat.inputs, strict=True)
        ):
            continue  # an input Torch-Pruning does not list (a constant, a parameter)
        sizes = []
        for (f, nr), src in zip(fns, cat.inputs, strict=True):
            split = getattr(f, "_saved_split_sizes", None)
            if src.type == tp.ops.OPTYPE.SPLIT and f is src.grad_fn and split is not None:
                sizes.append(int(split[nr]))
            else:
                sizes.append(infer_out_channels_recursively(dg, src, [0]))
        if len(sizes) != len(cat.inputs) or any(s is None for s in sizes):
            continue
        offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        cat.module.concat_sizes, cat.module.offsets = sizes, offsets
        for k, src in enumerate(cat.inputs):
            pairs = ((cat, src, True), (src, cat, False))
            for a, b, reverse in pairs:
                dep = next(d for d in a.dependencies if d.target is b)
                dep.index_mapping[1] = _Shift(offsets[k : k + 2], reverse)


def map_permutations(dg) -> None:
    """Set the index maps of every :func:`permuted` node of Torch-Pruning's graph ``dg``: from
    its input to it (input channel -> output position) and back (output -> input channel)."""
    for node in dg.module2node.values():
        if not isinstance(node.grad_fn, _Permute._backward_cls):
            continue
        perm = node.grad_fn.perm
        inverse = [0] * len(perm)
        for p, source in enumerate(perm):
            inverse[source] = p
        for src in node.inputs:
            for dep in src.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _IndexMap(inverse)
            for dep in node.dependencies:
                if dep.target is src:
                    dep.index_mapping[0] = _IndexMap(perm)


class _Hidden(nn.Module):
    """Stands in for a module while Torch-Pruning traces: calls it, is not it (no submodule)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", inner)

    def forward(self, *args, **kwargs):
        return reroot(self.inner(*args, **kwargs), args, kwargs)


def _reroot_hook(module: nn.Module, args: tuple, kwargs: dict, output):
    return reroot(output, args, kwargs)


@contextlib.contextmanager
def structure_trace(ext) -> Iterator[None]:
    """While Torch-Pruning traces the model: its ``GraphExtensions`` ``ext``
    (:func:`causalprune_fast.model.structures.graph_extensions`) in place (the module
    docstring). Registered before Torch-Pruning's own hooks, so they see the stand-ins."""
    hooks = []
    swapped: list[tuple[object, str, object, bool]] = []  # owner, attr, old, was an instance attr
    caches = [(o, a, getattr(o, a), dict(getattr(o, a))) for o, a in ext.caches]
    modes = contextlib.ExitStack()
    try:
        if ext.split_chunks:
            modes.enter_context(_ChunksAsSplits())
        for m in ext.opaque:
            hooks.append(m.register_forward_hook(_reroot_hook, with_kwargs=True))
        for owner, attr, wrap in ext.functions:
            own = isinstance(owner, nn.Module) and attr in vars(owner)
            swapped.append((owner, attr, getattr(owner, attr), own))
            setattr(owner, attr, wrap(getattr(owner, attr)))
        for parent, attr in ext.hidden:
            inner = getattr(parent, attr)
            swapped.append((parent, attr, inner, True))
            setattr(parent, attr, _Hidden(inner))
        yield
    finally:
        modes.close()
        for owner, attr, cache, content in caches:  # LeViT's attention biases (with grad)
            cache.clear()
            cache.update(content)
            setattr(owner, attr, cache)  # its train()/eval() makes a new dict
        for h in hooks:
            h.remove()
        for owner, attr, old, own in reversed(swapped):
            if isinstance(owner, nn.Module) and not own:
                delattr(owner, attr)  # a method of the class, shadowed while traced
            else:
                setattr(owner, attr, old)
