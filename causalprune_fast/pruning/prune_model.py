"""One-call structured pruning with causal scores: :func:`prune`.

Channels are removed physically through Torch-Pruning's dependency graph (coupled layers,
residual streams, depthwise convolutions and attention heads stay consistent); the criterion is
:class:`~causalprune_fast.pruning.importance.CausalImportance`. With
``sequential=True`` (docs/method.md section 2), layers are scored and pruned one group at a time in
the pruner's order, each scored on the network as already pruned before it.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from causalprune_fast.base import validation as v
from causalprune_fast.base.model_state import ModelSnapshot, rng_forked
from causalprune_fast.base.outputs import output_tensors
from causalprune_fast.model.families import is_conv1d, out_channels
from causalprune_fast.model.layers import MEASURED_TYPES
from causalprune_fast.pruning.attention_pruning import attention_pruning
from causalprune_fast.pruning.refusals import check_channel_groups, check_structures
from causalprune_fast.pruning.report import (
    PruneReport,
    count_macs_and_params,
    shortfall_message,
    wanted_removals,
)
from causalprune_fast.scoring.score import score_model_keywords


def _is_layer(m: nn.Module) -> bool:
    """A prunable measured layer: ConvNd, Linear or transformers Conv1D."""
    return isinstance(m, MEASURED_TYPES) or is_conv1d(m)


def model_output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Measured layers whose output channels are the model's outputs (classifier heads), in any
    output structure (see :func:`output_tensors`): the layers whose output is returned as is;
    where there is none, for each output the last layer to run whose channel count is the
    output's (a classifier conv followed by an activation, pooling and flatten, as in
    SqueezeNet)."""
    outputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, out: outputs.__setitem__(mod, out))
        for m in model.modules()
        if _is_layer(m)
    ]
    try:
        with torch.no_grad():
            result = model(example)
    finally:
        for h in hooks:
            h.remove()
    results = output_tensors(result)
    heads = [m for m, out in outputs.items() if any(out is r for r in results)]
    if heads:
        return heads
    ran = list(outputs)  # in the order the layers ran (dicts keep insertion order)
    for r in results:
        if r.dim() < 2:
            continue
        for m in reversed(ran):
            if out_channels(m) == r.shape[-1] or out_channels(m) == r.shape[1]:
                if m not in heads:
                    heads.append(m)
                break
    return heads


def _group_roots_in_forward_order(model, example, groups, dg) -> list[nn.Module]:
    """One root layer per Torch-Pruning group, ordered by when its first producer runs."""
    order: dict[nn.Module, int] = {}

    def record(mod, args, out) -> None:  # a forward hook must return None
        order.setdefault(mod, len(order))

    hooks = [m.register_forward_hook(record) for m in model.modules() if _is_layer(m)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    roots = []
    for group in groups:
        producers = [
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler) and dep.target.module in order
        ]
        if producers:
            roots.append(min(producers, key=order.__getitem__))
    return sorted(roots, key=order.__getitem__)


SHORTFALL = ("warn", "raise", "ignore")


def _check_arguments(
    *,
    model,
    ratio,
    input_shape,
    example_input,
    sequential,
    global_pruning,
    ignored_layers,
    round_to,
    iterative_steps,
    on_shortfall,
    score_model_kwargs,
    **_checked_by_their_users,
) -> tuple[tuple[int, ...] | None, list[nn.Module] | None]:
    """Every argument of :func:`prune` (passed as ``**locals()`` of its first line), checked
    before anything touches the model; ``direction``, ``group_reduction`` and ``normalizer``
    are checked by CausalImportance, also before any change."""
    v.check_model(model)
    if next(model.parameters(), None) is None:
        raise ValueError("model has no parameters: there is nothing to prune")
    v.check_ratio(ratio)
    shape = v.check_input_shape(input_shape)
    v.check_example_input(example_input)
    if shape is None and example_input is None:
        raise ValueError("give input_shape (or example_input)")
    v.check_bool(sequential, "sequential")
    v.check_bool(global_pruning, "global_pruning")
    if round_to is not None and (
        isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1
    ):
        raise ValueError(f"round_to must be None or a positive int, got {round_to!r}")
    if (
        isinstance(iterative_steps, bool)
        or not isinstance(iterative_steps, numbers.Integral)
        or iterative_steps < 1
    ):
        raise ValueError(f"iterative_steps must be a positive int, got {iterative_steps!r}")
    if sequential and iterative_steps != 1:
        raise ValueError("sequential=True prunes group by group; iterative_steps must be 1")
    if on_shortfall not in SHORTFALL:
        raise ValueError(f"on_shortfall must be one of {SHORTFALL}, got {on_shortfall!r}")
    layers = None
    if ignored_layers is not None:
        if isinstance(ignored_layers, nn.Module) or not isinstance(ignored_layers, Iterable):
            raise ValueError(
                "ignored_layers must be a list of modules of the model (wrap a single module "
                f"in a list), got {type(ignored_layers).__name__}"
            )
        layers = list(ignored_layers)
        members = {id(m) for m in model.modules()}
        for m in layers:
            if not isinstance(m, nn.Module):
                raise ValueError(
                    f"ignored_layers must hold modules of the model, got {type(m).__name__}"
                )
            if id(m) not in members:
                raise ValueError(
                    f"ignored_layers holds a module that is not part of the model: {m}"
                )
    accepted = score_model_keywords()
    if accepted is not None:
        v.check_keyword_arguments(score_model_kwargs, accepted - {"example_input"}, "prune()")
    return shape, layers


