"""Scoring a checkpoint larger than memory: :func:`score_checkpoint` (issue 20).

The model of a Hugging Face checkpoint directory is built with its parameters on ``meta``
(:mod:`causalprune_fast.model.checkpoint_model`) and walked one decoder block at a time
(:mod:`causalprune_fast.scoring.block_walk`), the way SparseGPT and Wanda walk a model: the
calibration pass of local mode runs block by block on activations kept between blocks, and
each block's layers are measured in local mode (:class:`~causalprune_fast.scoring.local.
LocalMode`, the code :func:`~causalprune_fast.score_model` runs) while it is loaded.

Every layer keeps its index among the measured layers of the whole model (it names its noise
streams), the calibration batches are the same noise examples, and each block runs on the
inputs and arguments it gets inside the whole model; so on the CPU the scores are
bit-identical to those of ``score_model`` on the model held in memory with the same arguments.
Channel groups come from the family's rules
(:mod:`causalprune_fast.model.block_layouts`), equal to Torch-Pruning's on the model in
memory.

Peak memory is about one block (or the output head) plus the kept activations
(``examples x positions x hidden`` values) plus ``memory_budget``; it is checked against
``max_memory`` before any work.

With ``distributed=True`` every rank runs the calibration through every block (the same
examples on every rank, as ``score_model`` does), and the blocks' measurements are shared:
rank ``r`` of ``W`` measures the layers of blocks ``r, r + W, ...`` (the output head is the
block after the last), each layer whole, so each result is that of one process. The results
are all-gathered; every rank returns them.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

from causalprune_fast.base.checkpoint_io import Checkpoint
from causalprune_fast.base.distributed import DistContext
from causalprune_fast.model.attention import find_heads
from causalprune_fast.model.block_layouts import family_of
from causalprune_fast.model.checkpoint_model import CheckpointModel
from causalprune_fast.model.discovery import find_layers
from causalprune_fast.model.response import ResponseFinder
from causalprune_fast.results.causal_scores import CausalScores
from causalprune_fast.results.layer_scores import few_sample_layers
from causalprune_fast.scoring.block_walk import BlockWalk
from causalprune_fast.scoring.driver import Driver
from causalprune_fast.scoring.layer_state import LayerState
from causalprune_fast.scoring.local import LocalMode
from causalprune_fast.scoring.plan import ScorePlan
from causalprune_fast.scoring.walk_memory import check_walk_memory, resolve_max_memory


class _Placement(nn.Module):
    """Stands for the model in the argument checks: the device and dtype it will run in."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.p = nn.Parameter(torch.empty(0, device=device, dtype=dtype), requires_grad=False)


def _progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="blocks", unit="block", leave=False)
        except ImportError:
            pass
    return None


def _check_token_input(config: dict, input_shape, kwargs: dict) -> None:
    """The noise input of a language model is token ids: ``input_shape`` is ``(T,)`` with
    ``T`` within the model's positions, and ``input_range`` (default ``(0, vocab_size)``)
    within the vocabulary. Checked here, before any work, as the model would otherwise fail
    inside its first block on an out-of-range index."""
    if input_shape is not None:
        shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
        if shape is None or len(shape) != 1:
            raise ValueError(
                f"input_shape must be (T,): one example of T tokens, got {input_shape!r}"
            )
        positions = config.get("n_positions")  # GPT-2's learned positions (rotary has none)
        if isinstance(positions, int) and isinstance(shape[0], int) and shape[0] > positions:
            raise ValueError(
                f"input_shape {shape}: the model has {positions} positions (config.json "
                "n_positions)"
            )
    if kwargs["input_dtype"].is_floating_point:
        return
    vocab = config.get("vocab_size")
    if kwargs.get("input_range") is None:
        if not isinstance(vocab, int):
            raise ValueError("config.json has no vocab_size: give input_range=(0, vocab)")
        kwargs["input_range"] = (0, vocab)
        return
    lo, hi = kwargs["input_range"]
    if isinstance(vocab, int) and (lo < 0 or hi > vocab):
        raise ValueError(
            f"input_range {(lo, hi)}: token ids must lie in [0, {vocab}) (config.json "
            f"vocab_size {vocab}); the default is (0, {vocab})"
        )


