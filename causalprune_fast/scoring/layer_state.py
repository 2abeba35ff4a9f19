"""What is known about one measured layer while score_model runs, and the run's clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from causalprune_fast.model.layers import Layer
from causalprune_fast.model.response import ResponsePoint
from causalprune_fast.results.layer_scores import LayerScores


@dataclass
class LayerState:
    """One measured layer during a run: its geometry, bin ranges, kept codes and result.

    ``positions`` are the output positions one noise example gives the layer; ``rows`` is the
    number of (example, position) sample rows it is measured on over all examples and ranks.
    A layer called several times per forward pass (``calls``) has the input shape, batch
    rows per noise example and output positions of each call in ``call_shapes``,
    ``call_batches`` and ``call_positions`` (``positions`` is then the sum over its calls of
    batch rows times positions: its rows of one example are pooled over the calls);
    ``functional_calls`` of them are functional calls of its weight.
    """

    layer: Layer
    index: int  # position among the measured layers; names its noise streams
    response: ResponsePoint
    positions: int = 0
    input_shape: tuple[int, ...] = ()
    input_dtype: torch.dtype | None = None  # the layer input's dtype (local-mode noise)
    calls: int = 1
    functional_calls: int = 0
    call_shapes: list[tuple[int, ...]] = field(default_factory=list)
    call_batches: list[int] = field(default_factory=list)
    call_positions: list[int] = field(default_factory=list)
    rows: int = 0
    x_ranges: torch.Tensor | None = None  # [input units, 2] bin ranges
    y_ranges: torch.Tensor | None = None  # [output channels, 2]
    x_codes: list[torch.Tensor] = field(default_factory=list)  # kept across forward passes
    y_codes: list[torch.Tensor] = field(default_factory=list)
    channel_lo: torch.Tensor | None = None  # local mode: per input channel range
    channel_hi: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    path: str = ""  # how it was measured: "propagated", "patches", "full-tensor", "fused-triton"
    result: LayerScores | None = None

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