def prune(
    model: nn.Module,
    ratio: float,
    input_shape: Sequence[int] | None = None,
    *,
    example_input: torch.Tensor | None = None,
    sequential: bool = False,
    global_pruning: bool = False,
    ignored_layers: Sequence[nn.Module] | None = None,
    round_to: int | None = None,
    iterative_steps: int = 1,
    direction: str = "auto",
    group_reduction: str = "sum",
    normalizer: str | None = "mean",
    on_shortfall: str = "warn",
    **score_model_kwargs,
) -> tuple[nn.Module, PruneReport]:
    """Remove ``ratio`` of the channels of every prunable group, lowest causal score first.

    The model is pruned **in place**. Every argument is checked before the model is touched,
    and if anything fails on the way (an error, or KeyboardInterrupt) the model is put back
    exactly as it was: its modules, parameters, buffers and attributes. On success, every
    submodule's ``training`` flag and every parameter's ``requires_grad`` are as they were
    (the pruned parameters are new tensors), and the global torch RNG state is left as found.

    Torch-Pruning never empties a group: where the ratio (or, with ``global_pruning``, the
    global threshold) would remove every channel of a group, it leaves that group alone. The
    report lists every group with its width before and after; when fewer channels were
    removed than asked for, ``on_shortfall`` says what happens.

    Args:
        model: the network; pruned in place and returned.
        ratio: fraction of channels to remove, in [0, 1).
        input_shape: one example's shape without the batch dimension (or ``example_input``).
        example_input: an input batch, for tracing and for the noise's shape and dtype.
        sequential: score and prune one group at a time, each on the network as pruned so far.
        global_pruning: rank channels across layers instead of within each layer. Scores
            are then compared across layers, so unless ``correction`` is given it defaults to
            ``"miller-madow"`` here (with the default ``normalizer="mean"``: the best global
            criterion of the quality study, benchmarks/quality/RESULTS.md "Global pruning").
        ignored_layers: modules of ``model`` not to prune; default the layers whose output is
            (part of) the model's output (classifier heads), in whatever structure the model
            returns: a tensor, tuples, lists, dicts, dataclasses.
        round_to: keep channel counts multiples of this.
        iterative_steps: prune in this many steps, rescoring before each.
        direction, group_reduction, normalizer: see
            :class:`~causalprune_fast.pruning.importance.CausalImportance`.
        on_shortfall: when fewer channels were removed than ``ratio`` asks for: ``"warn"``
            (a UserWarning with the numbers; the model stays pruned as far as it went),
            ``"raise"`` (a ValueError with the numbers; the model is put back as found) or
            ``"ignore"``.
        **score_model_kwargs: passed to :func:`causalprune_fast.score_model`.

    Returns:
        ``(model, report)``: the pruned model and a :class:`PruneReport`.

    Raises:
        ValueError: a bad argument (naming it), a model that fails on the example input, a
            model Torch-Pruning cannot prune (naming the modules and why, before any change;
            :mod:`causalprune_fast.pruning.refusals`), a pruned model that fails on the example
            input (put back as it was), or a shortfall with ``on_shortfall="raise"``.
        TypeError: a keyword argument that neither prune() nor score_model takes.
    """
    shape, ignored = _check_arguments(**locals())  # first: locals() holds only the arguments
    check_structures(model)  # what Torch-Pruning cannot prune, before any work

    # importance.py subclasses a Torch-Pruning class: imported where prune() needs it, so that
    # the package imports without Torch-Pruning
    from causalprune_fast.pruning.importance import CausalImportance

    ratio, iterative_steps = float(ratio), int(iterative_steps)
    if example_input is not None:
        score_model_kwargs["example_input"] = example_input
    if global_pruning and "correction" not in score_model_kwargs:
        # scores of layers of different widths are compared: the bias-corrected estimate
        # (docs/method.md 5.3 and 6.7)
        score_model_kwargs["correction"] = "miller-madow"
    importance = CausalImportance(
        model,
        shape,
        direction=direction,
        group_reduction=group_reduction,
        normalizer=normalizer,
        **score_model_kwargs,
    )
    param = next(model.parameters())
    if example_input is None:
        # Only for tracing; its own generator: the global RNG is not consumed.
        gen = torch.Generator().manual_seed(0)
        dtype = param.dtype if param.dtype.is_floating_point else torch.float32
        example_input = torch.rand((1, *shape), generator=gen, dtype=torch.float64) * 2 - 1
        example_input = example_input.to(device=param.device, dtype=dtype)

    snapshot = ModelSnapshot(model)
    with rng_forked(model):
        try:
            model.eval()
            report = _prune(
                model,
                importance,
                example_input,
                ratio,
                sequential,
                global_pruning,
                ignored,
                round_to,
                iterative_steps,
            )
            message = shortfall_message(report, global_pruning)
            if message and on_shortfall == "raise":
                raise ValueError(message + "; the model was left as it was")
            if message and on_shortfall == "warn":
                warnings.warn(message, UserWarning, stacklevel=2)
        except BaseException:
            snapshot.restore()
            raise
        snapshot.restore_flags()
    return model, report


