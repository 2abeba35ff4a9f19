"""Leaving the user's model as found: snapshots of what the pruning entry points may touch.

- :func:`preserved` restores, on success and on error (KeyboardInterrupt included), every
  submodule's ``training`` flag, every parameter's ``requires_grad``, the modules' hook
  dictionaries (any hook added meanwhile, by this package or a library it calls such as
  Torch-Pruning's tracing, is removed) and the global random number generators (torch CPU, the
  CUDA devices the model lives on, Python's ``random``, and NumPy's where it is imported).
  ``score_model``, ``CausalImportance`` and ``prune()`` run inside it.
- :class:`ModelSnapshot` additionally restores every submodule's attributes (parameters,
  buffers, submodules and plain attributes such as ``out_channels``), so a structural change
  that failed half-way can be undone. Torch-Pruning replaces parameters and buffers by new
  tensors rather than changing them in place, so the snapshot keeps references, not copies.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator

import torch
import torch.nn as nn

_CONTAINERS = (dict, list, set)


def _rng_devices(model: nn.Module) -> list[int]:
    devices = {
        t.device.index if t.device.index is not None else torch.cuda.current_device()
        for t in [*model.parameters(), *model.buffers()]
        if t.device.type == "cuda"
    }
    return sorted(devices)


def _copy(container):
    if isinstance(container, dict):
        return dict(container)
    return list(container) if isinstance(container, list) else set(container)


def _refill(container, saved) -> None:
    container.clear()
    if isinstance(container, list):
        container.extend(saved)
    else:
        container.update(saved)


class ModelSnapshot:
    """Every submodule's ``__dict__`` (containers by content, refilled into the same objects
    so that hook handles held elsewhere keep working), every parameter's ``requires_grad``,
    and the attributes of the configuration objects the modules hold as ``config``."""

    def __init__(self, model: nn.Module):
        self.modules = []
        for m in model.modules():
            attrs = dict(m.__dict__)
            contents = {k: _copy(v) for k, v in attrs.items() if isinstance(v, _CONTAINERS)}
            self.modules.append((m, attrs, contents))
        self.classes = [(m, type(m)) for m in model.modules()]  # parametrizations swap it
        self.requires_grad = {p: p.requires_grad for p in model.parameters()}
        # Configuration objects the modules share (Hugging Face ``config``), updated in place
        # by pruning: their attributes.
        self.configs = {}
        for m in model.modules():
            c = m.__dict__.get("config")
            if hasattr(c, "__dict__") and not isinstance(c, nn.Module | torch.Tensor):
                self.configs.setdefault(id(c), (c, dict(vars(c))))

    def restore(self) -> None:
        """Put every module back as it was when the snapshot was taken."""
        for m, cls in self.classes:
            if type(m) is not cls:
                m.__class__ = cls
        for m, attrs, contents in self.modules:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for k, saved in contents.items():
                _refill(attrs[k], saved)
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)
        for c, attributes in self.configs.values():
            vars(c).clear()
            vars(c).update(attributes)

    def restore_flags(self) -> None:
        """After a change that replaced parameters by new (pruned) ones: every module's
        ``training`` flag, and ``requires_grad`` of the parameter now under each name."""
        for m, attrs, contents in self.modules:
            m.training = attrs["training"]
            for name, old in contents.get("_parameters", {}).items():
                new = m._parameters.get(name)
                if old is not None and new is not None:
                    new.requires_grad_(self.requires_grad[old])


class _Flags:
    """Training flags, requires_grad and hook dictionaries (by content) of a model."""

    HOOKS = (
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_backward_hooks",
        "_backward_pre_hooks",
    )

    def __init__(self, model: nn.Module):
        self.training = [(m, m.training) for m in model.modules()]
        self.requires_grad = {p: p.requires_grad for p in model.parameters()}
        self.hooks = [
            (d, dict(d))
            for m in model.modules()
            for name in self.HOOKS
            if isinstance(d := m.__dict__.get(name), dict)
        ]

    def restore(self) -> None:
        for m, flag in self.training:
            m.training = flag
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)
        for d, saved in self.hooks:
            if d != saved:
                _refill(d, saved)


def rng_forked(model: nn.Module):
    """``torch.random.fork_rng`` over the CPU and the CUDA devices ``model`` lives on."""
    return torch.random.fork_rng(devices=_rng_devices(model))


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Run the body, then restore the model's training flags, ``requires_grad``, hooks and the
    global RNG states, whether the body succeeded or raised (KeyboardInterrupt included)."""
    flags = _Flags(model)
    python_rng = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_rng = numpy.random.get_state() if numpy is not None else None
    with rng_forked(model):
        try:
            yield
        finally:
            flags.restore()
            random.setstate(python_rng)
            if numpy_rng is not None:
                numpy.random.set_state(numpy_rng)


@contextlib.contextmanager
def traced_with_grad(model: nn.Module) -> Iterator[None]:
    """Run the body with gradients on and every parameter requiring them, then put each
    parameter's ``requires_grad`` back (also when the body raised). Torch-Pruning builds its
    dependency graph from autograd: under ``torch.no_grad()``, or with frozen parameters (a
    model frozen for inference), the layers they feed drop out of the graph and their channel
    groups with them."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        with torch.enable_grad():
            for p in flags:
                p.requires_grad_(True)
            yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
