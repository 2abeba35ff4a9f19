"""Whole-network causal scoring: :func:`score_model` (METHOD.md sections 1-3 and 6).

The network, in eval mode and without gradients, is driven by seeded uniform noise on the
model's device. Forward hooks on every measured layer capture its input and output as the
activations arrive; each layer's samples are drawn from its output positions, its input units
(unfolded receptive fields) and output units (at the response point) are binned, and their
pairwise MI is reduced to per-channel sums right away when all examples fit one forward pass.
With several passes (``batch_size``), each layer's uint8 codes are kept across passes (far
smaller than its joint counts, which are ``P * B * B``) and its MI computed after the last one;
layers are split into groups whose codes fit ``memory_budget``, and noise is regenerated
identically for each group.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from causalprune_fast import _validation as v
from causalprune_fast import reference
from causalprune_fast.attention import find_heads, own_groups
from causalprune_fast.channel_graph import DIRECTIONS, REDUCTIONS, build_groups
from causalprune_fast.distributed import DistContext
from causalprune_fast.estimator import default_memory_budget, pairwise_mi, quantize
from causalprune_fast.layers import (
    TAPS,
    Layer,
    find_layers,
    input_rows,
    output_positions,
    output_rows,
)
from causalprune_fast.noise import example_seed, uniform_examples
from causalprune_fast.response import ResponseFinder, ResponsePoint
from causalprune_fast.results import CausalScores, LayerScores

MODES = ("propagated", "local")
RANGE_MODES = ("exact", "first-batch")

DEFAULT_SAMPLES = 64  # noise examples
DEFAULT_MAX_SAMPLES_PER_LAYER = 16384  # (example, position) samples per layer


@dataclass
class _LayerState:
    layer: Layer
    index: int
    response: ResponsePoint
    positions: int = 0  # samples per noise example
    input_shape: tuple[int, ...] = ()
    input_dtype: torch.dtype | None = None  # the layer input's dtype (local-mode noise)
    target: int = 0  # samples of the layer over all examples (all ranks)
    x_ranges: torch.Tensor | None = None
    y_ranges: torch.Tensor | None = None
    x_codes: list[torch.Tensor] = field(default_factory=list)
    y_codes: list[torch.Tensor] = field(default_factory=list)
    channel_lo: torch.Tensor | None = None  # local mode: per input channel range
    channel_hi: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    result: LayerScores | None = None

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _progress(total: int, enabled: bool, desc: str):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="layer", leave=False)
        except ImportError:
            pass
    return None


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        dtype = p.dtype if p.dtype.is_floating_point else torch.float32
        return p.device, dtype
    return torch.device("cpu"), torch.float32


def _check_finite(t: torch.Tensor, layer: str, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"layer '{layer}' produced {bad} non-finite value(s) (NaN/Inf) in its {what} "
            "under the noise input; check the model (or input_range) for overflow"
        )


def score_model(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    example_input: torch.Tensor | None = None,
    input_range: tuple[float, float] = (-1.0, 1.0),
    input_dtype: torch.dtype | None = None,
    mode: str = "local",
    taps: str = "all",
    bins: int = 16,
    samples: int = DEFAULT_SAMPLES,
    max_samples_per_layer: int | None = DEFAULT_MAX_SAMPLES_PER_LAYER,
    batch_size: int | None = None,
    seed: int = 0,
    layers=None,
    direction: str = "in",
    reduction: str = "sum",
    correction: str | None = None,
    backend: str = "auto",
    memory_budget: int | None = None,
    ranges: str = "exact",
    return_matrices: bool = False,
    progress: bool = True,
    distributed: bool = False,
    fused_local: bool | None = None,
) -> CausalScores:
    """Score every prunable channel of ``model`` by the causal information flowing through it.

    Args:
        model: the network (its parameters' device and dtype are used for the noise).
        input_shape: shape of one input example, without the batch dimension, e.g.
            ``(3, 224, 224)``. Or give ``example_input`` (a tensor whose shape after the
            batch dimension and whose dtype are used; its values are not).
        input_range: the box ``(lo, hi)`` of the uniform noise (METHOD.md section 1); for
            integer (token) inputs, ``(0, vocab)``.
        input_dtype: dtype of the noise; default the model's parameter dtype, or
            ``example_input``'s.
        mode: ``"local"`` (default: each layer's input replaced by fresh uniform noise on the
            per-channel range its input showed in a propagated calibration pass) or
            ``"propagated"`` (one perturbation at the input flows through the network). The
            default is what pruned best in the project's quality study
            (benchmarks/quality/RESULTS.md).
        taps: ``"all"`` (every (input channel, kernel tap) is an input unit) or ``"center"``.
        bins: bins per variable, 2..256.
        samples: number of noise examples.
        max_samples_per_layer: cap on (example, position) samples per layer, drawn by a seeded
            uniform subsample of positions; None for no cap.
        batch_size: noise examples per forward pass (default: all at once).
        seed: seed of the noise and of the subsampling.
        layers: filter of measured layers by qualified name (a name, regex, callable or list).
        direction: ``"in"``, ``"out"`` or ``"both"`` (METHOD.md section 6).
        reduction: reduction over a channel's producers/consumers: ``"sum"``, ``"mean"``,
            ``"max"``.
        correction: ``None`` or ``"miller-madow"``.
        backend: estimator backend (see :func:`causalprune_fast.available_backends`).
        memory_budget: bytes for the estimator's working memory and for codes kept across
            forward passes; default :func:`causalprune_fast.default_memory_budget`.
        ranges: with several forward passes, ``"exact"`` (a first pass finds every column's
            min and max) or ``"first-batch"`` (ranges from the first pass, later values
            clamped into the edge bins). With one pass both are exact.
        return_matrices: keep every layer's ``[inputs, outputs]`` MI matrix.
        progress: show a progress bar (tqdm; rank 0 only when distributed).
        distributed: score across the processes of the initialised default torch.distributed
            process group (see :mod:`causalprune_fast.distributed`): examples are split over
            the ranks, results are identical to one process with the same arguments, and every
            rank returns them.
        fused_local: in ``local`` mode, score Linear and 1x1-conv layers with the fused Triton
            kernel (noise, layer, response, binning and counts in one kernel; its own
            counter-based noise). None (default): on CUDA devices only; True: wherever Triton
            runs (also the CPU under ``TRITON_INTERPRET=1``); False: never.

    Returns:
        :class:`CausalScores`.

    Raises:
        ValueError: bad arguments, a model that raises on the noise, non-finite activations
            (naming the layer), a layer filter that matches nothing, a memory budget too small
            for one tile (naming the layer).
    """
    t_start = time.perf_counter()
    # ------------------------------------------------------------------ arguments
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device, param_dtype = _model_device_dtype(model)
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
            raise ValueError("example_input must be a tensor with a batch dimension")
        shape = tuple(example_input.shape[1:])
        dtype = input_dtype or example_input.dtype
    else:
        if input_shape is None:
            raise ValueError("give input_shape (one example, without the batch dimension)")
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"input_shape must be a sequence of ints, got {input_shape!r}"
            ) from None
        dtype = input_dtype or param_dtype
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive sizes, e.g. (3, 224, 224); got {shape}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if taps not in TAPS:
        raise ValueError(f"taps must be one of {TAPS}, got {taps!r}")
    bins = v.check_bins(bins)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    v.check_correction(correction)
    if ranges not in RANGE_MODES:
        raise ValueError(f"ranges must be one of {RANGE_MODES}, got {ranges!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples (noise examples) must be a positive int, got {samples!r}")
    if max_samples_per_layer is not None and (
        not isinstance(max_samples_per_layer, int) or max_samples_per_layer < 1
    ):
        raise ValueError(
            f"max_samples_per_layer must be a positive int or None, got {max_samples_per_layer!r}"
        )
    batch_size = samples if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    lo, hi = (float(input_range[0]), float(input_range[1]))
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"input_range must be finite (lo, hi) with hi > lo, got {input_range!r}")
    budget = v.check_memory_budget(
        default_memory_budget() if memory_budget is None else memory_budget
    )

    ctx = DistContext.create(distributed)
    if samples < ctx.world:
        raise ValueError(f"samples={samples} must be at least the number of ranks ({ctx.world})")
    found, unsupported = find_layers(model, layers)
    was_training = model.training
    model.eval()
    try:
        plan = _Plan(
            shape=shape,
            dtype=dtype,
            device=device,
            input_range=(lo, hi),
            seed=seed,
            taps=taps,
            samples=samples,
            mode=mode,
            cap=max_samples_per_layer,
            batch_size=batch_size,
            direction=direction,
            reduction=reduction,
            range_mode=ranges,
            budget=budget,
            mi_kwargs=dict(bins=bins, correction=correction, backend=backend, memory_budget=budget),
            return_matrices=return_matrices,
            progress=progress,
            fused_local=fused_local,
        )
        return _score(model, found, unsupported, plan, t_start, ctx)
    finally:
        model.train(was_training)


def _noise(shape, dtype, device, seed, input_range, start, count) -> torch.Tensor:
    return uniform_examples(
        shape, start, count, *input_range, seed=seed, device=device, dtype=dtype
    )


def _score(model, found, unsupported, plan: _Plan, t_start, ctx) -> CausalScores:
    shape, dtype, device = plan.shape, plan.dtype, plan.device
    seed, input_range, samples, cap = plan.seed, plan.input_range, plan.samples, plan.cap
    bins = plan.mi_kwargs["bins"]
    timings: dict[str, float] = {}
    finder = ResponseFinder(model)
    states = [_LayerState(layer, i, layer.response_point(finder)) for i, layer in enumerate(found)]

    # ------------------------------------------------------------------ probe pass
    t0 = _clock(device)
    calls: dict[str, int] = {s.layer.name: 0 for s in states}

    def probe_hook(state: _LayerState):
        def hook(module, args, output):
            calls[state.layer.name] += 1
            state.input_shape = tuple(args[0].shape[1:])
            state.input_dtype = args[0].dtype
            state.positions = output_positions(state.layer, output)

        return hook

    example = _noise(shape, dtype, device, seed, input_range, 0, 1)
    current = ["before the first measured layer"]
    handles = [s.layer.register_forward_hook(probe_hook(s)) for s in states]
    handles += [
        s.layer.register_forward_pre_hook(
            lambda m, a, name=s.layer.name: current.__setitem__(0, f"at layer '{name}'")
        )
        for s in states
    ]
    probe_error = None
    try:
        with torch.no_grad():
            model(example)
    except Exception as e:
        probe_error = ValueError(
            f"the model raised {current[0]} on a noise input of shape {tuple(example.shape)} "
            f"(input_shape={shape}, dtype={dtype}): {type(e).__name__}: {e}"
        )
        probe_error.__cause__ = e
    finally:
        for h in handles:
            h.remove()
    ctx.check(probe_error, "in the probe forward pass")
    kept = []
    for s in states:
        n = calls[s.layer.name]
        if n == 1:
            kept.append(s)
        else:
            unsupported[s.layer.name] = (
                (getattr(s.layer, "unsupported_reason", None) or "not called in the forward pass")
                if n == 0
                else f"called {n} times per forward pass (shared weights are not supported)"
            )
    states = kept
    if not states:
        raise ValueError("no measurable layer is called exactly once in the forward pass")
    timings["probe"] = _clock(device) - t0

    # ------------------------------------------------------------------ channel graph
    t0 = time.perf_counter()
    graph_layers = [s.layer.name for s in states if s.layer.in_dependency_graph]
    groups, graph_note = build_groups(model, example, graph_layers)
    groups.update(own_groups([s.layer for s in states if not s.layer.in_dependency_graph]))
    heads = find_heads(model, {s.layer.name for s in states})
    timings["graph"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ plan
    first, last = ctx.examples(samples)
    step = plan.batch_size
    batches = [(b, min(step, last - b)) for b in range(first, last, step)]
    for s in states:
        total = samples * s.positions
        s.target = min(total, cap) if cap else total
    run = _Runner(model, states, plan, batches, timings, ctx)
    try:
        if plan.mode == "propagated":
            run.propagated(plan.range_mode, plan.budget)
        else:
            run.local(plan.batch_size)
    finally:
        run.close()

    layer_results = {s.layer.name: s.result for s in states}
    few = [
        f"{s.layer.name} ({s.result.samples})"
        for s in states
        if s.result.samples < bins * bins and not s.result.model_output
    ]
    if few and ctx.rank == 0:
        warnings.warn(
            f"{len(few)} layer(s) got fewer samples than bins^2 = {bins * bins}, where the "
            f"plug-in MI is dominated by its bias: {', '.join(few[:8])}"
            f"{' ...' if len(few) > 8 else ''}; raise `samples` (noise examples)",
            stacklevel=2,
        )
    timings["total"] = time.perf_counter() - t_start
    config = {
        "input_shape": list(shape),
        "input_range": list(input_range),
        "input_dtype": str(dtype).replace("torch.", ""),
        "mode": plan.mode,
        "taps": plan.taps,
        "bins": bins,
        "samples": samples,
        "max_samples_per_layer": cap,
        "batch_size": plan.batch_size,
        "seed": seed,
        "direction": plan.direction,
        "reduction": plan.reduction,
        "correction": plan.mi_kwargs["correction"],
        "backend": run.backend_used or plan.mi_kwargs["backend"],
        "ranges": plan.range_mode,
        "device": str(device),
        "world_size": ctx.world,
        "graph": graph_note,
        "fused_local": plan.fused_local,
        "model": type(model).__name__,
    }
    return CausalScores(layer_results, groups, config, unsupported, timings, heads)


@dataclass(frozen=True)
class _Plan:
    """The settings of one score_model call (validated), as _score and the runner read them."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    input_range: tuple[float, float]
    seed: int
    taps: str
    samples: int  # noise examples, over all ranks
    mode: str
    cap: int | None  # max_samples_per_layer
    batch_size: int
    direction: str
    reduction: str
    range_mode: str
    budget: int
    mi_kwargs: dict
    return_matrices: bool
    progress: bool
    fused_local: bool | None


class _Runner:
    """Drives forward passes, hooks and per-layer MI for one call of score_model.

    Samples are defined per global example: example ``e`` contributes ``k_e`` of its
    ``positions`` output positions to a layer, chosen by a permutation seeded from
    ``(seed, layer, e)``, with ``sum_e k_e = min(samples * positions, max_samples_per_layer)``
    (the first examples take one more when it does not divide). So the samples of a layer do
    not depend on how the examples are batched, or split over processes.
    """

    def __init__(self, model, states, plan: _Plan, batches, timings, ctx):
        self.model, self.states, self.batches, self.timings, self.ctx = (
            model,
            states,
            batches,
            timings,
            ctx,
        )
        self.shape, self.dtype, self.device = plan.shape, plan.dtype, plan.device
        self.input_range, self.seed, self.taps = plan.input_range, plan.seed, plan.taps
        self.samples, self.mi_kwargs = plan.samples, plan.mi_kwargs
        self.return_matrices = plan.return_matrices
        self.fused_local = plan.fused_local
        progress = plan.progress
        self.bar = _progress(len(states), progress and ctx.rank == 0, "causal scores")
        self.backend_used: str | None = None
        self.timings.setdefault("forward", 0.0)
        self.current = "before the first measured layer"
        self.batch = (0, 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    # ---------------------------------------------------------------- sample rows
    def _rows(self, s: _LayerState, start: int, count: int) -> torch.Tensor:
        """Flat (example, position) rows of examples ``start .. start + count - 1``."""
        per, extra = divmod(s.target, self.samples)
        if per >= s.positions:  # every position of every example
            return torch.arange(count * s.positions, device=self.device)
        rows = []
        for k in range(count):
            e = start + k
            take = per + (1 if e < extra else 0)
            gen = torch.Generator().manual_seed(example_seed(self.seed, 1 + s.index, e))
            chosen = torch.randperm(s.positions, generator=gen)[:take].sort().values
            rows.append(chosen + k * s.positions)
        return torch.cat(rows).to(self.device)

    def _capture(self, s: _LayerState, start: int, x: torch.Tensor, out: torch.Tensor):
        t0 = _clock(self.device)
        name = s.layer.name
        response = s.response.apply(out)
        _check_finite(x, name, "input")
        _check_finite(response, name, f"response ({s.response.description})")
        rows = self._rows(s, start, x.shape[0])
        xr = input_rows(s.layer, x, rows, self.taps)
        yr = output_rows(s.layer, response, rows)
        s.add_time("capture", _clock(self.device) - t0)
        return xr, yr

    # ---------------------------------------------------------------- MI of one layer
    def _mi(self, s: _LayerState, xc: torch.Tensor, yc: torch.Tensor):
        """(per_x, per_y, matrix or None, samples) of the layer, combined over ranks."""
        layer = s.layer
        if self.backend_used is None:
            from causalprune_fast.backends import resolve

            self.backend_used = resolve(self.mi_kwargs["backend"], xc.device).name
        if not self.ctx.enabled:
            if self.return_matrices:
                matrix = pairwise_mi(xc, yc, groups=layer.groups, **self.mi_kwargs)
                return matrix.double().sum(dim=1), matrix.double().sum(dim=0), matrix, len(xc)
            per_x, per_y = pairwise_mi(xc, yc, groups=layer.groups, reduce="sum", **self.mi_kwargs)
            return per_x, per_y, None, len(xc)
        return self._mi_distributed(s, xc, yc)

    def _mi_distributed(self, s: _LayerState, xc: torch.Tensor, yc: torch.Tensor):
        """Exact counts combined over ranks: all-reduce of integer counts when the layer's
        counts fit the memory budget, else all-gathered codes with the pairs sharded."""
        ctx, layer = self.ctx, s.layer
        bins = self.mi_kwargs["bins"]
        mm = self.mi_kwargs["correction"] == "miller-madow"
        g = layer.groups
        cx, cy = xc.shape[1], yc.shape[1]
        gx, gy = cx // g, cy // g
        samples = int(ctx.sum(torch.tensor([len(xc)], dtype=torch.float64))[0])
        counts_bytes = g * gx * gy * bins * bins * 8
        matrix = torch.zeros(cx, cy, dtype=torch.float64)
        if counts_bytes <= self.mi_kwargs["memory_budget"]:
            for k in range(g):
                xs, ys = slice(k * gx, (k + 1) * gx), slice(k * gy, (k + 1) * gy)
                counts = reference.joint_counts(xc[:, xs].cpu(), yc[:, ys].cpu(), bins, bins)
                counts = ctx.sum(counts.round().to(torch.int64))
                matrix[xs, ys] = reference.mi_from_counts(counts, mm)
            return matrix.sum(dim=1), matrix.sum(dim=0), matrix.float(), samples
        xa, ya = ctx.gather_rows(xc), ctx.gather_rows(yc)  # all samples, in rank order
        per_x = torch.zeros(cx, dtype=torch.float64)
        per_y = torch.zeros(cy, dtype=torch.float64)
        if g > 1:  # shard whole groups
            g0, g1 = ctx.shard(g)
            x0, x1, y0, y1, sub = g0 * gx, g1 * gx, g0 * gy, g1 * gy, g1 - g0
        else:  # shard the x columns
            (x0, x1), (y0, y1), sub = ctx.shard(cx), (0, cy), 1
        if x1 > x0:
            xa_s = xa[:, x0:x1].t().contiguous().t()
            ya_s = ya[:, y0:y1].t().contiguous().t()
            if self.return_matrices:
                m = pairwise_mi(xa_s, ya_s, groups=sub, **self.mi_kwargs).double().cpu()
                matrix[x0:x1, y0:y1] = m
            else:
                px, py = pairwise_mi(xa_s, ya_s, groups=sub, reduce="sum", **self.mi_kwargs)
                per_x[x0:x1] += px.cpu()
                per_y[y0:y1] += py.cpu()
        if self.return_matrices:
            matrix = ctx.sum(matrix)
            return matrix.sum(dim=1), matrix.sum(dim=0), matrix.float(), samples
        return ctx.sum(per_x), ctx.sum(per_y), None, samples

    def _finish(self, s: _LayerState, xc: torch.Tensor, yc: torch.Tensor) -> None:
        t0 = _clock(self.device)
        layer = s.layer
        try:
            per_x, per_y, matrix, samples = self._mi(s, xc, yc)
        except ValueError as e:
            raise ValueError(f"layer '{layer.name}': {e}") from e
        s.add_time("mi", _clock(self.device) - t0)
        per_x, per_y = per_x.cpu().double(), per_y.cpu().double()
        k = layer.taps_per_channel(self.taps)
        s.result = LayerScores(
            name=layer.name,
            kind=layer.kind,
            incoming=per_y,
            outgoing=per_x.reshape(layer.in_channels, k).sum(dim=1),
            sensitivity=float(per_y.sum()),
            response=s.response.description,
            response_reason=s.response.reason,
            samples=samples,
            input_units=int(xc.shape[1]),
            groups=layer.groups,
            taps=self.taps,
            timings=dict(s.timings),
            model_output=s.response.model_output,
            x_ranges=s.x_ranges.cpu() if s.x_ranges is not None else None,
            y_ranges=s.y_ranges.cpu() if s.y_ranges is not None else None,
            matrix=matrix.cpu() if matrix is not None else None,
        )
        s.x_codes, s.y_codes = [], []
        if self.bar is not None:
            self.bar.update(1)

    def _bin(self, s: _LayerState, xr: torch.Tensor, yr: torch.Tensor):
        t0 = _clock(self.device)
        bins = self.mi_kwargs["bins"]
        backend = self.mi_kwargs["backend"]
        xc, xrng = quantize(xr, bins, s.x_ranges, backend=backend)
        yc, yrng = quantize(yr, bins, s.y_ranges, backend=backend)
        if s.x_ranges is None:
            s.x_ranges, s.y_ranges = xrng, yrng
        s.add_time("binning", _clock(self.device) - t0)
        return xc, yc

    def _update_ranges(self, s: _LayerState, xr: torch.Tensor, yr: torch.Tensor) -> None:
        for attr, t in (("x_ranges", xr), ("y_ranges", yr)):
            lo, hi = t.double().amin(dim=0), t.double().amax(dim=0)
            cur = getattr(s, attr)
            if cur is not None:
                lo, hi = torch.minimum(lo, cur[:, 0]), torch.maximum(hi, cur[:, 1])
            setattr(s, attr, torch.stack([lo, hi], dim=1))

    # ---------------------------------------------------------------- forward passes
    def _forward_all(self, hook_for: Callable[[_LayerState], Callable], group, batches) -> None:
        """One forward pass per batch with ``hook_for(state)`` on every layer of ``group``.
        With several ranks, a failure on any rank is raised on all of them, naming the rank
        and the layer, before anyone enters a collective."""
        error = None
        for start, count in batches:
            self.batch = (start, count)
            handles = [s.layer.register_forward_hook(hook_for(s)) for s in group]
            handles += [
                s.layer.register_forward_pre_hook(
                    lambda m, a, name=s.layer.name: setattr(self, "current", f"at layer '{name}'")
                )
                for s in group
            ]
            try:
                x = _noise(
                    self.shape, self.dtype, self.device, self.seed, self.input_range, start, count
                )
                before = sum(sum(s.timings.values()) for s in group)
                t0 = _clock(self.device)
                with torch.no_grad():
                    self.model(x)
                spent = _clock(self.device) - t0
                inside = sum(sum(s.timings.values()) for s in group) - before
                self.timings["forward"] += max(0.0, spent - inside)
            except Exception as e:
                if not self.ctx.enabled:
                    raise
                error = e
                break
            finally:
                for h in handles:
                    h.remove()
        self.ctx.check(error, f"{self.current} (examples {self.batch[0]}..)")

    def _groups_within_budget(self, budget: int, keep_codes: bool) -> list[list[_LayerState]]:
        """Layers split so that the codes this rank keeps across forward passes fit
        ``budget``."""
        if not keep_codes:
            return [self.states]
        share = sum(c for _, c in self.batches) / self.samples  # this rank's examples
        groups, current, used = [], [], 0
        for s in self.states:
            units = s.layer.input_units(self.taps) + s.layer.out_channels
            need = math.ceil(s.target * share + self.samples) * units
            if need > budget:
                raise ValueError(
                    f"layer '{s.layer.name}': memory_budget={budget} is too small for its "
                    f"codes across forward passes ({need} bytes); raise it or use one pass"
                )
            if current and used + need > budget:
                groups.append(current)
                current, used = [], 0
            current.append(s)
            used += need
        if current:
            groups.append(current)
        return groups

    def _agree_ranges(self, group) -> None:
        for s in group:
            s.x_ranges, s.y_ranges = self.ctx.ranges(s.x_ranges), self.ctx.ranges(s.y_ranges)

    def _finish_kept(self, group) -> None:
        """MI of every layer of ``group`` from the codes kept across passes (in layer order,
        the same on every rank)."""
        for s in group:
            error, codes = None, None
            try:
                xc = torch.cat(s.x_codes).t().contiguous().t()
                yc = torch.cat(s.y_codes).t().contiguous().t()
                codes = (xc, yc)
            except Exception as e:
                error = e
            self.ctx.check(error, f"at layer '{s.layer.name}'")
            self._finish(s, *codes)

    def propagated(self, range_mode: str, budget: int) -> None:
        # One pass per rank and ranges from its data: MI right inside the hook. Otherwise
        # codes are kept across passes (several batches, or several ranks whose ranges and
        # counts must be combined).
        single = len(self.batches) == 1 and not self.ctx.enabled

        def minmax_hook(s):
            def hook(module, args, output):
                xr, yr = self._capture(s, self.batch[0], args[0], output)
                self._update_ranges(s, xr, yr)

            return hook

        def codes_hook(s):
            def hook(module, args, output):
                xr, yr = self._capture(s, self.batch[0], args[0], output)
                xc, yc = self._bin(s, xr, yr)
                if single:
                    self._finish(s, xc, yc)
                    return
                s.x_codes.append(xc)
                s.y_codes.append(yc)

            return hook

        exact = range_mode == "exact" or self.ctx.enabled
        for group in self._groups_within_budget(budget, keep_codes=not single):
            if not single and exact:
                self._forward_all(minmax_hook, group, self.batches)
                self._agree_ranges(group)
            self._forward_all(codes_hook, group, self.batches)
            if not single:
                self._finish_kept(group)

    def local(self, batch_size: int) -> None:
        """Per-layer intervention: calibrate each layer's input channel ranges on a
        propagated pass over the first ``batch_size`` examples (the same examples on every
        rank), then drive each layer alone with fresh uniform noise on those ranges (noise
        stream ``1000 + layer index``)."""

        def calib_hook(s):
            def hook(module, args, output):
                x = args[0]
                _check_finite(x, s.layer.name, "input")
                dims = [d for d in range(x.dim()) if d != (1 if s.layer.is_conv else x.dim() - 1)]
                s.channel_lo = x.double().amin(dim=dims)
                s.channel_hi = x.double().amax(dim=dims)

            return hook

        self._forward_all(calib_hook, self.states, [(0, min(batch_size, self.samples))])
        for s in self.states:
            fused = None
            if not self.ctx.enabled and self.fused_local is not False:
                fused = _fused_local_plan(s, self.device, force=bool(self.fused_local))
            if fused is not None:
                self._local_fused(s, fused)
                continue
            view = [-1] + [1] * (len(s.input_shape) - 1) if s.layer.is_conv else [-1]
            dtype = s.input_dtype or self.dtype  # the layer input's (floating) dtype
            lo = s.channel_lo.to(dtype).reshape(view)
            hi = s.channel_hi.to(dtype).reshape(view)
            xs, ys, error = [], [], None
            try:
                for start, count in self.batches:
                    x = uniform_examples(
                        s.input_shape,
                        start,
                        count,
                        lo,
                        hi,
                        seed=self.seed,
                        stream=1000 + s.index,
                        device=self.device,
                        dtype=dtype,
                    )
                    with torch.no_grad():
                        out = s.layer.forward(x)
                        xr, yr = self._capture(s, start, x, out)
                    xs.append(xr)
                    ys.append(yr)
                xr, yr = torch.cat(xs), torch.cat(ys)
                self._update_ranges(s, xr, yr)
            except Exception as e:
                error = e
            self.ctx.check(error, f"at layer '{s.layer.name}'")
            s.x_ranges, s.y_ranges = self.ctx.ranges(s.x_ranges), self.ctx.ranges(s.y_ranges)
            xc, yc = self._bin(s, xr, yr)
            self._finish(s, xc, yc)

    def _local_fused(self, s: _LayerState, plan: dict) -> None:
        """Local mode of a Linear / 1x1 convolution on a GPU in one fused Triton kernel:
        Philox noise generated in registers (twice, instead of stored), the layer, its
        response, binning and joint counts, reduced to MI (triton_kernels/local_linear.py).
        Same samples count as the unfused path, different (counter-based) noise."""
        from causalprune_fast.triton_kernels.local_linear import local_linear_mi

        t0 = _clock(self.device)
        module = s.layer.module
        try:
            result, xr, yr = local_linear_mi(
                module.weight.detach(),
                None if module.bias is None else module.bias.detach(),
                s.channel_lo,
                s.channel_hi,
                samples=s.target,
                seed=example_seed(self.seed, 1000 + s.index, 0),
                bins=self.mi_kwargs["bins"],
                scale=plan["scale"],
                shift=plan["shift"],
                activation=plan["activation"],
                miller_madow=self.mi_kwargs["correction"] == "miller-madow",
                reduce=None if self.return_matrices else "sum",
                return_ranges=True,
            )
        except ValueError as e:
            raise ValueError(f"layer '{s.layer.name}': {e}") from e
        if self.return_matrices:
            matrix = result.cpu()
            per_x, per_y = matrix.double().sum(dim=1), matrix.double().sum(dim=0)
        else:
            matrix, (per_x, per_y) = None, result
        s.add_time("mi", _clock(self.device) - t0)
        s.x_ranges, s.y_ranges = xr, yr
        s.result = LayerScores(
            name=s.layer.name,
            kind=s.layer.kind,
            incoming=per_y.cpu().double(),
            outgoing=per_x.cpu().double(),
            sensitivity=float(per_y.sum()),
            response=s.response.description + " [fused Triton local kernel]",
            response_reason=s.response.reason,
            samples=s.target,
            input_units=s.layer.in_channels,
            groups=1,
            taps=self.taps,
            timings=dict(s.timings),
            model_output=s.response.model_output,
            x_ranges=xr.cpu(),
            y_ranges=yr.cpu(),
            matrix=matrix,
        )
        if self.bar is not None:
            self.bar.update(1)


_FUSED_ACTIVATIONS = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Hardswish: "hardswish",
}
_FUSED_FUNCTIONS = {"relu", "relu6", "silu", "sigmoid", "tanh", "hardswish", "gelu"}


def _fused_local_plan(s: _LayerState, device: torch.device, force: bool) -> dict | None:
    """How to run a layer's local mode in the fused kernel, or None where it does not apply.

    It applies on a GPU (anywhere Triton runs with ``force``), to Linear layers and 1x1
    convolutions (stride 1, no padding, one group) whose response is at most an eval
    BatchNorm (folded into scale and shift) and one activation the kernel knows."""
    if device.type != "cuda" and not force:
        return None
    m = s.layer.module
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        if (
            any(k != 1 for k in m.kernel_size)
            or any(st != 1 for st in m.stride)
            or any(m._reversed_padding_repeated_twice)
            or m.groups != 1
        ):
            return None
    elif not isinstance(m, nn.Linear):
        return None
    try:
        from causalprune_fast.triton_kernels import is_available

        if not is_available(device)[0]:
            return None
    except Exception:
        return None
    plan = {"scale": None, "shift": None, "activation": "identity"}
    for k, (label, fn) in enumerate(s.response.steps):
        last = k == len(s.response.steps) - 1
        if isinstance(fn, nn.modules.batchnorm._BatchNorm) and k == 0 and fn.track_running_stats:
            inv = torch.rsqrt(fn.running_var.double() + fn.eps)
            w = fn.weight.double() if fn.affine else torch.ones_like(inv)
            b = fn.bias.double() if fn.affine else torch.zeros_like(inv)
            plan["scale"] = (w * inv).float()
            plan["shift"] = (b - fn.running_mean.double() * w * inv).float()
        elif last and type(fn) in _FUSED_ACTIVATIONS:
            plan["activation"] = _FUSED_ACTIVATIONS[type(fn)]
        elif last and isinstance(fn, nn.GELU) and fn.approximate == "none":
            plan["activation"] = "gelu"
        elif last and not isinstance(fn, nn.Module) and label in _FUSED_FUNCTIONS:
            plan["activation"] = label
        else:
            return None
    return plan
