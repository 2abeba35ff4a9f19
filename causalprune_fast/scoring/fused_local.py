"""Which layers the fused local kernel can measure, and with what epilogue.

The kernel (the ``local_linear_mi`` capability of a backend, see ``backends.py``) runs a Linear
layer or a 1x1 convolution on its own Philox noise and applies, before binning, an optional
per-channel affine map (an eval BatchNorm folded into scale and shift) and one activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from causalprune_fast.layers import Layer
from causalprune_fast.response import ResponsePoint

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
class FusedEpilogue:
    """The response of a layer as the fused kernel applies it: ``act(scale * y + shift)``."""

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    activation: str = "identity"


def _is_pointwise(layer: Layer) -> bool:
    m = layer.module
    if isinstance(m, nn.Linear):
        return True
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return (
            all(k == 1 for k in m.kernel_size)
            and all(st == 1 for st in m.stride)
            and not any(m._reversed_padding_repeated_twice)
            and m.groups == 1
        )
    return False


def fused_epilogue(layer: Layer, response: ResponsePoint) -> FusedEpilogue | None:
    """How the fused kernel measures ``layer`` at ``response``, or None where it cannot.

    It can for Linear layers and 1x1 convolutions (stride 1, no padding, one group) whose
    response is at most an eval BatchNorm (folded into scale and shift) and one activation the
    kernel knows."""
    if not _is_pointwise(layer):
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
    return FusedEpilogue(scale, shift, activation)
