"""The block walk behind :func:`~causalprune_fast.scoring.score_checkpoint.score_checkpoint`: the
model's calibration forward pass cut into pieces that each need one block's weights.

1. **Head.** The input embeddings are loaded; each calibration batch (the ``examples`` noise
   examples of local mode, ``batch_size`` at a time, stream ``INPUT``) runs through the model
   with every block replaced by a recorder that keeps the positional and keyword arguments
   the model gives that block (attention mask, rotary position embeddings, ...) and passes the
   hidden states on; the last one keeps the hidden states and stops the pass. The embeddings
   are freed.
2. **Blocks.** Block by block: its tensors are read from the shards, every kept batch runs
   through it with the calibration hooks of local mode on its measured layers (each input
   channel's min and max), its outputs replace the kept hidden states, and the caller
   measures its layers before it is freed.
3. **Tail.** The modules after the last block (final norm, output head) are loaded and the
   model's own forward runs once more per batch with the embeddings standing in as zeros and
   every block returning the kept hidden states, so the tail computes exactly what it
   computes inside the whole model.

The key/value cache is not passed to the blocks: one forward pass reads the same keys and
values without it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from causalprune_fast.base.memory import return_freed_memory
from causalprune_fast.base.validation import check_layer_finite
from causalprune_fast.model.block_layouts import Family
from causalprune_fast.model.checkpoint_model import CheckpointModel
from causalprune_fast.model.layers import output_positions
from causalprune_fast.scoring.hooks import LayerHooks
from causalprune_fast.scoring.layer_state import LayerState, clock
from causalprune_fast.scoring.local import calibration_hook
from causalprune_fast.scoring.plan import ScorePlan

_CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")


class _Stop(Exception):
    """Raised by the last recorder: the head pass has what it needs."""


class _Recorder(nn.Module):
    """Stands in for a block in the head pass: records its call, passes the hidden states on
    (the last one stops the pass)."""

    def __init__(self, first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        self.calls: list[tuple[tuple, dict]] = []
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.first:
            self.hidden = hidden
        if self.last:
            raise _Stop
        return hidden


class _Replay(nn.Module):
    """Stands in for a block in the tail pass: returns the kept output of the last block."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


class _Zeros(nn.Module):
    """Stands in for an input embedding in the tail pass: zeros of its output's shape."""

    def __init__(self, dim: int, dtype: torch.dtype):
        super().__init__()
        self.dim, self.dtype = dim, dtype

    def forward(self, ids):
        return torch.zeros((*ids.shape, self.dim), dtype=self.dtype, device=ids.device)


@dataclass
class Batch:
    """One calibration batch between blocks: its examples, its hidden states, and the
    arguments the model gives each block."""

    start: int
    count: int
    hidden: torch.Tensor
    calls: list[tuple[tuple, dict]]  # per block: (positional arguments, keyword arguments)


