"""Measured layers and their variables (docs/method.md section 3).

A measured layer is a ConvNd (1-3 d) or Linear, or one of the layers that behave as Linear
layers which :mod:`causalprune_fast.model.discovery` adds through
:func:`causalprune_fast.model.attention.special_layers` (transformers ``Conv1D``, the virtual
projections of ``nn.MultiheadAttention``). Its input units are the columns of its unfolded
input: for Linear each input feature; for ConvNd each (input channel, kernel tap) of the
receptive field (``taps="all"``) or only the centre tap (``taps="center"``), channel-major like
``F.unfold`` and the weight layout, so a group of a grouped convolution owns a contiguous block
of columns. Its samples are (noise example, output position) pairs; the input partner of an
output position is the receptive-field element the tap names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from causalprune_fast.base.conv_geometry import ConvGeometry, conv_padding

MEASURED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

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

    # How score_model drives the layer; virtual layers (causalprune_fast.model.attention) and other
    # non-module layers override these.
    @property
    def in_dependency_graph(self) -> bool:
        """Whether Torch-Pruning's dependency graph knows this layer's module."""
        return True

    def register_forward_hook(self, hook: Callable):
        """``hook(module, args, output)`` after each call, ``args[0]`` the layer input."""
        return self.module.register_forward_hook(hook)

    def register_forward_pre_hook(self, hook: Callable):
        return self.module.register_forward_pre_hook(hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer alone on input ``x`` (local mode)."""
        return self.module(x)

    def response_point(self, finder):
        """Where the layer's outputs are measured (a ResponsePoint, found by ``finder``)."""
        return finder.find(self.name)


def output_positions(layer: Layer, output: torch.Tensor) -> int:
    """Samples one noise example contributes: output positions (conv) or tokens (linear)."""
    if layer.is_conv:
        return math.prod(output.shape[2:])
    return math.prod(output.shape[1:-1])


def _pad(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    m = layer.module
    pad = conv_padding(m, tuple(x.shape[2:]))
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
    geometry = ConvGeometry.of(m, tuple(x.shape[1:]))
    out = list(geometry.output_size)
    if rows.numel() and int(rows.max()) >= x.shape[0] * math.prod(out):
        raise ValueError(
            f"layer '{layer.name}' ({layer.kind}): its output has more positions than its "
            f"kernel, stride, dilation and padding give for an input of shape "
            f"{tuple(x.shape)} ({out}): its forward changes the input in a way that is not "
            "modelled here"
        )
    # Decompose the flat rows into (example, o_1, ..., o_D).
    coords, rest = [], rows
    for d in reversed(range(dims)):
        coords.append(rest % out[d])
        rest = torch.div(rest, out[d], rounding_mode="floor")
    coords.reverse()
    example = rest
    if taps == "center":
        tap_grid = [torch.tensor([c], device=x.device) for c in geometry.center_taps]
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
