"""The probe pass: one forward pass on noise example 0 that finds what each layer sees and which
layers are called."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from causalprune_fast.base.distributed import DistContext
from causalprune_fast.base.validation import count_non_finite
from causalprune_fast.model.layers import output_positions
from causalprune_fast.scoring.hooks import LayerHooks
from causalprune_fast.scoring.layer_state import LayerState
from causalprune_fast.scoring.plan import ScorePlan


def probe(
    model: nn.Module, states: list[LayerState], plan: ScorePlan, ctx: DistContext
) -> tuple[torch.Tensor, list[LayerState], dict[str, str]]:
    """One forward pass on noise example 0: each layer's input shape and output positions.

    Returns the example, the layers called exactly once, and why the others are not measured.
    """
    calls = {s.layer.name: 0 for s in states}

    def probe_hook(s: LayerState) -> Callable:
        def hook(module, args, output):
            calls[s.layer.name] += 1
            s.input_shape = tuple(args[0].shape[1:])
            s.input_dtype = args[0].dtype
            s.positions = output_positions(s.layer, output)

        return hook

    example = plan.input_noise(0, 1)
    error = None
    measured = {s.layer.name for s in states}
    with LayerHooks(states, probe_hook) as hooks, _FirstNonFinite(model, measured) as watch:
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
    kept, skipped = [], {}
    for s in states:
        n = calls[s.layer.name]
        if n == 1:
            kept.append(s)
        else:
            skipped[s.layer.name] = (
                (getattr(s.layer, "unsupported_reason", None) or _not_called(s, model, watch.ran))
                if n == 0
                else f"called {n} times per forward pass (shared weights are not supported)"
            )
    if not kept:
        raise ValueError("no measurable layer is called exactly once in the forward pass")
    return example, kept, skipped


def _not_called(s: LayerState, model: nn.Module, ran: set[str]) -> str:
    """Why a layer whose forward never ran is not measured, naming the module that holds it
    where that module ran: it may use the layer's weights itself (``F.linear(x,
    self.qkv.weight)``, as torchvision's Swin attention does), which no forward hook sees."""
    parent = s.layer.name.rpartition(".")[0]
    if parent and parent in ran:
        kind = type(model.get_submodule(parent)).__name__
        return (
            f"not called in the forward pass: its parent '{parent}' ({kind}) runs without "
            "calling it; where the parent uses its weights directly (a functional call such as "
            "F.linear(x, layer.weight)), no forward hook can see the layer"
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
