"""Which layers of a model are measured, which are not and why, and the ``layers`` filter.

Measured: ConvNd (1-3 d) and Linear modules (:mod:`causalprune_fast.model.layers`), plus the
layers that :func:`causalprune_fast.model.attention.special_layers` adds (transformers
``Conv1D``, the virtual projections of ``nn.MultiheadAttention``). Every other module with
parameters of its own (but the norms, RMSNorms and PReLUs that belong to a channel's group) is
listed with the reason it is not scored, so nothing is dropped silently.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping

import torch.nn as nn

from causalprune_fast.model.attention import special_layers
from causalprune_fast.model.families import is_rmsnorm
from causalprune_fast.model.layers import MEASURED_TYPES, Layer

# Modules with weights that are parts of a channel's group, not layers of their own (and
# RMSNorms, see families.is_rmsnorm: Torch-Pruning prunes their weights with their
# channels as unwrapped parameters).
_GROUP_MEMBERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU)


def _matches(name: str, spec: str | re.Pattern | Callable) -> bool:
    if isinstance(spec, re.Pattern):
        return spec.fullmatch(name) is not None
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    try:
        return bool(spec(name))
    except Exception as e:
        raise ValueError(
            f"layers: the callable {spec!r} raised on the layer name {name!r}: "
            f"{type(e).__name__}: {e}"
        ) from e


def check_layer_filter(layers: object) -> list[str | re.Pattern | Callable]:
    """The items of a ``layers`` filter, checked: strings compile as regular expressions."""
    if isinstance(layers, str | re.Pattern) or callable(layers):
        specs = [layers]
    elif isinstance(layers, Iterable) and not isinstance(layers, bytes | Mapping):
        specs = list(layers)
    else:
        raise ValueError(
            f"layers must be a name or regular expression (str), a compiled regex, a callable "
            f"name -> bool, or a list of those; got {type(layers).__name__} {layers!r}"
        )
    if not specs:
        raise ValueError("layers is an empty list: it selects no layer")
    for spec in specs:
        if isinstance(spec, str):
            try:
                re.compile(spec)
            except re.error as e:
                raise ValueError(
                    f"layers: {spec!r} is not a valid regular expression ({e}); strings are "
                    f"matched as regular expressions against the whole qualified name"
                ) from None
        elif not (isinstance(spec, re.Pattern) or callable(spec)):
            raise ValueError(
                f"layers: {spec!r} ({type(spec).__name__}) is neither a name or regular "
                f"expression (str), a compiled regex, nor a callable name -> bool"
            )
    return specs


def find_layers(
    model: nn.Module, layers: str | Iterable | Callable | re.Pattern | None = None
) -> tuple[list[Layer], dict[str, str]]:
    """The measured layers of ``model`` (in module order) and the modules that cannot be
    measured, with the reason.

    ``layers`` filters by qualified name: a string is a regular expression that must match the
    whole name (``re.fullmatch``; a plain name such as ``"layer1.0.conv1"`` matches itself,
    its dots matching any character), a compiled regex likewise, a callable ``name -> bool``,
    or a list of those (a layer is kept if any item matches). ValueError if ``layers`` is of
    another type, holds an invalid regular expression, or matches no measurable layer (the
    message lists the nearest layer names).
    """
    specs = None if layers is None else check_layer_filter(layers)
    found, unsupported = [], {}
    skip: set[str] = set()  # children that a special layer stands for (MHA's out_proj)
    for name, module in model.named_modules():
        if name in skip:
            continue
        special = special_layers(name, module)
        if special is not None:
            found += special.layers
            skip |= special.skip
            unsupported.update(special.unsupported)
            continue
        if isinstance(module, MEASURED_TYPES):
            found.append(Layer(name, module))
            continue
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if own and not isinstance(module, _GROUP_MEMBERS) and not is_rmsnorm(module):
            label = name or "<root>"
            unsupported[label] = (
                f"{type(module).__name__} is not a measured layer type (ConvNd, Linear); its "
                f"own parameters ({', '.join(own)}) are not scored"
            )
    if specs is not None:
        kept = [layer for layer in found if any(_matches(layer.name, s) for s in specs)]
        if not kept:
            all_names = [layer.name for layer in found]
            near: list[str] = []
            for spec in specs:
                if isinstance(spec, str | re.Pattern):
                    text = spec if isinstance(spec, str) else spec.pattern
                    near += difflib.get_close_matches(text, all_names, n=5, cutoff=0.4)
            near = list(dict.fromkeys(near)) or all_names[:8]
            more = " ..." if len(all_names) > len(near) else ""
            raise ValueError(
                f"layers={layers!r} matches no Conv/Linear layer of the model; the nearest "
                f"layer names are: {', '.join(near)}{more} (strings are regular expressions "
                f"matched against the whole name)"
            )
        found = kept
    return found, unsupported


# ----------------------------------------------------------------------------- samples
