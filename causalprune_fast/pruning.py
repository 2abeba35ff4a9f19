"""One-call structured pruning with causal scores: :func:`prune`.

Channels are removed physically through Torch-Pruning's dependency graph (coupled layers,
residual streams, depthwise convolutions and attention heads stay consistent); the criterion is
:class:`~causalprune_fast.integrations.torch_pruning.CausalImportance`. With
``sequential=True`` (METHOD.md section 2), layers are scored and pruned one group at a time in
the pruner's order, each scored on the network as already pruned before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from causalprune_fast.integrations.attention_pruning import attention_pruning, output_tensors
from causalprune_fast.layers import MEASURED_TYPES


@dataclass
class PruneReport:
    """What :func:`prune` did."""

    params_before: int
    params_after: int
    macs_before: float
    macs_after: float
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (before, after)
    rescored: int = 0  # how many times the network was scored

    def summary(self) -> str:
        lines = [
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(self.params_before, 1):.1%}); MACs {self.macs_before:,.0f}"
            f" -> {self.macs_after:,.0f} ({self.macs_after / max(self.macs_before, 1):.1%}); "
            f"scored {self.rescored} time(s)"
        ]
        for name, (before, after) in self.channels.items():
            if before != after:
                lines.append(f"  {name}: {before} -> {after} output channels")
        return "\n".join(lines)


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if hasattr(m, "out_channels") else m.out_features


def model_output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Measured layers whose output is returned by the model as is (classifier heads)."""
    outputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, out: outputs.__setitem__(mod, out))
        for m in model.modules()
        if isinstance(m, MEASURED_TYPES)
    ]
    try:
        with torch.no_grad():
            result = model(example)
    finally:
        for h in hooks:
            h.remove()
    results = output_tensors(result)  # tensor, tuple, dict or ModelOutput
    return [m for m, out in outputs.items() if any(out is r for r in results)]


def _group_roots_in_forward_order(model, example, ignored_layers, tp) -> list[nn.Module]:
    """One root layer per Torch-Pruning group, ordered by when its first producer runs."""
    order: dict[nn.Module, int] = {}

    def record(mod, args, out) -> None:  # a forward hook must return None
        order.setdefault(mod, len(order))

    hooks = [
        m.register_forward_hook(record) for m in model.modules() if isinstance(m, MEASURED_TYPES)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=example, output_transform=output_tensors, verbose=False
    )
    roots = []
    for group in dg.get_all_groups(ignored_layers=list(ignored_layers)):
        producers = [
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler) and dep.target.module in order
        ]
        if producers:
            roots.append(min(producers, key=order.__getitem__))
    return sorted(roots, key=order.__getitem__)


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
    direction: str = "in",
    group_reduction: str = "sum",
    normalizer: str | None = None,
    **score_model_kwargs,
) -> tuple[nn.Module, PruneReport]:
    """Remove ``ratio`` of the channels of every prunable group, lowest causal score first.

    Args:
        model: the network; pruned in place and returned.
        ratio: fraction of channels to remove, in [0, 1).
        input_shape: one example's shape without the batch dimension (or ``example_input``).
        sequential: score and prune one group at a time, each on the network as pruned so far.
        global_pruning: rank channels across layers instead of within each layer
            (scores are then compared across layers; consider ``normalizer="mean"``).
        ignored_layers: layers not to prune; default the layers whose output is the model's
            output (classifier heads).
        round_to: keep channel counts multiples of this.
        iterative_steps: prune in this many steps, rescoring before each.
        direction, group_reduction, normalizer: see
            :class:`~causalprune_fast.integrations.torch_pruning.CausalImportance`.
        **score_model_kwargs: passed to :func:`causalprune_fast.score_model`.

    Returns:
        ``(model, report)``: the pruned model and a :class:`PruneReport`.
    """
    import torch_pruning as tp

    from causalprune_fast.integrations.torch_pruning import CausalImportance

    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ValueError(f"iterative_steps must be a positive int, got {iterative_steps!r}")
    if sequential and iterative_steps != 1:
        raise ValueError("sequential=True prunes group by group; iterative_steps must be 1")
    device = next(model.parameters()).device
    shape = None if input_shape is None else tuple(input_shape)
    if example_input is None:
        if shape is None:
            raise ValueError("give input_shape (or example_input)")
        example_input = torch.rand((1, *shape), device=device) * 2 - 1
    else:
        score_model_kwargs["example_input"] = example_input
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    if ignored_layers is None:
        ignored_layers = model_output_layers(model, example_input)
    for m in ignored_layers:
        if m not in names:
            raise ValueError(f"ignored_layers holds a module that is not part of the model: {m}")
    before = {names[m]: _out_channels(m) for m in model.modules() if isinstance(m, MEASURED_TYPES)}
    macs_before, params_before = tp.utils.count_ops_and_params(model, example_input)

    importance = CausalImportance(
        shape,
        direction=direction,
        group_reduction=group_reduction,
        normalizer=normalizer,
        **score_model_kwargs,
    )
    attention = attention_pruning(model)  # heads and attributes (integrations/attention_pruning)

    def make_pruner(ratio_dict=None):
        return tp.pruner.BasePruner(
            model,
            example_input,
            importance=importance,
            pruning_ratio=0.0 if ratio_dict is not None else ratio,
            pruning_ratio_dict=ratio_dict,
            global_pruning=global_pruning,
            ignored_layers=list(ignored_layers),
            round_to=round_to,
            iterative_steps=iterative_steps,
            **attention.pruner_kwargs(),
        )

    if sequential:
        # One group at a time, in forward order, each pruned by a fresh pruner whose only
        # non-zero ratio is that group's: the importance is computed on the model as pruned
        # so far (CausalImportance rescores whenever the model has changed).
        for root in _group_roots_in_forward_order(model, example_input, ignored_layers, tp):
            pruner = make_pruner({root: ratio})
            pruner.step()
            attention.sync(model, pruner)
    else:
        pruner = make_pruner()
        for _ in range(iterative_steps):
            pruner.step()
        attention.sync(model, pruner)
    macs_after, params_after = tp.utils.count_ops_and_params(model, example_input)
    report = PruneReport(
        params_before=int(params_before),
        params_after=int(params_after),
        macs_before=float(macs_before),
        macs_after=float(macs_after),
        channels={n: (c, _out_channels(model.get_submodule(n))) for n, c in before.items()},
        rescored=importance.rescored,
    )
    return model, report
