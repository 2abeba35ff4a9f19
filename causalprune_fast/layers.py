"""Prunable layers and their variables (METHOD.md section 3).

A measured layer is a ConvNd (1-3 d) or Linear. Its input units are the columns of its
unfolded input: for Linear each input feature; for ConvNd each (input channel, kernel tap) of
the receptive field (``taps="all"``) or only the centre tap (``taps="center"``), channel-major
like ``F.unfold`` and the weight layout, so a group of a grouped convolution owns a contiguous
block of columns. Its samples are (noise example, output position) pairs; the input partner of
an output position is the receptive-field element the tap names.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

MEASURED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Modules with weights that are parts of a channel's group, not layers of their own.
_GROUP_MEMBERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU)

TAPS = ("all", "center")


@dataclass
class Layer:
    """One measured layer: its qualified name and module."""

    name: str
    module: nn.Module

    @property
    def kind(self) -> str:
        return type(self.module).__name__

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv1d | nn.Conv2d | nn.Conv3d)

    @property
    def groups(self) -> int:
        return self.module.groups if self.is_conv else 1

    @property
    def in_channels(self) -> int:
        return self.module.in_channels if self.is_conv else self.module.in_features

    @property
    def out_channels(self) -> int:
        return self.module.out_channels if self.is_conv else self.module.out_features

    def taps_per_channel(self, taps: str) -> int:
        if not self.is_conv or taps == "center":
            return 1
        return math.prod(self.module.kernel_size)

    def input_units(self, taps: str) -> int:
        return self.in_channels * self.taps_per_channel(taps)


def _matches(name: str, spec: str | re.Pattern | Callable) -> bool:
    if isinstance(spec, re.Pattern):
        return spec.fullmatch(name) is not None
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return bool(spec(name))


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
    for name, module in model.named_modules():
        if isinstance(module, MEASURED_TYPES):
            found.append(Layer(name, module))
            continue
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if own and not isinstance(module, _GROUP_MEMBERS):
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


def output_positions(layer: Layer, output: torch.Tensor) -> int:
    """Samples one noise example contributes: output positions (conv) or tokens (linear)."""
    if layer.is_conv:
        return math.prod(output.shape[2:])
    return math.prod(output.shape[1:-1])


def _pad(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    m = layer.module
    pad = m._reversed_padding_repeated_twice
    if not any(pad):
        return x
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    return F.pad(x, pad, mode=mode)


def input_rows(layer: Layer, x: torch.Tensor, rows: torch.Tensor, taps: str) -> torch.Tensor:
    """Input units ``[len(rows), Cx]`` at the flat sample indices ``rows``.

    For a convolution, row ``r`` is output position ``r`` of ``[N, *out_spatial]`` (row-major)
    and its units are the padded input at ``o * stride + tap * dilation`` for every tap (or the
    centre tap), ordered (channel, tap) like ``F.unfold``.
    """
    if not layer.is_conv:
        return x.reshape(-1, x.shape[-1])[rows]
    m = layer.module
    xp = _pad(layer, x)
    dims = xp.dim() - 2
    padded = xp.shape[2:]
    out = [
        (padded[d] - m.dilation[d] * (m.kernel_size[d] - 1) - 1) // m.stride[d] + 1
        for d in range(dims)
    ]
    # Decompose the flat rows into (example, o_1, ..., o_D).
    coords, rest = [], rows
    for d in reversed(range(dims)):
        coords.append(rest % out[d])
        rest = torch.div(rest, out[d], rounding_mode="floor")
    coords.reverse()
    example = rest
    if taps == "center":
        tap_grid = [torch.tensor([(k - 1) // 2], device=x.device) for k in m.kernel_size]
    else:
        tap_grid = [torch.arange(k, device=x.device) for k in m.kernel_size]
    mesh = torch.meshgrid(*tap_grid, indexing="ij")  # each [k_1, ..., k_D]
    idx = [example[:, None]]
    for d in range(dims):
        tap = mesh[d].reshape(1, -1)
        idx.append(coords[d][:, None] * m.stride[d] + tap * m.dilation[d])
    channels_last = xp.movedim(1, -1)  # [N, *padded, Cin]
    units = channels_last[tuple(idx)]  # [rows, taps, Cin]
    return units.transpose(1, 2).reshape(rows.shape[0], -1)


def output_rows(layer: Layer, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Output units ``[len(rows), Cout]`` of the response at the flat sample indices."""
    if layer.is_conv:
        y = y.movedim(1, -1)
    return y.reshape(-1, y.shape[-1])[rows]
