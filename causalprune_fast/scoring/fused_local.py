"""Which layers the fused local kernels can measure, and the response they apply.

Two backend capabilities (``backends.py``): ``local_linear_mi`` runs a Linear layer or a 1x1
convolution (stride 1, no padding, one group) on its own Philox noise; ``local_conv_mi`` any
other Conv1d / Conv2d / Conv3d with zero padding (kernel size, stride, padding, dilation and
groups as they are), on patch rows. Both apply, before binning, an optional per-channel affine
map (an eval BatchNorm folded into scale and shift) and one activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from causalprune_fast.model.layers import Layer
from causalprune_fast.model.response import ResponsePoint

_ACTIVATION_MODULES = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Hardswish: "hardswish",
}
_ACTIVATION_FUNCTIONS = {"relu", "relu6", "silu", "sigmoid", "tanh", "hardswish", "gelu"}


@dataclass(frozen=True)
class FusedResponse:
    """The response of a layer as the fused kernel applies it: ``act(scale * y + shift)``."""

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    activation: str = "identity"


def _is_pointwise(m: nn.Module) -> bool:
    return (
        all(k == 1 for k in m.kernel_size)
        and all(st == 1 for st in m.stride)
        and not any(m._reversed_padding_repeated_twice)
        and m.groups == 1
    )


def fused_capability(layer: Layer) -> str | None:
    """The backend capability that measures ``layer`` fused (``"local_linear_mi"`` or
    ``"local_conv_mi"``), or None where neither can (e.g. reflect / replicate / circular
    padding, whose padded taps copy other inputs)."""
    m = layer.module
    if isinstance(m, nn.Linear):
        return "local_linear_mi"
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        if _is_pointwise(m):
            return "local_linear_mi"
        return "local_conv_mi" if m.padding_mode == "zeros" else None
    return None


def fused_response(layer: Layer, response: ResponsePoint) -> FusedResponse | None:
    """How the fused kernel measures ``layer`` at ``response``, or None where it cannot.

    It can for the layers of :func:`fused_capability` whose response is at most an eval
    BatchNorm (folded into scale and shift) and one activation the kernels know."""
    if fused_capability(layer) is None:
        return None
    scale = shift = None
    activation = "identity"
    for k, (label, fn) in enumerate(response.steps):
        last = k == len(response.steps) - 1
        if isinstance(fn, nn.modules.batchnorm._BatchNorm) and k == 0 and fn.track_running_stats:
            inv = torch.rsqrt(fn.running_var.double() + fn.eps)
            w = fn.weight.double() if fn.affine else torch.ones_like(inv)
            b = fn.bias.double() if fn.affine else torch.zeros_like(inv)
            scale = (w * inv).float()
            shift = (b - fn.running_mean.double() * w * inv).float()
        elif last and type(fn) in _ACTIVATION_MODULES:
            activation = _ACTIVATION_MODULES[type(fn)]
        elif last and isinstance(fn, nn.GELU) and fn.approximate == "none":
            activation = "gelu"
        elif last and not isinstance(fn, nn.Module) and label in _ACTIVATION_FUNCTIONS:
            activation = label
        else:
            return None
    return FusedResponse(scale, shift, activation)
