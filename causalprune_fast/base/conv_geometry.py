"""A convolution's geometry on one input shape, in one place: the padding its forward applies
(:func:`conv_padding`, timm's dynamic "SAME" padding included), its output size, taps and
centre tap (:class:`ConvGeometry`). The unfused rows (``model/layers.py``), local mode's patch
rows (``scoring/sampling.py``) and the fused convolution kernel
(``estimator/triton/local_conv.py``) all read it from here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

#: Convolutions whose forward pads the input itself, TensorFlow "SAME" style, and then
#: convolves without padding (timm's ``Conv2dSame``, used by its ``tf_`` models such as
#: ``maxvit_tiny_tf_224`` and ``tf_efficientnet_*``): their ``padding`` attribute is 0.
DYNAMIC_SAME_CONVS = frozenset({"Conv2dSame", "Conv2dSameExport"})


def conv_padding(m: nn.Module, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """The padding convolution ``m`` applies to an input of spatial size ``spatial``, in
    ``F.pad`` order (last dimension first, ``(left, right)`` pairs), like
    ``m._reversed_padding_repeated_twice``; for the dynamic "SAME" convolutions
    (:data:`DYNAMIC_SAME_CONVS`) the padding their forward adds: ``max((ceil(n / s) - 1) * s
    + (k - 1) * d + 1 - n, 0)`` per dimension, half (rounded down) on the left."""
    if type(m).__name__ not in DYNAMIC_SAME_CONVS:
        return tuple(m._reversed_padding_repeated_twice)
    pad: list[int] = []
    for d in reversed(range(len(m.kernel_size))):
        n, s, k, dil = spatial[d], m.stride[d], m.kernel_size[d], m.dilation[d]
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * dil + 1 - n, 0)
        pad += [total // 2, total - total // 2]
    return tuple(pad)


@dataclass(frozen=True)
class ConvGeometry:
    """Spatial geometry of a convolution on one input shape (1 to 3 spatial dimensions)."""

    input_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # (left, right) zeros per dimension
    dilation: tuple[int, ...]
    groups: int = 1

    @classmethod
    def of(cls, module: torch.nn.Module, input_shape: Sequence[int]) -> ConvGeometry:
        """The geometry of ConvNd ``module`` on inputs of shape ``(C, *spatial)``, with the
        padding its forward really applies (:func:`conv_padding`)."""
        dims = len(module.kernel_size)
        # last dim first: (left, right) pairs; for timm's dynamic "SAME" convolutions the
        # padding their forward adds on this input size (their padding attribute is 0)
        pad = conv_padding(module, tuple(int(v) for v in input_shape[1:]))
        padding = tuple((pad[2 * (dims - 1 - d)], pad[2 * (dims - 1 - d) + 1]) for d in range(dims))
        return cls(tuple(int(v) for v in input_shape[1:]), tuple(module.kernel_size),
                   tuple(module.stride), padding, tuple(module.dilation),
                   module.groups)  # fmt: skip

    def check(self, weight_shape: Sequence[int]) -> None:
        """ValueError naming the field that does not describe a convolution of weight_shape."""
        dims = len(self.kernel_size)
        if not 1 <= dims <= 3:
            raise ValueError(f"geometry: 1 to 3 spatial dimensions, got kernel_size "
                             f"{self.kernel_size}")  # fmt: skip
        for name in ("input_size", "stride", "padding", "dilation"):
            if len(getattr(self, name)) != dims:
                raise ValueError(f"geometry.{name} must have {dims} entries, got "
                                 f"{getattr(self, name)}")  # fmt: skip
        positive = self.input_size + self.kernel_size + self.stride + self.dilation
        if any(not isinstance(v, int) or v < 1 for v in positive + (self.groups,)):
            raise ValueError(f"geometry: sizes, strides, dilations and groups must be ints >= 1, "
                             f"got {self}")  # fmt: skip
        if any(not isinstance(v, int) or v < 0 for p in self.padding for v in p):
            raise ValueError(f"geometry.padding must be ints >= 0, got {self.padding}")
        if tuple(weight_shape[2:]) != self.kernel_size:
            raise ValueError(f"weight shape {tuple(weight_shape)} does not match kernel_size "
                             f"{self.kernel_size}")  # fmt: skip
        if weight_shape[0] % self.groups:
            raise ValueError(f"groups={self.groups} must divide Cout={weight_shape[0]}")
        if min(self.output_size) < 1:
            raise ValueError(f"geometry: no output position (input {self.input_size}, kernel "
                             f"{self.kernel_size}, dilation {self.dilation}, padding "
                             f"{self.padding})")  # fmt: skip

    @property
    def output_size(self) -> tuple[int, ...]:
        return tuple(
            (n + lo + hi - d * (k - 1) - 1) // st + 1
            for n, k, st, (lo, hi), d in zip(
                self.input_size,
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                strict=True,
            )  # fmt: skip
        )

    @property
    def taps(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def center_taps(self) -> tuple[int, ...]:
        """The centre tap's index in each dimension: ``(k - 1) // 2``."""
        return tuple((k - 1) // 2 for k in self.kernel_size)

    @property
    def center(self) -> int:
        """The centre tap (:attr:`center_taps`) as a flat, row-major tap index."""
        ks = self.kernel_size
        return sum(c * math.prod(ks[d + 1 :]) for d, c in enumerate(self.center_taps))
