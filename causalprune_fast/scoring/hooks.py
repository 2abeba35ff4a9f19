"""Every call of the measured layers during a forward pass, delivered to per-layer hooks and
always removed afterwards (the user's model and process state is restored by
``_state.preserved``).

A layer is called as a module (a forward hook on it sees the call) or through its weight by a
functional call of the module that holds it (``F.linear(x, self.qkv.weight, ...)``; see
:mod:`causalprune_fast.model.functional_layers`). The second kind is seen by
:class:`FunctionCalls`, a ``torch.overrides.TorchFunctionMode`` that is active only while
the model runs inside :class:`LayerHooks`, and only where a layer needs it: in the probe pass
for every layer (to find the calls), afterwards only for the layers with functional calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from causalprune_fast.model.functional_layers import FUNCTIONS, LinearMap, linear_maps
from causalprune_fast.model.layers import MEASURED_TYPES
from causalprune_fast.scoring.layer_state import LayerState

BEFORE_FIRST = "before the first measured layer"


@dataclass(frozen=True)
class Call:
    """One call of a measured layer in the probe pass: as a module (``function`` None), or a
    linear map of a functional call (``function``, its bias and geometry) made while the
    module ``caller`` (a qualified name) ran."""

    function: str | None = None
    caller: str = ""
    bias: torch.Tensor | None = None
    geometry: tuple = ()


class FunctionCalls(TorchFunctionMode):
    """While active, each linear map of a call of one of the functions of
    :data:`~causalprune_fast.model.functional_layers.FUNCTIONS` whose weight is (by identity) the
    weight of a layer in ``targets`` goes to ``targets[id(weight)][1](map)``, but where the
    call is that layer's own forward (its module's hook sees it). With ``note_unknown``, maps
    whose weight is not a parameter of the model (a weight computed in the forward pass, a
    slice or transpose of one), outside any measured layer's own forward, are noted in
    ``ignored`` (``{"<caller>: <function>": reason}``): they are not measured, and never
    attributed to a layer."""

    def __init__(
        self,
        targets: dict[int, tuple[torch.Tensor, Callable[[LinearMap], None]]],
        parameters: set[int] | None = None,
        caller: Callable[[], str] = lambda: "",
    ):
        super().__init__()
        self.targets, self.parameters, self.caller = targets, parameters, caller
        self.own: dict[int, int] = {}  # id(weight) -> its module's forward calls running
        self.paused = 0  # our hooks are running: their functional calls are our own
        self.ignored: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # this mode is off inside (torch pops it while we run)
        if self.paused or func not in FUNCTIONS:
            return out
        for m in linear_maps(func, args, kwargs, out):
            key = id(m.weight)
            target = self.targets.get(key)
            if target is not None and target[0] is m.weight:
                if not self.own.get(key):
                    with self.pause():
                        target[1](m)
            elif self.parameters is not None and key not in self.parameters:
                if not any(self.own.values()):
                    where = self.caller() or "<root>"
                    self.ignored[f"{where}: {m.function}"] = (
                        f"{m.function} called with a weight of shape {tuple(m.weight.shape)} "
                        "that is not a parameter of any module (a computed or sliced weight): "
                        "not measured"
                    )
        return out

    def pause(self) -> _Paused:
        return _Paused(self)


class _Paused:
    def __init__(self, mode: FunctionCalls):
        self.mode = mode

    def __enter__(self) -> None:
        self.mode.paused += 1

    def __exit__(self, *exc) -> None:
        self.mode.paused -= 1


class _Callers:
    """The qualified name of the innermost module running (forward pre-hooks and hooks on
    ``modules``, a model's ``named_modules()``)."""

    def __init__(self, modules: list[tuple[str, nn.Module]]):
        self.stack: list[str] = []
        self.handles = []
        for name, m in modules:
            self.handles.append(m.register_forward_pre_hook(self._push(name)))
            self.handles.append(m.register_forward_hook(self._pop, always_call=True))

    def _push(self, name: str) -> Callable:
        def hook(module, args):
            self.stack.append(name)

        return hook

    def _pop(self, module, args, output) -> None:
        if self.stack:
            self.stack.pop()

    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class LayerHooks:
    """``with LayerHooks(states, hook_for) as hooks:`` delivers every call of every layer of
    ``states`` to ``hook_for(state)`` as ``hook(module, (layer_input,), layer_output)`` and
    removes everything on exit (also on an error or a KeyboardInterrupt). ``hooks.where``
    says which layer the last forward pass was in.

    ``probe=model``: the probe pass. Functional calls (:class:`FunctionCalls`) of the weight of
    every layer that is a Linear or ConvNd module are watched, ``hooks.calls[name]`` lists
    each layer's calls (:class:`Call`, naming the module that made each functional call), and
    functional calls with weights that are not parameters of ``model`` are noted in
    ``hooks.ignored``. Otherwise only the layers with functional calls in the probe
    (``state.functional_calls``) are watched."""

    def __init__(
        self,
        states: Iterable[LayerState],
        hook_for: Callable[[LayerState], Callable],
        *,
        probe: nn.Module | None = None,
    ):
        self.states = list(states)
        self.hook_for = hook_for
        self.probing = probe is not None
        # what the probe needs of the model (the model itself is not held: torch.compile
        # traces these hooks, and must not meet the module it compiles)
        self._parameters = None if probe is None else {id(p) for p in probe.parameters()}
        self._modules = None if probe is None else list(probe.named_modules())
        self.where = BEFORE_FIRST
        self.calls: dict[str, list[Call]] = {s.layer.name: [] for s in self.states}
        self.ignored: dict[str, str] = {}
        self._handles: list = []
        self._mode: FunctionCalls | None = None
        self._entered = False
        self._callers: _Callers | None = None

    def _enter_layer(self, name: str) -> Callable:
        def pre_hook(module, args):
            self.where = f"at layer '{name}'"

        return pre_hook

    def _module_hook(self, s: LayerState, hook: Callable) -> Callable:
        name = s.layer.name

        def module_hook(module, args, output):
            if self.probing:
                self.calls[name].append(Call())
            if self._mode is None:
                return hook(module, args, output)
            with self._mode.pause():
                return hook(module, args, output)

        return module_hook

    def _map_hook(self, s: LayerState, hook: Callable) -> Callable:
        name = s.layer.name
        owner = getattr(s.layer, "owner", s.layer.module)

        def map_hook(m: LinearMap) -> None:
            if self._callers is not None:
                call = Call(m.function, self._callers.current(), m.bias, m.geometry)
                self.calls[name].append(call)
            self.where = f"at layer '{name}' ({m.function})"
            hook(owner, (m.input(),), m.output)

        return map_hook

    def _watched(self) -> list[LayerState]:
        if self.probing:
            return [s for s in self.states if isinstance(s.layer.module, MEASURED_TYPES)]
        return [s for s in self.states if s.functional_calls]

    def __enter__(self) -> LayerHooks:
        try:
            watched = self._watched()
            if watched or self.probing:
                caller = lambda: ""  # noqa: E731
                if self.probing:
                    self._callers = _Callers(self._modules)
                    caller = self._callers.current
                self._mode = FunctionCalls({}, self._parameters, caller)
            for s in self.states:
                hook = self.hook_for(s)
                # a layer that is not a module of its own (nn.MultiheadAttention's projections)
                # computes its input in its host's hook: its functional calls are ours
                bracket = self._mode is not None and not isinstance(s.layer.module, MEASURED_TYPES)
                if bracket:
                    self._handles.append(s.layer.module.register_forward_hook(self._pause))
                self._handles.append(s.layer.register_forward_hook(self._module_hook(s, hook)))
                if bracket:
                    self._handles.append(
                        s.layer.module.register_forward_hook(self._resume, always_call=True)
                    )
                self._handles.append(
                    s.layer.register_forward_pre_hook(self._enter_layer(s.layer.name))
                )
                if s in watched:
                    w = s.layer.module.weight
                    self._mode.targets[id(w)] = (w, self._map_hook(s, hook))
            if self._mode is not None:
                for s in watched:
                    self._own_forward(s, self._mode)
                self._mode.__enter__()
                self._entered = True
        except BaseException:
            self.remove()
            raise
        return self

    def _pause(self, module, args, output) -> None:
        self._mode.paused += 1

    def _resume(self, module, args, output) -> None:
        self._mode.paused = max(0, self._mode.paused - 1)

    def _own_forward(self, s: LayerState, mode: FunctionCalls) -> None:
        """Count the layer's own forward calls, in which its functional calls are its own."""
        owner = getattr(s.layer, "owner", s.layer.module)
        key = id(s.layer.module.weight)

        def enter(module, args):
            mode.own[key] = mode.own.get(key, 0) + 1

        def leave(module, args, output):
            mode.own[key] -= 1

        self._handles.append(owner.register_forward_pre_hook(enter))
        self._handles.append(owner.register_forward_hook(leave, always_call=True))

    def remove(self) -> None:
        if self._mode is not None:
            self.ignored = dict(self._mode.ignored)
            mode, self._mode = self._mode, None
            if self._entered:
                self._entered = False
                mode.__exit__(None, None, None)
        if self._callers is not None:
            self._callers.remove()
            self._callers = None
        for h in self._handles:
            h.remove()
        self._handles = []

    def __exit__(self, *exc) -> None:
        self.remove()