def score_checkpoint(
    path: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | str | None = None,
    **score_model_kwargs,
) -> CausalScores:
    """Score every prunable channel of the model in a Hugging Face checkpoint directory,
    one decoder block in memory at a time (module docstring).

    Args:
        path: a checkpoint directory (``config.json`` and safetensors shards, as
            ``save_pretrained`` writes them) of a Llama-layout (``llama``, ``mistral``,
            ``qwen2``) or GPT-2 model.
        input_shape: one example's shape, ``(T,)`` tokens, e.g. ``(64,)``; or
            ``example_input=``. The noise is token ids: ``input_dtype`` defaults to
            ``torch.long`` and ``input_range`` to ``(0, vocab_size)`` here, both checked
            against config.json.
        device: where the blocks run (default ``cuda`` if available, else ``cpu``).
        dtype: the weights' dtype once loaded (default: as stored).
        max_memory: bytes (or ``"8GB"``, ...) that one block, the kept activations and the
            estimator's ``memory_budget`` may take together; default the memory available
            on ``device`` now. Checked before any work.
        **score_model_kwargs: every other argument of :func:`~causalprune_fast.score_model`
            (``mode`` must be ``"local"``; ``distributed=True`` shares the blocks' measurements
            between the ranks).

    Returns:
        :class:`~causalprune_fast.CausalScores`, equal to ``score_model`` on the model in memory.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: a directory without ``config.json``,
            a missing or unreadable shard or tensor (naming the file), a model family the
            walker does not know (naming it), a bad argument (naming it), or a
            ``max_memory`` too small for one block (naming the block); all before any work.
    """
    t_start = time.perf_counter()
    from causalprune_fast.scoring.score import score_model

    ckpt = Checkpoint(path)
    family = family_of(ckpt.config, str(ckpt.path / "config.json"))
    device = _device(device)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be None or a floating torch.dtype, got {dtype!r}")
    cm = CheckpointModel(ckpt, dtype)
    family.check(cm.model)
    cm.check_complete()
    compute_dtype = dtype or next(cm.model.parameters()).dtype
    kwargs = dict(score_model_kwargs)
    if kwargs.get("example_input") is None:
        kwargs.setdefault("input_dtype", torch.long)
        _check_token_input(ckpt.config, input_shape, kwargs)
    bound = inspect.signature(score_model).bind(
        _Placement(device, compute_dtype), input_shape, **kwargs
    )
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    plan = ScorePlan.build(arguments.pop("model"), arguments.pop("input_shape"), **arguments)
    if plan.mode != "local":
        raise ValueError(
            f"mode={plan.mode!r}: score_checkpoint measures in local mode only (each layer on "
            "its own noise, which a block walk can do one block at a time)"
        )
    ctx = DistContext.create(plan.distributed)
    model = cm.model
    for m in model.modules():  # buffers the constructor computed (rotary inv_freq)
        for leaf, b in list(m._buffers.items()):
            if b is not None and not b.is_meta and b.device != device:
                m._buffers[leaf] = b.to(device)
    found, unsupported = find_layers(model, plan.layers)
    finder = ResponseFinder(model)
    states = [LayerState(layer, i, layer.response_point(finder)) for i, layer in enumerate(found)]
    walk = BlockWalk(cm, family, plan)
    pieces, tail_params = _pieces(walk, states)
    budget = resolve_max_memory(max_memory, device)
    check_walk_memory(cm, family, plan, walk.blocks, tail_params, budget)
    return _run(walk, pieces, tail_params, states, unsupported, plan, ctx, t_start, ckpt)


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available here")
    if device.type == "meta":
        raise ValueError("device='meta' holds no data; give 'cpu' or 'cuda'")
    return device


