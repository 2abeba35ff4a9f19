"""The settings of one :func:`~causalprune_fast.score_model` call, checked once and frozen.

Every argument check of score_model lives in :meth:`ScorePlan.build`: a bad argument is a
ValueError naming it, raised before the model runs. Internal names say what they count:
``examples`` are noise examples (the public ``samples``), ``max_rows_per_layer`` caps a layer's
(example, position) sample rows (the public ``max_samples_per_layer``), ``range_mode`` is how
bin ranges are fixed (the public ``ranges``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from causalprune_fast import _validation as v
from causalprune_fast.backends import BACKENDS
from causalprune_fast.channel_scores import DIRECTIONS, REDUCTIONS
from causalprune_fast.discovery import check_layer_filter
from causalprune_fast.estimator import default_memory_budget
from causalprune_fast.layers import TAPS

MODES = ("propagated", "local")
RANGE_MODES = ("exact", "first-batch")

DEFAULT_SAMPLES = 64  # noise examples
DEFAULT_MAX_SAMPLES_PER_LAYER = 16384  # (example, position) sample rows per layer


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU, float32 without one)."""
    for p in model.parameters():
        dtype = p.dtype if p.dtype.is_floating_point else torch.float32
        return p.device, dtype
    return torch.device("cpu"), torch.float32


def _check_range(input_range: object) -> tuple[float, float]:
    ok = (
        isinstance(input_range, Sequence)
        and not isinstance(input_range, str | bytes)
        and len(input_range) == 2
        and all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in input_range)
    )
    if ok:
        lo, hi = float(input_range[0]), float(input_range[1])
        ok = math.isfinite(lo) and math.isfinite(hi) and hi > lo
    if not ok:
        raise ValueError(f"input_range must be finite (lo, hi) with hi > lo, got {input_range!r}")
    return lo, hi


@dataclass(frozen=True)
class ScorePlan:
    """The validated settings of one score_model call."""

    input_shape: tuple[int, ...]  # one example, without the batch dimension
    input_dtype: torch.dtype
    device: torch.device
    input_range: tuple[float, float]
    seed: int
    layers: object  # filter of the measured layers by name (see discovery.find_layers)
    mode: str
    taps: str
    bins: int
    correction: str | None
    examples: int  # noise examples, over all ranks
    max_rows_per_layer: int | None
    batch_size: int  # noise examples per forward pass
    direction: str
    reduction: str
    range_mode: str
    memory_budget: int
    backend: str
    return_matrices: bool
    progress: bool
    distributed: bool
    fused_local: bool | None

    @property
    def miller_madow(self) -> bool:
        return self.correction == "miller-madow"

    @classmethod
    def build(
        cls,
        model: nn.Module,
        input_shape: Sequence[int] | None,
        *,
        example_input: torch.Tensor | None,
        input_range: tuple[float, float],
        input_dtype: torch.dtype | None,
        mode: str,
        taps: str,
        bins: int,
        samples: int,
        max_samples_per_layer: int | None,
        batch_size: int | None,
        seed: int,
        layers: object,
        direction: str,
        reduction: str,
        correction: str | None,
        backend: str,
        memory_budget: int | None,
        ranges: str,
        return_matrices: bool,
        progress: bool,
        distributed: bool,
        fused_local: bool | None,
    ) -> ScorePlan:
        """Check every argument of score_model (ValueError naming it) and freeze them."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        device, param_dtype = model_device_dtype(model)
        if input_dtype is not None and (
            not isinstance(input_dtype, torch.dtype)
            or input_dtype.is_complex
            or input_dtype == torch.bool
        ):
            raise ValueError(
                f"input_dtype must be None or a real torch.dtype (e.g. torch.float32, "
                f"torch.long), got {input_dtype!r}"
            )
        shape = v.check_input_shape(input_shape)
        if example_input is not None:
            v.check_example_input(example_input)
            example_shape = tuple(example_input.shape[1:])
            if shape is not None and shape != example_shape:
                raise ValueError(
                    f"input_shape={shape} conflicts with example_input's shape "
                    f"{tuple(example_input.shape)} (batch dimension first): give one of them, "
                    "or make them agree"
                )
            shape = v.check_input_shape(example_shape, "example_input's shape")
            dtype = input_dtype or example_input.dtype
        else:
            if shape is None:
                raise ValueError("give input_shape (one example, without the batch dimension)")
            dtype = input_dtype or param_dtype
        v.check_choice(mode, "mode", MODES)
        v.check_choice(taps, "taps", TAPS)
        bins = v.check_bins(bins)
        v.check_choice(direction, "direction", DIRECTIONS)
        v.check_choice(reduction, "reduction", REDUCTIONS)
        v.check_correction(correction)
        v.check_choice(ranges, "ranges", RANGE_MODES)
        v.check_choice(backend, "backend", ("auto", *BACKENDS))
        examples = v.check_int(samples, "samples (noise examples)", 1)
        if max_samples_per_layer is not None:
            v.check_int(max_samples_per_layer, "max_samples_per_layer", 1)
        batch_size = examples if batch_size is None else v.check_int(batch_size, "batch_size", 1)
        seed = v.check_int(seed, "seed")
        if layers is not None:
            check_layer_filter(layers)
        lo, hi = _check_range(input_range)
        budget = v.check_memory_budget(
            default_memory_budget() if memory_budget is None else memory_budget
        )
        for flag, name in (
            (return_matrices, "return_matrices"),
            (progress, "progress"),
            (distributed, "distributed"),
        ):
            v.check_bool(flag, name)
        if fused_local is not None:
            v.check_bool(fused_local, "fused_local (or None)")
        return cls(
            input_shape=shape,
            input_dtype=dtype,
            device=device,
            input_range=(lo, hi),
            seed=seed,
            layers=layers,
            mode=mode,
            taps=taps,
            bins=bins,
            correction=correction,
            examples=examples,
            max_rows_per_layer=max_samples_per_layer,
            batch_size=batch_size,
            direction=direction,
            reduction=reduction,
            range_mode=ranges,
            memory_budget=budget,
            backend=backend,
            return_matrices=return_matrices,
            progress=progress,
            distributed=distributed,
            fused_local=fused_local,
        )

    def config(self, **run_facts: object) -> dict:
        """The settings as saved with the scores (public names), plus facts of the run."""
        return {
            "input_shape": list(self.input_shape),
            "input_range": list(self.input_range),
            "input_dtype": str(self.input_dtype).replace("torch.", ""),
            "mode": self.mode,
            "taps": self.taps,
            "bins": self.bins,
            "samples": self.examples,
            "max_samples_per_layer": self.max_rows_per_layer,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "direction": self.direction,
            "reduction": self.reduction,
            "correction": self.correction,
            "backend": self.backend,
            "ranges": self.range_mode,
            "device": str(self.device),
            **run_facts,
        }
