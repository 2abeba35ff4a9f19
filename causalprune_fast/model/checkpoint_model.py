"""A Hugging Face model built without its weights, filled one module at a time from a
checkpoint directory (:class:`~causalprune_fast.base.checkpoint_io.Checkpoint`).

:func:`empty_model` builds the model class that ``config.json`` names (``architectures``) with
every parameter on the ``meta`` device (no memory) and every buffer real, as accelerate's
``init_empty_weights(include_buffers=False)`` does: buffers that a checkpoint does not hold
(rotary ``inv_freq``, GPT-2's causal mask in older versions) are computed by the model's own
constructor, exactly as when the model is built in memory. :class:`CheckpointModel` gives one
module's parameters (and saved buffers) their tensors from the checkpoint (``load``) and puts
them back on ``meta`` (``free``). Tied parameters (``lm_head.weight`` sharing the input
embedding) are found by identity when the model is built and read under whichever name the
checkpoint holds.

Nothing here imports ``transformers`` at module level: the package works without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from causalprune_fast.base.checkpoint_io import Checkpoint


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered meanwhile is created on ``meta``; buffers stay real."""
    original = nn.Module.register_parameter

    def register_parameter(module, name, param):
        original(module, name, param)
        if param is not None and not param.is_meta:
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(
                p.detach().to("meta"), requires_grad=p.requires_grad
            )

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def model_class(ckpt: Checkpoint):
    """The transformers class that ``config.json``'s ``architectures`` names."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "a Hugging Face checkpoint needs transformers: pip install causalprune_fast[hf]"
        ) from e
    archs = ckpt.config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise ValueError(
            f"{str(ckpt.path / 'config.json')!r} names no model class ('architectures'), so "
            "the model cannot be built from it"
        )
    cls = getattr(transformers, archs[0], None)
    if cls is None:
        raise ValueError(
            f"{str(ckpt.path / 'config.json')!r}: transformers {transformers.__version__} has no "
            f"model class {archs[0]!r}"
        )
    return cls


def empty_model(ckpt: Checkpoint, dtype: torch.dtype | None = None, config=None) -> nn.Module:
    """The model of ``ckpt``, in eval mode, parameters on ``meta`` (see the module docstring).

    ``dtype``: the parameters' dtype; default the dtype the checkpoint stores its floating
    point weights in. ``config``: a config object to build it from (default: its
    ``config.json``). The global RNG is left as found.
    """
    import transformers

    cls = model_class(ckpt)
    if config is None:
        config = transformers.AutoConfig.from_pretrained(str(ckpt.path))
    if dtype is None:
        floats = [i.dtype for i in ckpt.tensors.values() if i.dtype.is_floating_point]
        dtype = max(set(floats), key=floats.count) if floats else torch.float32
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), _parameters_on_meta():
        torch.set_default_dtype(dtype)
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(previous)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class CheckpointModel:
    """The model of a checkpoint built by :func:`empty_model`, whose modules are filled from
    the checkpoint (:meth:`load`) and emptied again (:meth:`free`) one at a time.

    Tied parameters are recorded when the model is built (their identity is lost once one of
    them is loaded): each parameter's aliases are every name the same tensor has.
    """

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype | None = None, config=None):
        self.ckpt = ckpt
        self.model = empty_model(ckpt, dtype, config)
        self.dtype = dtype
        by_id: dict[int, list[str]] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            by_id.setdefault(id(p), []).append(name)
        self.aliases = {
            name: by_id[id(p)] for name, p in self.model.named_parameters(remove_duplicate=False)
        }

    def names(self, prefix: str) -> list[str]:
        """Qualified names of the parameters under module ``prefix`` (``""``: all)."""
        head = f"{prefix}." if prefix else ""
        return [n for n in self.aliases if not prefix or n.startswith(head)]

    def stored_name(self, name: str) -> str:
        """The name under which the checkpoint holds parameter ``name`` (or a tied alias)."""
        names = self.aliases[name]
        for n in [name, *names]:
            if n in self.ckpt.tensors:
                return n
        others = [n for n in names if n != name]
        raise ValueError(
            f"checkpoint {str(self.ckpt.path)!r} lacks the tensor {name!r}"
            + (f" (and its tied alias {', '.join(others)})" if others else "")
        )

    def nbytes(self, names: list[str]) -> int:
        """Bytes the parameters ``names`` take once loaded (in ``dtype`` if given)."""
        total = 0
        for name in names:
            info = self.ckpt.tensors[self.stored_name(name)]
            size = info.dtype.itemsize
            if self.dtype is not None and info.dtype.is_floating_point:
                size = self.dtype.itemsize
            total += info.nbytes // info.dtype.itemsize * size
        return total

    def check_complete(self) -> None:
        """Every parameter is in the checkpoint with its shape (ValueError naming the first
        that is not), before anything is loaded."""
        for name in self.aliases:
            key = self.stored_name(name)
            info = self.ckpt.tensors[key]
            want = tuple(self.model.get_parameter(name).shape)
            if info.shape != want:
                raise ValueError(
                    f"checkpoint {str(self.ckpt.path)!r}: tensor {key!r} has shape "
                    f"{info.shape}, but the model that config.json describes needs {want}"
                )

    def load(self, prefix: str, device: torch.device) -> None:
        """Give the parameters under module ``prefix`` their tensors from the checkpoint on
        ``device`` (cast to ``dtype`` where given); its buffers are moved there, and read
        from the checkpoint where it saved them."""
        self.load_parameters(self.names(prefix), device)
        module = self.model.get_submodule(prefix) if prefix else self.model
        head = f"{prefix}." if prefix else ""
        for name, buf in list(module.named_buffers()):
            owner, _, leaf = name.rpartition(".")
            sub = module.get_submodule(owner) if owner else module
            if head + name in self.ckpt.tensors:
                sub._buffers[leaf] = self.ckpt.load([head + name], device)[head + name]
            elif buf.device != device:
                sub._buffers[leaf] = buf.to(device)

    def load_parameters(self, names: list[str], device: torch.device) -> None:
        """Give the parameters ``names`` (qualified) their tensors from the checkpoint."""
        wanted = {name: self.stored_name(name) for name in names}
        tensors = self.ckpt.load(set(wanted.values()), device, self.dtype)
        params = {key: nn.Parameter(t, requires_grad=False) for key, t in tensors.items()}
        for name, key in wanted.items():  # tied names loaded together share one Parameter
            owner, _, leaf = name.rpartition(".")
            module = self.model.get_submodule(owner) if owner else self.model
            module._parameters[leaf] = params[key]

    def free_parameters(self, names: list[str]) -> None:
        """Put the parameters ``names`` back on ``meta``."""
        for name in names:
            owner, _, leaf = name.rpartition(".")
            module = self.model.get_submodule(owner) if owner else self.model
            p = module._parameters[leaf]
            if p is not None and not p.is_meta:
                module._parameters[leaf] = nn.Parameter(p.detach().to("meta"), requires_grad=False)

    def free(self, prefix: str) -> None:
        """Put the parameters under module ``prefix`` back on ``meta`` (memory freed)."""
        module = self.model.get_submodule(prefix) if prefix else self.model
        for sub in module.modules():
            for leaf, p in list(sub._parameters.items()):
                if p is not None and not p.is_meta:
                    sub._parameters[leaf] = nn.Parameter(p.detach().to("meta"), requires_grad=False)
