"""The probe pass: one forward pass on noise example 0 that finds what each layer sees and which
layers are called."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from causalprune_fast.base.distributed import DistContext
from causalprune_fast.base.validation import count_non_finite
from causalprune_fast.model.functional_layers import CallLayer, module_geometry, same_tensor
from causalprune_fast.model.layers import output_positions
from causalprune_fast.scoring.hooks import Call, LayerHooks
from causalprune_fast.scoring.layer_state import LayerState
from causalprune_fast.scoring.plan import ScorePlan


def probe(
    model: nn.Module, states: list[LayerState], plan: ScorePlan, ctx: DistContext
) -> tuple[torch.Tensor, list[LayerState], dict[str, str]]:
    """One forward pass on noise example 0: every call of each layer (as a module, or a
    functional call of its weight: ``scoring/hooks.py``), with its input shape and output
    positions.

    Returns the example, the layers that are called, and why the others are not measured (also
    the functional calls whose weight is not a parameter: not measured, and said so). A layer
    with functional calls becomes a :class:`~causalprune_fast.model.functional_layers.CallLayer`
    measured as called; a layer called several times per pass is measured on the rows of all
    its calls.
    """
    seen: dict[str, list[tuple]] = {s.layer.name: [] for s in states}

    def probe_hook(s: LayerState) -> Callable:
        def hook(module, args, output):
            x = args[0]
            positions = output_positions(s.layer, output)
            seen[s.layer.name].append((tuple(x.shape[1:]), int(x.shape[0]), positions, x.dtype))

        return hook

    example = plan.input_noise(0, 1)
    error = None
    measured = {s.layer.name for s in states}
    with (
        LayerHooks(states, probe_hook, probe=model) as hooks,
        _FirstNonFinite(model, measured) as watch,
    ):
        try:
            with torch.no_grad():
                model(example)
        except Exception as e:
            error = ValueError(
                f"the model raised {hooks.where} on a noise input of shape "
                f"{tuple(example.shape)} (input_shape={plan.input_shape}, "
                f"dtype={plan.input_dtype}): {type(e).__name__}: {e}"
            )
            error.__cause__ = e
    if error is None and watch.found is not None:
        error = ValueError(watch.found)
    ctx.check(error, "in the probe forward pass")
    kept, skipped = [], dict(hooks.ignored)
    for s in states:
        calls, got = hooks.calls[s.layer.name], seen[s.layer.name]
        if not got:
            reason = getattr(s.layer, "unsupported_reason", None)
            skipped[s.layer.name] = reason or _not_called(s, model, watch.ran)
            continue
        problem = _adopt_calls(s, calls)
        if problem:
            skipped[s.layer.name] = problem
            continue
        s.calls = len(got)
        s.call_shapes = [g[0] for g in got]
        s.call_batches = [g[1] for g in got]
        s.call_positions = [g[2] for g in got]
        s.input_shape, s.input_dtype, s.positions = got[0][0], got[0][3], got[0][2]
        if s.calls > 1:  # one example's rows are pooled over the calls
            s.positions = sum(b * p for b, p in zip(s.call_batches, s.call_positions, strict=True))
        kept.append(s)
    if not kept:
        raise ValueError("no measurable layer is called in the forward pass")
    return example, kept, skipped


def _adopt_calls(s: LayerState, calls: list[Call]) -> str | None:
    """Make ``s`` measure its layer as its functional calls call it (a
    :class:`~causalprune_fast.model.functional_layers.CallLayer`); a reason where its calls differ
    in bias or geometry (stride, padding, dilation, groups) from one another or from the
    layer's own forward, which one set of rows cannot describe."""
    functional = [c for c in calls if c.function is not None]
    if not functional:
        return None
    module = s.layer.module
    first = functional[0]
    own = [c for c in calls if c.function is None]
    if own and module_geometry(module) is None:
        return (
            f"called both as a module (padding_mode={module.padding_mode!r}) and through "
            f"{first.function} on its weight: calls that differ cannot be pooled"
        )
    reference = (module.bias, module_geometry(module)) if own else (first.bias, first.geometry)
    for c in functional:
        if c.geometry != reference[1] or not same_tensor(c.bias, reference[0]):
            return (
                f"called with different arguments ({c.function} in '{c.caller or '<root>'}': "
                f"bias or stride/padding/dilation/groups differ from its other calls): calls "
                "that differ cannot be pooled"
            )
    places = sorted({f"{c.function} in '{c.caller or '<root>'}'" for c in functional})
    how = ", ".join(places)
    if own:
        how += f", and {len(own)} call(s) as a module"
    s.layer = CallLayer(s.layer.name, module, reference[0], reference[1], how)
    s.response = s.layer.response_point(None)
    s.functional_calls = len(functional)
    return None


def _not_called(s: LayerState, model: nn.Module, ran: set[str]) -> str:
    """Why a layer that is never used is not measured, naming the module that holds it where
    that module ran (neither calling the layer nor passing its weight to a functional call;
    it may use a weight computed from it, which is noted apart)."""
    parent = s.layer.name.rpartition(".")[0]
    if parent and parent in ran:
        kind = type(model.get_submodule(parent)).__name__
        return (
            f"not called in the forward pass: its parent '{parent}' ({kind}) runs without "
            "calling it or passing its weight to a functional call (F.linear, F.conv2d, ...)"
        )
    return "not called in the forward pass"


class _FirstNonFinite:
    """Forward hooks on every module that note which modules ran (``ran``) and the first one
    (in call order) whose output holds NaN or Inf, so the blame falls on the module that
    made it, not a later layer."""

    def __init__(self, model: nn.Module, measured: set[str]):
        self.model, self.measured = model, measured
        self.found: str | None = None
        self.ran: set[str] = set()
        self._handles: list = []

    def _hook(self, name: str) -> Callable:
        def hook(module, args, output):
            self.ran.add(name)
            if self.found is not None:
                return
            for t in output if isinstance(output, tuple | list) else (output,):
                if isinstance(t, torch.Tensor):
                    bad = count_non_finite(t)
                    if bad:
                        what = (
                            f"layer '{name}'"
                            if name in self.measured
                            else f"module '{name or '<root>'}' ({type(module).__name__})"
                        )
                        self.found = (
                            f"{what} produced {bad} non-finite value(s) (NaN/Inf) in its output "
                            "under the noise input (the first module to do so); check its "
                            "parameters and buffers (or input_range) for NaN, Inf or overflow"
                        )
                        return

        return hook

    def __enter__(self) -> _FirstNonFinite:
        try:
            for name, m in self.model.named_modules():
                self._handles.append(m.register_forward_hook(self._hook(name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
