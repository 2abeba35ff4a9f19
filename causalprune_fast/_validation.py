"""Argument checks of the public estimator API: every failure is a ValueError naming the
argument (METHOD.md: "bad input gets a clear error"), raised before any kernel runs."""

from __future__ import annotations

import numbers
import re

import torch

MIN_BINS, MAX_BINS = 2, 256

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CODE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
CORRECTIONS = (None, "miller-madow")


def check_bins(bins: object, name: str = "bins") -> int:
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral):
        raise ValueError(f"{name} must be an int in [{MIN_BINS}, {MAX_BINS}], got {bins!r}")
    if not MIN_BINS <= int(bins) <= MAX_BINS:
        raise ValueError(f"{name} must be in [{MIN_BINS}, {MAX_BINS}], got {bins}")
    return int(bins)


def check_bins_pair(bins: object) -> tuple[int, int]:
    """``bins`` as ``(bins_x, bins_y)``: one int for both, or a pair."""
    if isinstance(bins, tuple | list):
        if len(bins) != 2:
            raise ValueError(f"bins must be an int or a pair (bins_x, bins_y), got {bins!r}")
        return check_bins(bins[0], "bins[0] (bins of x)"), check_bins(
            bins[1], "bins[1] (bins of y)"
        )
    b = check_bins(bins)
    return b, b


def check_matrix(t: object, name: str) -> torch.Tensor:
    """A 2-D ``[samples, columns]`` tensor of float activations or integer codes."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor [samples, columns], got {type(t).__name__}"
        )
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [samples, columns], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES + CODE_DTYPES:
        raise ValueError(
            f"{name} must hold float activations (float16, bfloat16, float32, float64) or "
            f"integer codes, got dtype {t.dtype}"
        )
    if t.shape[0] < 1:
        raise ValueError(f"{name} must have at least one sample (row), got shape {tuple(t.shape)}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(t.shape)}")
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(
            f"{name} holds {bad} non-finite value(s) (NaN or +-Inf) out of {t.numel()}; "
            "binning needs finite activations"
        )


def check_codes(t: torch.Tensor, bins: int, name: str, bins_name: str) -> torch.Tensor:
    """Integer codes in ``[0, bins)``, returned as uint8."""
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= bins:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds code {bad}, but codes must be in [0, {bins_name}={bins})")
    return t if t.dtype == torch.uint8 else t.to(torch.uint8)


def check_ranges(ranges: object, columns: int, device: torch.device, name: str) -> torch.Tensor:
    """User ranges ``[columns, 2]`` (lo, hi) as float64 on ``device``."""
    if not isinstance(ranges, torch.Tensor):
        raise ValueError(
            f"{name} must be a tensor [columns, 2] of (lo, hi), got {type(ranges).__name__}"
        )
    if ranges.shape != (columns, 2):
        raise ValueError(f"{name} must have shape [{columns}, 2], got {tuple(ranges.shape)}")
    if not ranges.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got {ranges.dtype}")
    r = ranges.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(r).all()):
        raise ValueError(f"{name} must be finite")
    if bool((r[:, 1] < r[:, 0]).any()):
        raise ValueError(f"{name} must have lo <= hi in every row")
    return r


def check_groups(groups: object, cx: int, cy: int) -> int:
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if cx % groups or cy % groups:
        raise ValueError(f"groups={groups} must divide the columns of x ({cx}) and of y ({cy})")
    return int(groups)


def check_correction(correction: object) -> bool:
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be None or 'miller-madow', got {correction!r}")
    return correction == "miller-madow"


def check_memory_budget(budget: object) -> int:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {budget!r}")
    return int(budget)


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    """An int (not a bool, not a float), at least ``minimum`` where given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int" if minimum is None else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_bool(value: object, name: str) -> bool:
    """A bool argument: True or False, nothing that merely looks truthy."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_input_shape(value: object, name: str = "input_shape") -> tuple[int, ...] | None:
    """None, or one example's shape without the batch dimension: positive ints."""
    if value is None:
        return None
    if isinstance(value, str | bytes | torch.Tensor) or not isinstance(value, tuple | list):
        raise ValueError(
            f"{name} must be a tuple or list of positive ints such as (3, 224, 224), got {value!r}"
        )
    if not value or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in value
    ):
        raise ValueError(
            f"{name} must be a non-empty sequence of positive ints (one example, without the "
            f"batch dimension), got {value!r}"
        )
    return tuple(int(d) for d in value)


def check_example_input(value: object, name: str = "example_input") -> torch.Tensor | None:
    """None, or an input batch: a tensor with a batch dimension of at least one example."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] < 1:
        got = (
            f"shape {tuple(value.shape)}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        raise ValueError(
            f"{name} must be a tensor with a batch dimension, e.g. [1, 3, 224, 224], got {got}"
        )
    return value


def check_keyword_arguments(kwargs: dict, accepted: set[str], caller: str) -> None:
    """Keyword arguments passed on to another function must be ones it takes."""
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"{caller} got unexpected keyword argument(s) {unknown}; the ones passed on to "
            f"score_model are: {', '.join(sorted(accepted))}"
        )


def check_choice(value: object, name: str, choices: tuple) -> object:
    if not isinstance(value, str | type(None)) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gib": 2**30,
    "t": 2**40,
    "tib": 2**40,
}


def parse_bytes(text: str, name: str) -> int:
    """A byte count from text: plain bytes (``1073741824``) or a number with a unit, case
    insensitive: ``KB``/``MB``/``GB``/``TB`` are powers of 1000, ``KiB``/``MiB``/``GiB``/``TiB``
    and the bare ``K``/``M``/``G``/``T`` powers of 1024 (``512MB``, ``1GiB``, ``1.5G``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    unit = m and _BYTE_UNITS.get(m.group(2).lower())
    if not m or unit is None:
        raise ValueError(
            f"{name}={text!r} is not a byte count: give bytes or a number with a unit, "
            "e.g. 1073741824, 512MB, 1GiB or 1.5G"
        )
    value = int(float(m.group(1)) * unit)
    if value <= 0:
        raise ValueError(f"{name}={text!r} must be a positive number of bytes")
    return value
