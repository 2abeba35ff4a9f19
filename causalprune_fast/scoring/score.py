"""Whole-network causal scoring: :func:`score_model` (docs/method.md sections 1-3 and 6).

The network, in eval mode and without gradients, is driven by seeded uniform noise on the
model's device. This module is the public entry: it checks the arguments into a
:class:`~causalprune_fast.scoring.plan.ScorePlan`, runs the forward passes
(:mod:`causalprune_fast.scoring.driver`, in :mod:`~causalprune_fast.scoring.propagated` or
:mod:`~causalprune_fast.scoring.local` mode) and returns :class:`CausalScores`. How each layer is
measured is described in :mod:`causalprune_fast.scoring`.
"""

from __future__ import annotations

import inspect
import re
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from causalprune_fast.base.distributed import DistContext
from causalprune_fast.base.model_state import preserved
from causalprune_fast.model.attention import find_heads, own_groups
from causalprune_fast.model.channel_graph import build_groups
from causalprune_fast.model.discovery import find_layers
from causalprune_fast.model.response import ResponseFinder
from causalprune_fast.results.causal_scores import CausalScores
from causalprune_fast.results.layer_scores import few_sample_layers
from causalprune_fast.scoring.driver import Driver
from causalprune_fast.scoring.layer_state import LayerState, clock
from causalprune_fast.scoring.local import LocalMode
from causalprune_fast.scoring.plan import (
    DEFAULT_EXAMPLES,
    DEFAULT_MAX_SAMPLES_PER_LAYER,
    DEFAULT_SAMPLES,
    DEFAULT_SAMPLES_PER_LAYER,
    MODES,
    NOT_GIVEN_EXAMPLES,
    NOT_GIVEN_SAMPLES_PER_LAYER,
    RANGE_MODES,
    NotGiven,
    ScorePlan,
)
from causalprune_fast.scoring.probe import probe
from causalprune_fast.scoring.propagated import PropagatedMode

__all__ = [
    "DEFAULT_EXAMPLES",
    "DEFAULT_MAX_SAMPLES_PER_LAYER",
    "DEFAULT_SAMPLES",
    "DEFAULT_SAMPLES_PER_LAYER",
    "MODES",
    "RANGE_MODES",
    "score_model",
]


def _progress(total: int, enabled: bool, desc: str):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="layer", leave=False)
        except ImportError:
            pass
    return None


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
    examples: int | NotGiven = NOT_GIVEN_EXAMPLES,
    samples_per_layer: int | None | NotGiven = NOT_GIVEN_SAMPLES_PER_LAYER,
    batch_size: int | None = None,
    seed: int = 0,
    layers: str | Iterable | Callable | re.Pattern | None = None,
    direction: str = "auto",
    reduction: str = "sum",
    correction: str | None = None,
    backend: str = "auto",
    memory_budget: int | None = None,
    ranges: str = "exact",
    return_matrices: bool = False,
    progress: bool = True,
    distributed: bool = False,
    fused_local: bool | None = None,
    pairs_per_unit: int | None = None,
    samples: int | NotGiven = NOT_GIVEN_EXAMPLES,
    max_samples_per_layer: int | None | NotGiven = NOT_GIVEN_SAMPLES_PER_LAYER,
) -> CausalScores:
    """Score every prunable channel of ``model`` by the causal information flowing through it.

    Args:
        model: the network (its parameters' device and dtype are used for the noise).
        input_shape: shape of one input example, without the batch dimension, e.g.
            ``(3, 224, 224)``. Or give ``example_input`` (a tensor whose shape after the
            batch dimension and whose dtype are used; its values are not).
        input_range: the box ``(lo, hi)`` of the uniform noise (docs/method.md section 1); for
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
        examples: noise examples sent through the whole network from its input (default
            64). In ``local`` mode they are the calibration pass that sets each layer's
            per-channel noise ranges; in ``propagated`` mode the layers are measured on them.
        samples_per_layer: sample rows each layer is measured on (default 16384). In
            ``local`` mode every layer gets exactly this many rows, drawn fresh for it,
            whatever ``examples`` and its spatial size (a classifier behind global pooling
            too). In ``propagated`` mode it caps a layer's ``examples * positions``
            (example, position) rows, a seeded subsample; None for no cap there.
        batch_size: noise examples per forward pass, at most ``examples`` (default: all at
            once).
        seed: seed of the noise and of the subsampling.
        layers: filter of measured layers by qualified name (a name, regex, callable or list).
        direction: ``"auto"`` (the default: ``"in"`` for conv channels, ``"out"`` for every
            other channel), ``"in"``, ``"out"`` or ``"both"`` (docs/method.md section 6.3).
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
            process group (see :mod:`causalprune_fast.base.distributed`): examples are split over
            the ranks, results are identical to one process with the same arguments, and every
            rank returns them.
        fused_local: in ``local`` mode, score Linear layers and zero-padded Conv1d/2d/3d layers
            (any kernel, stride, dilation, groups) whose response is at most an eval BatchNorm
            and one activation with a fused Triton kernel (noise, layer, response, binning and
            counts in one kernel; its own counter-based noise). None (default): on CUDA
            devices only; True: wherever the chosen ``backend`` offers it (``triton``, or
            ``auto`` where Triton runs, also the CPU under ``TRITON_INTERPRET=1``); False:
            never. Other backends never run it.
        pairs_per_unit: None (default: every pair of a layer is measured) or ``K >= 2``: each
            unit's MI sum is estimated from ``K`` partner units drawn at random (without
            replacement, seeded from ``seed`` and the layer; the same partners for all the
            units of one side of a layer), scaled by ``partners / K`` (unbiased), with its
            standard error in ``LayerScores.incoming_se`` / ``outgoing_se``. A layer costs
            ``(inputs + outputs) * K`` pairs instead of ``inputs * outputs``. Layers with
            groups (grouped convolutions) and layers with at most ``K`` partners are measured
            exactly; layers are not measured by the fused kernels then (docs/method.md 5.4).
        samples: old name of ``examples`` (deprecated, still accepted).
        max_samples_per_layer: old name of ``samples_per_layer`` (deprecated, still accepted).
            Giving an old and a new name with different values is a ValueError naming both.

    Returns:
        :class:`CausalScores`.

    Raises:
        ValueError: a bad argument (naming it, before the model runs), a model that raises on
            the noise, non-finite activations (naming the first module that produced them), a
            layer filter that matches nothing, a memory budget too small for one tile (naming
            the layer).

    The model and the process are left as found, also on an error or a KeyboardInterrupt:
    parameters and buffers, every submodule's train/eval flag, ``requires_grad``, hooks, and
    the global random number generators.
    """
    t_start = time.perf_counter()
    plan = ScorePlan.build(
        model,
        input_shape,
        example_input=example_input,
        input_range=input_range,
        input_dtype=input_dtype,
        mode=mode,
        taps=taps,
        bins=bins,
        examples=examples,
        samples_per_layer=samples_per_layer,
        samples=samples,
        max_samples_per_layer=max_samples_per_layer,
        batch_size=batch_size,
        seed=seed,
        layers=layers,
        direction=direction,
        reduction=reduction,
        correction=correction,
        backend=backend,
        memory_budget=memory_budget,
        ranges=ranges,
        return_matrices=return_matrices,
        progress=progress,
        distributed=distributed,
        fused_local=fused_local,
        pairs_per_unit=pairs_per_unit,
    )
    ctx = DistContext.create(plan.distributed)
    if plan.examples < ctx.world:
        raise ValueError(
            f"examples={plan.examples} must be at least the number of ranks ({ctx.world})"
        )
    found, unsupported = find_layers(model, plan.layers)
    with preserved(model):
        model.eval()
        return _score(model, found, unsupported, plan, t_start, ctx)


