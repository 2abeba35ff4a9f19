"""The settings of one :func:`~causalprune_fast.score_model` call, checked once and frozen.

Every argument check of score_model lives in :meth:`ScorePlan.build`: a bad argument is a
ValueError naming it, raised before the model runs. Internal names say what they count:
``examples`` are the noise examples sent through the whole network (local mode's calibration
pass, propagated mode's measured examples; the public ``examples``, formerly ``samples``),
``rows_per_layer`` the sample rows of a layer (the public ``samples_per_layer``, formerly
``max_samples_per_layer``: exact in local mode, a cap in propagated mode), ``range_mode`` is
how bin ranges are fixed (the public ``ranges``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from causalprune_fast.base import validation as v
from causalprune_fast.base.memory import default_memory_budget
from causalprune_fast.base.noise import input_noise
from causalprune_fast.estimator.backends import BACKENDS, unusable
from causalprune_fast.model.discovery import check_layer_filter
from causalprune_fast.model.layers import TAPS
from causalprune_fast.results.channel_scores import DIRECTIONS, REDUCTIONS

MODES = ("propagated", "local")
RANGE_MODES = ("exact", "first-batch")

DEFAULT_EXAMPLES = 64  # noise examples through the whole network
# Sample rows per layer: at 16 bins the plug-in bias (B - 1)^2 / (2 S ln 2) is 0.01 bits per
# pair (docs/method.md section 5.3), 4x the 16 * bins^2 = 4096 floor, and the cost the
# benchmarks were measured at (benchmarks/RESULTS.md).
DEFAULT_SAMPLES_PER_LAYER = 16384
DEFAULT_SAMPLES = DEFAULT_EXAMPLES  # old names
DEFAULT_MAX_SAMPLES_PER_LAYER = DEFAULT_SAMPLES_PER_LAYER


class NotGiven:
    """The default of an argument that has an old name too: neither was given."""

    def __init__(self, default: object):
        self.default = default

    def __repr__(self) -> str:
        return f"{self.default!r} (default)"


NOT_GIVEN_EXAMPLES = NotGiven(DEFAULT_EXAMPLES)
NOT_GIVEN_SAMPLES_PER_LAYER = NotGiven(DEFAULT_SAMPLES_PER_LAYER)


def resolve_alias(name: str, value: object, old_name: str, old_value: object) -> object:
    """The value of argument ``name`` given under its own or its old name ``old_name``;
    ValueError naming both when both are given and disagree."""
    if isinstance(old_value, NotGiven):
        return value.default if isinstance(value, NotGiven) else value
    if isinstance(value, NotGiven):
        return old_value
    if type(value) is not type(old_value) or value != old_value:
        raise ValueError(
            f"{name}={value!r} and {old_name}={old_value!r} (its old name) disagree; give "
            f"only {name}"
        )
    return value


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
    examples: int  # noise examples through the network, over all ranks
    rows_per_layer: int | None  # sample rows of a layer: exact (local) or a cap (propagated)
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
    pairs_per_unit: int | None = None  # partners per unit (sampled MI sums), or None: all

    @property
    def miller_madow(self) -> bool:
        return self.correction == "miller-madow"

    def input_noise(self, start: int, count: int) -> torch.Tensor:
        """Noise examples ``start .. start + count - 1`` at the model's input
        (:func:`~causalprune_fast.base.noise.input_noise` with these settings)."""
        return input_noise(
            self.input_shape,
            start,
            count,
            self.input_range,
            seed=self.seed,
            device=self.device,
            dtype=self.input_dtype,
        )

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
        examples: int | NotGiven,
        samples_per_layer: int | None | NotGiven,
        samples: int | NotGiven = NOT_GIVEN_EXAMPLES,
        max_samples_per_layer: int | None | NotGiven = NOT_GIVEN_SAMPLES_PER_LAYER,
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
        pairs_per_unit: int | None = None,
    ) -> ScorePlan:
        """Check every argument of score_model (ValueError naming it) and freeze them."""
        v.check_model(model)
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
        examples = resolve_alias("examples", examples, "samples", samples)
        examples = v.check_int(examples, "examples (noise examples; old name samples)", 1)
        rows = resolve_alias(
            "samples_per_layer", samples_per_layer, "max_samples_per_layer", max_samples_per_layer
        )
        if rows is None and mode == "local":
            raise ValueError(
                "samples_per_layer=None (no cap) applies to mode='propagated' only; in local "
                "mode every layer is measured on exactly samples_per_layer rows: give an int"
            )
        if rows is not None:
            v.check_int(rows, "samples_per_layer (old name max_samples_per_layer)", 1)
        batch_size = examples if batch_size is None else v.check_int(batch_size, "batch_size", 1)
        if batch_size > examples:
            raise ValueError(
                f"batch_size={batch_size} is larger than examples={examples}: a forward pass "
                f"holds at most the {examples} noise examples; give batch_size <= examples "
                "(or more examples)"
            )
        seed = v.check_seed(seed)
        if layers is not None:
            check_layer_filter(layers)
        lo, hi = _check_range(input_range)
        v.check_noise_range(lo, hi, dtype)
        if backend != "auto":
            problem = unusable(backend, device)
            if problem is not None:
                raise ValueError(problem)
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
        if pairs_per_unit is not None:
            pairs_per_unit = v.check_int(pairs_per_unit, "pairs_per_unit (or None)", 2)
            if return_matrices:
                raise ValueError(
                    "return_matrices=True keeps every pair's MI; pairs_per_unit measures only "
                    "some pairs: give one of them"
                )
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
            rows_per_layer=rows,
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
            pairs_per_unit=pairs_per_unit,
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
            "examples": self.examples,
            "samples_per_layer": self.rows_per_layer,
            "pairs_per_unit": self.pairs_per_unit,
            # The same under their old names, for readers of older files.
            "samples": self.examples,
            "max_samples_per_layer": self.rows_per_layer,
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
