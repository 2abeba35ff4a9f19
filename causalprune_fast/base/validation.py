"""Argument checks of the public API: every failure is a ValueError naming the argument,
raised before any kernel runs or the model is touched."""

from __future__ import annotations

import math
import numbers
import os

import torch
import torch.nn as nn

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


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite, exactly, in one streaming pass where it is:
    a float sum is finite only if every term is (NaN and Inf propagate), and only where the
    sum is not (a NaN, an Inf, or an overflow of large finite values) the elementwise test
    decides. ``torch.isfinite(t).all()`` writes a bool tensor and is several times slower."""
    if not (t.dtype.is_floating_point or t.is_complex()) or t.numel() == 0:
        return True
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def count_non_finite(t: torch.Tensor) -> int:
    """How many values of ``t`` are NaN or +-Inf (0 after one fast pass where none is:
    :func:`all_finite`)."""
    return 0 if all_finite(t) else int((~torch.isfinite(t)).sum())


def check_finite(t: torch.Tensor, name: str) -> None:
    """ValueError naming the argument ``name`` if ``t`` holds NaN or Inf."""
    bad = count_non_finite(t)
    if bad:
        raise ValueError(
            f"{name} holds {bad} non-finite value(s) (NaN or +-Inf) out of {t.numel()}; "
            "binning needs finite activations"
        )


def check_layer_finite(t: torch.Tensor, layer: str, what: str) -> None:
    """ValueError naming ``layer`` and ``what`` of it (its input, output, response) if ``t``
    holds NaN or Inf under the noise."""
    bad = count_non_finite(t)
    if bad:
        raise ValueError(
            f"layer '{layer}' produced {bad} non-finite value(s) (NaN/Inf) in its {what} "
            "under the noise input; check the model (or input_range) for overflow"
        )


def check_codes(t: torch.Tensor, bins: int, name: str, bins_name: str) -> torch.Tensor:
    """Integer codes in ``[0, bins)``, returned as uint8 (one pass over them: unsigned codes
    have no lower bound to check)."""
    if t.dtype == torch.uint8:
        lo, hi = 0, int(t.max())
    else:
        lo, hi = (int(v) for v in torch.aminmax(t))
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


def check_column_groups(groups: object, cx: int, cy: int) -> int:
    """``groups`` of ``pairwise_mi``: a positive int dividing the columns of x and of y
    (grouped convolutions: only pairs within a group of columns are measured)."""
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


def check_int(
    value: object, name: str, minimum: int | None = None, below: int | None = None
) -> int:
    """An int (not a bool, not a float), at least ``minimum`` where given, and with ``below``
    in ``[minimum, below)``."""
    if below is not None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an int in [{minimum}, {below}), got {value!r}")
        if not minimum <= int(value) < below:
            raise ValueError(f"{name} must be in [{minimum}, {below}), got {value}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int" if minimum is None else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_ratio(ratio: object, name: str = "ratio") -> float:
    """A pruning ratio: a finite real number in [0, 1) (a bool is not one)."""
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, numbers.Real)
        or not math.isfinite(ratio)
        or not 0.0 <= ratio < 1.0
    ):
        raise ValueError(f"{name} must be in [0, 1), got {ratio!r}")
    return float(ratio)


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
    if isinstance(value, torch.Tensor) and (value.dtype.is_complex or value.dtype == torch.bool):
        raise ValueError(
            f"{name} must hold real numbers (float or integer), got dtype {value.dtype}: the "
            "noise is drawn in its dtype"
        )
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


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.manual_seed takes


def check_seed(seed: object, name: str = "seed") -> int:
    """An int seed in torch.manual_seed's range: larger ones would be silently truncated."""
    seed = check_int(seed, name)
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be in [-2**63, 2**64 - 1], got {seed}")
    return seed


def check_model(model: object, name: str = "model") -> nn.Module:
    """A module whose parameters and buffers hold data (none on the ``meta`` device)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    for kind, named in (("parameter", model.named_parameters), ("buffer", model.named_buffers)):
        for pname, t in named():
            if t.is_meta:
                raise ValueError(
                    f"{name} has its {kind} {pname!r} on the 'meta' device (no data): "
                    "materialise it first, e.g. model.to_empty(device='cpu') and then "
                    "load_state_dict(...)"
                )
    return model


def check_noise_range(lo: float, hi: float, dtype: torch.dtype, name: str = "input_range") -> None:
    """The noise box ``[lo, hi)`` must be drawable in ``dtype``: its bounds and its width
    representable (a float32 model cannot take input_range=(0, 1e300)), and whole numbers
    for an integer dtype."""
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    if not dtype.is_floating_point and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ValueError(
            f"{name}=({lo:g}, {hi:g}): integer noise ({dtype}) is drawn from the whole numbers "
            "in [lo, hi); give whole-number bounds rather than have them truncated"
        )
    if not (info.min <= lo and hi <= info.max and math.isfinite(hi - lo) and hi - lo <= info.max):
        raise ValueError(
            f"{name}=({lo:g}, {hi:g}) does not fit the noise dtype {dtype}: its bounds and "
            f"its width hi - lo must be within [{info.min:g}, {info.max:g}]"
        )


def check_output_path(path: object, name: str, try_write: bool = False) -> str:
    """A file path to write: its folder must exist and it must not be a directory. With
    ``try_write``, a temporary file is also created (and removed) in the folder, so that an
    unwritable folder is found before long work rather than at the end (the CLI)."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{name} must not be empty")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name} {path!r} is a directory; give a file name in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{name} {path!r}: the folder {folder!r} does not exist")
    if try_write:
        import tempfile

        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise PermissionError(
                f"{name} {path!r}: cannot write in the folder {folder!r} ({e.strerror or e})"
            ) from None
    return path


def check_image_path(path: object, name: str, try_write: bool = False) -> str:
    """An output path for a figure: :func:`check_output_path`, and an extension matplotlib
    can write (or none, which writes PNG)."""
    path = check_output_path(path, name, try_write)
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext:
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            return path  # plotting reports the missing matplotlib itself
        formats = FigureCanvasBase.get_supported_filetypes()
        if ext not in formats:
            raise ValueError(
                f"{name} {path!r}: matplotlib cannot write .{ext} files; use one of "
                f"{', '.join(sorted(formats))}"
            )
    return path


def check_layer_record(name: str, incoming: object, outgoing: object, meta: object) -> None:
    """One layer of a scores file: 1-D finite float score tensors and well-typed metadata,
    so that a damaged file fails on load, not later in summary() or plot()."""
    for key, t in (("incoming", incoming), ("outgoing", outgoing)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.dtype.is_floating_point:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t)
            raise ValueError(f"layer {name!r}: {key} must be a 1-D float tensor, got {got}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"layer {name!r}: {key} holds NaN or Inf")
    if not isinstance(meta, dict):
        raise ValueError(f"layer {name!r}: its metadata must be an object")
    for key in ("samples", "input_units", "groups"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"layer {name!r}: {key} must be a non-negative int, got {value!r}")
    calls = meta.get("calls", 1)
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ValueError(f"layer {name!r}: calls must be a positive int, got {calls!r}")
    if not isinstance(meta.get("called_by"), str | None):
        raise ValueError(f"layer {name!r}: called_by must be a string or null")