def _score(model, found, unsupported, plan: ScorePlan, t_start: float, ctx) -> CausalScores:
    timings: dict[str, float] = {}
    finder = ResponseFinder(model)
    states = [LayerState(layer, i, layer.response_point(finder)) for i, layer in enumerate(found)]

    t0 = clock(plan.device)
    example, states, skipped = probe(model, states, plan, ctx)
    unsupported.update(skipped)
    timings["probe"] = clock(plan.device) - t0

    t0 = time.perf_counter()
    graph_layers = [s.layer.name for s in states if s.layer.in_dependency_graph]
    virtual = [s.layer.name for s in states if not s.layer.in_dependency_graph]
    channel_groups, graph_note = build_groups(model, example, graph_layers, virtual=virtual)
    alone = [s.layer for s in states if s.layer.name not in channel_groups]
    channel_groups.update(own_groups(alone))
    heads = find_heads(model, {s.layer.name for s in states})
    timings["graph"] = time.perf_counter() - t0

    bar = _progress(len(states), plan.progress and ctx.rank == 0, "causal scores")
    try:
        driver = Driver(
            model, states, plan, ctx, timings, None if bar is None else lambda: bar.update(1)
        )
        mode = PropagatedMode if plan.mode == "propagated" else LocalMode
        mode(driver).run()
    finally:
        if bar is not None:
            bar.close()

    layer_results = {s.layer.name: s.result for s in states}
    few = few_sample_layers(layer_results, plan.bins)
    if few and ctx.rank == 0:
        warnings.warn(
            f"{len(few)} layer(s) got fewer samples than bins^2 = {plan.bins**2}, where the "
            f"plug-in MI is dominated by its bias: {', '.join(few[:8])}"
            f"{' ...' if len(few) > 8 else ''}; raise `samples_per_layer` (local mode) or "
            "`examples` (propagated mode)",
            stacklevel=3,
        )
    timings["total"] = time.perf_counter() - t_start
    config = plan.config(
        backend=driver.backend.name,
        world_size=ctx.world,
        graph=graph_note,
        fused_local=plan.fused_local,
        model=type(model).__name__,
    )
    return CausalScores(layer_results, channel_groups, config, unsupported, timings, heads)


def score_model_keywords() -> set[str] | None:
    """The keyword arguments :func:`score_model` takes besides the model and the input shape
    (None if it takes any): what ``prune()`` and ``CausalImportance`` may pass on to it."""
    params = inspect.signature(score_model).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params) - {"model", "input_shape"}


def check_score_arguments(
    model: nn.Module, input_shape: Sequence[int] | None = None, **kwargs
) -> ScorePlan:
    """Check what would be passed to :func:`score_model` without running the model: the
    argument checks of ``score_model`` (a ValueError naming the argument) and the ``layers``
    filter against the model's layers. For callers that score later (CausalImportance)."""
    bound = inspect.signature(score_model).bind(model, input_shape, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    plan = ScorePlan.build(arguments.pop("model"), arguments.pop("input_shape"), **arguments)
    find_layers(model, plan.layers)
    return plan
