"""Forward hooks on the measured layers, always removed, and where a forward pass is (the
user's model and process state is restored by ``_state.preserved``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from causalprune_fast.scoring.layer_state import LayerState

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