def _pieces(walk: BlockWalk, states: list[LayerState]) -> tuple[list[list[LayerState]], list[str]]:
    """The measured layers of every block and of the tail, and the tail's parameters."""
    blocks = walk.blocks
    pieces: list[list[LayerState]] = [[] for _ in range(len(blocks) + 1)]
    for s in states:
        k = next((k for k, b in enumerate(blocks) if s.layer.name.startswith(b + ".")), None)
        pieces[len(blocks) if k is None else k].append(s)
    inside = tuple(b + "." for b in blocks) + tuple(
        e + "." for e in walk.family.embeddings(walk.model)
    )
    tail = [n for n in walk.cm.names("") if not n.startswith(inside)]
    return pieces, tail


def _measure(states: list[LayerState], plan: ScorePlan, timings: dict) -> None:
    """Local mode's measurement of ``states`` (loaded and calibrated), each layer whole in
    this process: LocalMode's own code."""
    local = LocalMode(Driver(None, states, plan, DistContext(), timings))
    for s in states:
        local.measure_layer(s)


def _run(walk, pieces, tail_params, states, unsupported, plan, ctx, t_start, ckpt):
    timings: dict[str, float] = {}
    expected = -(-plan.examples // plan.batch_size)  # calls per layer: one per batch
    kept: list[LayerState] = []
    bar = _progress(len(pieces), plan.progress and ctx.rank == 0)
    try:
        error, batches = None, []
        try:
            batches = walk.head()
        except Exception as e:
            if not ctx.enabled:
                raise
            error = e
        ctx.check(error, "before the first block")
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            where = "the output head" if last else f"block '{walk.blocks[k]}'"
            error = None
            try:
                if last:
                    walk.tail(piece, batches, tail_params)
                else:
                    walk.block(k, piece, batches)
                ok = _called_once(piece, walk.calls, expected, unsupported)
                kept += ok
                if k % ctx.world == ctx.rank:
                    _measure(ok, plan, timings)
            except Exception as e:
                if not ctx.enabled:
                    raise
                error = e
            finally:
                if last:
                    walk.free_tail(tail_params)
                else:
                    walk.free_block(k)
            ctx.check(error, f"at {where}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not kept:
        raise ValueError("no measurable layer is called exactly once in the forward pass")
    results = {s.layer.name: s.result for s in kept if s.result is not None}
    if ctx.enabled:
        import torch.distributed as dist

        parts: list[dict | None] = [None] * ctx.world
        dist.all_gather_object(parts, results)
        for part in parts:
            results.update(part)
    layer_results = {s.layer.name: results[s.layer.name] for s in kept}
    t0 = time.perf_counter()
    names = [s.layer.name for s in kept]
    groups = walk.family.groups(walk.model, names)
    heads = find_heads(walk.model, set(names))
    timings["graph"] = time.perf_counter() - t0
    timings.update(walk.timings)
    few = few_sample_layers(layer_results, plan.bins)
    if few and ctx.rank == 0:
        warnings.warn(
            f"{len(few)} layer(s) got fewer samples than bins^2 = {plan.bins**2}, where the "
            f"plug-in MI is dominated by its bias: {', '.join(few[:8])}"
            f"{' ...' if len(few) > 8 else ''}; raise `samples_per_layer`",
            stacklevel=3,
        )
    timings["total"] = time.perf_counter() - t_start
    from causalprune_fast.estimator.backends import resolve

    config = plan.config(
        backend=resolve(plan.backend, plan.device).name,
        world_size=ctx.world,
        graph=f"{walk.family.name} family rules (Torch-Pruning's groups of this layout)",
        fused_local=plan.fused_local,
        model=type(walk.model).__name__,
        checkpoint=str(ckpt.path),
        walk="block by block",
    )
    return CausalScores(layer_results, groups, config, unsupported, timings, heads)


def _called_once(piece, calls, expected, unsupported) -> list[LayerState]:
    """The layers of ``piece`` called once per forward pass (like the probe pass of
    score_model); the others go to ``unsupported`` with the reason."""
    ok = []
    for s in piece:
        n = calls.get(s.layer.name, 0)
        if n == expected:
            ok.append(s)
        elif n == 0:
            unsupported[s.layer.name] = (
                getattr(s.layer, "unsupported_reason", None) or "not called in the forward pass"
            )
        else:
            unsupported[s.layer.name] = (
                f"called {n // expected} times per forward pass (the block walker measures "
                "layers called once; score_model pools the calls)"
            )
    return ok
