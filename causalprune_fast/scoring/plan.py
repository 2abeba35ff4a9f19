"""The settings of one :func:`~causalprune_fast.score_model` call, checked once and frozen.

Every argument check of score_model lives in :meth:`ScorePlan.build`: a bad argument is a
ValueError naming it, raised before the model runs. Internal names say what they count:
``examples`` are noise examples (the public ``samples``), ``max_rows_per_layer`` caps a layer's
(example, position) sample rows (the public ``max_samples_per_layer``), ``range_mode`` is how
bin ranges are fixed (the public ``ranges``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from causalprune_fast import _validation as v
from causalprune_fast.channel_graph import DIRECTIONS, REDUCTIONS
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


@dataclass(frozen=True)
class ScorePlan:
    """The validated settings of one score_model call."""

    input_shape: tuple[int, ...]  # one example, without the batch dimension
    input_dtype: torch.dtype
    device: torch.device
    input_range: tuple[float, float]
    seed: int
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
        if example_input is not None:
            if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
                raise ValueError("example_input must be a tensor with a batch dimension")
            shape = tuple(example_input.shape[1:])
            dtype = input_dtype or example_input.dtype
        else:
            if input_shape is None:
                raise ValueError("give input_shape (one example, without the batch dimension)")
            try:
                shape = tuple(int(s) for s in input_shape)
            except (TypeError, ValueError):
                raise ValueError(
                    f"input_shape must be a sequence of ints, got {input_shape!r}"
                ) from None
            dtype = input_dtype or param_dtype
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"input_shape must be positive sizes, e.g. (3, 224, 224); got {shape}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if taps not in TAPS:
            raise ValueError(f"taps must be one of {TAPS}, got {taps!r}")
        bins = v.check_bins(bins)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        v.check_correction(correction)
        if ranges not in RANGE_MODES:
            raise ValueError(f"ranges must be one of {RANGE_MODES}, got {ranges!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples (noise examples) must be a positive int, got {samples!r}")
        if max_samples_per_layer is not None and (
            not isinstance(max_samples_per_layer, int) or max_samples_per_layer < 1
        ):
            raise ValueError(
                "max_samples_per_layer must be a positive int or None, got "
                f"{max_samples_per_layer!r}"
            )
        batch_size = samples if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        lo, hi = (float(input_range[0]), float(input_range[1]))
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(
                f"input_range must be finite (lo, hi) with hi > lo, got {input_range!r}"
            )
        budget = v.check_memory_budget(
            default_memory_budget() if memory_budget is None else memory_budget
        )
        return cls(
            input_shape=shape,
            input_dtype=dtype,
            device=device,
            input_range=(lo, hi),
            seed=seed,
            mode=mode,
            taps=taps,
            bins=bins,
            correction=correction,
            examples=samples,
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