def _prune(
    model,
    importance,
    example_input,
    ratio,
    sequential,
    global_pruning,
    ignored,
    round_to,
    iterative_steps,
) -> PruneReport:
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    attention = attention_pruning(model)  # may refuse the model: before anything changes
    attention.check_iterative_steps(iterative_steps)
    attention.check_global_pruning(global_pruning, model)
    attention.check_sequential(sequential, global_pruning)
    try:
        heads = model_output_layers(model, example_input)
    except Exception as e:
        raise ValueError(
            f"the model raised on an example input of shape {tuple(example_input.shape)}: "
            f"{type(e).__name__}: {e}"
        ) from e
    ignored = heads if ignored is None else ignored
    measured = [m for m in model.modules() if _is_layer(m)]
    # Before Torch-Pruning's own (unbounded) group search: every group it will walk must be
    # found within bounded memory and time.
    skip = set(map(id, ignored))
    check_channel_groups(model, example_input, [names[m] for m in measured if id(m) not in skip])
    before = {names[m]: out_channels(m) for m in measured}
    macs_before, params_before = count_macs_and_params(model, example_input)

    def make_pruner(ratio_dict=None):
        # heads, Conv1D, RMSNorm, output_transform (any output structure) and the trace: see
        # attention_pruning.py and model/llm_graph.py.
        return attention.pruner(
            model,
            example_input,
            ratio,
            pruner_class=tp.pruner.BasePruner,
            pruning_ratio_dict=ratio_dict,
            importance=importance,
            global_pruning=global_pruning,
            ignored_layers=list(ignored),
            round_to=round_to,
            iterative_steps=iterative_steps,
        )

    base = make_pruner()
    names = {m: n for n, m in model.named_modules()}  # fused projections are split now
    dg = base.DG
    groups = list(
        dg.get_all_groups(
            ignored_layers=base.ignored_layers, root_module_types=base.root_module_types
        )
    )
    widths: dict[str, tuple[nn.Module, int, int]] = {}  # root name: (root, width, channel groups)
    shared = attention.shared_key_value_layers()  # pruned with their query heads only
    for group in groups:
        root = group[0].dep.target.module
        if root in names and names[root] not in widths and root not in shared:
            g = max(base.out_channel_groups.get(dep.target.module, 1) for dep, _ in group)
            widths[names[root]] = (root, dg.get_out_channels(root), g)
    order = {n: i for i, n in enumerate(names.values())}
    widths = dict(sorted(widths.items(), key=lambda item: order[item[0]]))

    if sequential:
        # One group at a time, in forward order, each pruned by a fresh pruner whose only
        # non-zero ratio is that group's: the importance is computed on the model as pruned
        # so far (CausalImportance rescores whenever the model has changed).
        roots = _group_roots_in_forward_order(model, example_input, groups, dg)
        roots = [root for root in roots if root not in shared]
        for i, root in enumerate(roots):
            pruner = make_pruner({root: ratio})
            pruner.step()
            last = i == len(roots) - 1
            attention.sync(model, pruner, warn=last, final=last)
    else:
        for step in range(iterative_steps):
            base.step()
            # before the next step rescores the model
            last = step == iterative_steps - 1
            attention.sync(model, base, warn=last, final=last)
    if attention.fused is not None:
        attention.fused.join()  # also where no group was pruned
    try:
        with torch.no_grad():
            model(example_input)
    except Exception as e:  # prune() puts the model back as it was
        raise ValueError(
            "prune(): the pruned model fails on the example input "
            f"({type(e).__name__}: {e}): Torch-Pruning's groups do not cover a structure of "
            "this model; the model was left as it was"
        ) from e
    macs_after, params_after = count_macs_and_params(model, example_input)

    group_widths = {n: (w, dg.get_out_channels(root)) for n, (root, w, _) in widths.items()}
    total = sum(w for w, _ in group_widths.values())
    removed = sum(w - a for w, a in group_widths.values())
    short = {}
    if not global_pruning:
        for n, (_, w, g) in widths.items():
            if w - group_widths[n][1] < wanted_removals(w, ratio) - (g - 1):
                short[n] = wanted_removals(w, ratio)
    return PruneReport(
        params_before=int(params_before),
        params_after=int(params_after),
        macs_before=float(macs_before),
        macs_after=float(macs_after),
        channels={n: (c, out_channels(model.get_submodule(n))) for n, c in before.items()},
        rescored=importance.rescored,
        groups=group_widths,
        ratio=ratio,
        achieved=removed / total if total else 0.0,
        short=short,
        kept={names[m]: why for m, why in attention.kept.items() if m in names},
    )
