"""Forward hooks on the measured layers, always removed, and where a forward pass is; and the
user's model and process state, restored whatever happens."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from causalprune_fast.scoring.state import LayerState

BEFORE_FIRST = "before the first measured layer"


class LayerHooks:
    """``with LayerHooks(states, hook_for) as hooks:`` puts ``hook_for(state)`` as a forward
    hook on every layer of ``states`` and removes them all on exit (also on an error or a
    KeyboardInterrupt). ``hooks.where`` says which layer the last forward pass was in."""

    def __init__(self, states: Iterable[LayerState], hook_for: Callable[[LayerState], Callable]):
        self.states = list(states)
        self.hook_for = hook_for
        self.where = BEFORE_FIRST
        self._handles: list = []

    def _enter_layer(self, name: str) -> Callable:
        def pre_hook(module, args):
            self.where = f"at layer '{name}'"

        return pre_hook

    def __enter__(self) -> LayerHooks:
        try:
            for s in self.states:
                self._handles.append(s.layer.register_forward_hook(self.hook_for(s)))
                self._handles.append(
                    s.layer.register_forward_pre_hook(self._enter_layer(s.layer.name))
                )
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __exit__(self, *exc) -> None:
        self.remove()


class PreservedState:
    """``with PreservedState(model):`` restores, on exit (success, error or
    KeyboardInterrupt), what scoring may change: every submodule's own train/eval flag, every
    parameter's ``requires_grad``, the hooks of every submodule (any hook added meanwhile, by
    this package or by a library it calls, such as Torch-Pruning's tracing, is removed), and
    the global random number generators (torch CPU, CUDA where initialised, Python's
    ``random``, and NumPy's where NumPy is imported)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> PreservedState:
        self.training = [(m, m.training) for m in self.model.modules()]
        self.requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        self.hooks = [(d, set(d)) for m in self.model.modules() for d in _hook_dicts(m)]
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.python_rng = random.getstate()
        numpy = sys.modules.get("numpy")
        self.numpy_rng = numpy.random.get_state() if numpy is not None else None
        return self

    def __exit__(self, *exc) -> None:
        for m, flag in self.training:
            m.training = flag
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)
        for hooks, before in self.hooks:
            for key in set(hooks) - before:
                del hooks[key]
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.python_rng)
        if self.numpy_rng is not None:
            sys.modules["numpy"].random.set_state(self.numpy_rng)


def _hook_dicts(m: nn.Module) -> list[dict]:
    """The module's own hook registries (``_forward_hooks``, ``_forward_pre_hooks``, ...)."""
    return [d for k, d in vars(m).items() if "_hooks" in k and isinstance(d, dict)]