def _without_cache(block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The block's arguments with the key/value cache (positional or keyword) set to None
    and ``use_cache`` off."""
    names = list(inspect.signature(block.forward).parameters)[1:]  # after the hidden states
    args = tuple(
        None if k < len(names) and names[k] in _CACHE_ARGUMENTS else a for k, a in enumerate(args)
    )
    kwargs = {k: (None if k in _CACHE_ARGUMENTS else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def walk_hook(s: LayerState, first: bool, calls: dict[str, int]) -> Callable:
    """Local mode's calibration hook (:func:`~causalprune_fast.scoring.local.
    calibration_hook`) that also counts the layer's calls and, in the ``first`` batch,
    records what the probe pass of ``score_model`` records (input shape and dtype, output
    positions)."""
    calibrate = calibration_hook(s)

    def hook(module, args, output):
        calls[s.layer.name] = calls.get(s.layer.name, 0) + 1
        if first:
            s.input_shape = tuple(args[0].shape[1:])
            s.input_dtype = args[0].dtype
            s.positions = output_positions(s.layer, output)
        calibrate(module, args, output)

    return hook


class BlockWalk:
    """The pieces of one block walk (module docstring)."""

    def __init__(self, cm: CheckpointModel, family: Family, plan: ScorePlan):
        self.cm, self.family, self.plan = cm, family, plan
        self.model = cm.model
        self.device = plan.device
        self.blocks = family.block_names(self.model)
        self.calls: dict[str, int] = {}  # measured layer -> calls in the walk
        self.timings = {"forward": 0.0, "load": 0.0}

    def _load(self, prefix: str) -> None:
        t0 = time.perf_counter()
        self.cm.load(prefix, self.device)
        self.timings["load"] += time.perf_counter() - t0

    def _forward(self, module: nn.Module, *args, **kwargs) -> object:
        t0 = clock(self.device)
        try:
            with torch.no_grad():
                return module(*args, **kwargs)
        finally:
            self.timings["forward"] += clock(self.device) - t0

    def head(self) -> list[Batch]:
        """The inputs of the first block, and every block's arguments, for every batch."""
        n, step = self.plan.examples, self.plan.batch_size
        embeddings = self.family.embeddings(self.model)
        blocks = self.model.get_submodule(self.family.blocks)
        real = list(blocks)
        batches = []
        try:
            for name in embeddings:
                self._load(name)
            for start in range(0, n, step):
                count = min(step, n - start)
                last = len(real) - 1
                recorders = [_Recorder(k == 0, k == last) for k in range(len(real))]
                for k, r in enumerate(recorders):
                    blocks[k] = r
                x = self.plan.input_noise(start, count)
                try:
                    self._forward(self.model, x)
                except _Stop:
                    pass
                except Exception as e:
                    raise ValueError(
                        f"the model raised before its first block on a noise input of shape "
                        f"{tuple(x.shape)} (input_shape={self.plan.input_shape}, dtype="
                        f"{self.plan.input_dtype}): {type(e).__name__}: {e}"
                    ) from e
                if any(len(r.calls) != 1 for r in recorders):
                    counts = [len(r.calls) for r in recorders]
                    raise ValueError(
                        f"the model's forward did not call each of its {len(real)} blocks "
                        f"once in order (calls: {counts}); the block walker cannot follow it"
                    )
                calls = [
                    _without_cache(b, *r.calls[0]) for b, r in zip(real, recorders, strict=True)
                ]
                batches.append(Batch(start, count, recorders[0].hidden, calls))
        finally:
            for k, m in enumerate(real):
                blocks[k] = m
            for name in embeddings:
                self.cm.free(name)
        return batches

    def block(self, k: int, states: list[LayerState], batches: list[Batch]) -> None:
        """Block ``k`` loaded and run on every batch, calibrating ``states`` (its measured
        layers); the batches' hidden states become its outputs. The caller measures the
        layers and frees the block (:meth:`free`)."""
        name = self.blocks[k]
        self._load(name)
        block = self.model.get_submodule(name)
        for i, b in enumerate(batches):
            args, kwargs = b.calls[k]
            hook = lambda s, first=i == 0: walk_hook(s, first, self.calls)  # noqa: E731
            with LayerHooks(states, hook):
                out = self._forward(block, b.hidden, *args, **kwargs)
            if not isinstance(out, torch.Tensor):
                raise ValueError(
                    f"block '{name}' returned {type(out).__name__}, not the hidden states (a "
                    "tensor, as in transformers 5); the block walker cannot follow it"
                )
            check_layer_finite(out, name, "output (hidden states)")
            b.hidden = out

    def tail(self, states: list[LayerState], batches: list[Batch], params: list[str]) -> None:
        """The parameters ``params`` (of what runs after the last block) loaded, and the
        model's forward run on the kept hidden states (embeddings as zeros, blocks replaying
        the hidden states), calibrating ``states``. The caller measures them and frees
        ``params``."""
        t0 = time.perf_counter()
        self.cm.load_parameters(params, self.device)
        self.timings["load"] += time.perf_counter() - t0
        blocks = self.model.get_submodule(self.family.blocks)
        real = list(blocks)
        embeddings = {n: self.model.get_submodule(n) for n in self.family.embeddings(self.model)}
        dtype = batches[0].hidden.dtype
        try:
            for n, emb in embeddings.items():
                _set(self.model, n, _Zeros(emb.embedding_dim, dtype))
            for i, b in enumerate(batches):
                for k in range(len(real)):
                    blocks[k] = _Replay(b.hidden)
                x = self.plan.input_noise(b.start, b.count)
                hook = lambda s, first=i == 0: walk_hook(s, first, self.calls)  # noqa: E731
                with LayerHooks(states, hook):
                    self._forward(self.model, x)
        finally:
            for k, m in enumerate(real):
                blocks[k] = m
            for n, emb in embeddings.items():
                _set(self.model, n, emb)

    def free_block(self, k: int) -> None:
        self.cm.free(self.blocks[k])
        return_freed_memory()

    def free_tail(self, params: list[str]) -> None:
        self.cm.free_parameters(params)
        return_freed_memory()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, module)
