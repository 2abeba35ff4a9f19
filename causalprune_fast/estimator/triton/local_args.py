"""Argument checks of the fused local-mode kernels (local_linear.py, local_conv.py): every bad
argument is named in a ValueError, and tensors come back float32, contiguous, on one device."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from causalprune_fast.base.validation import check_int

from .linear_response import SUPPORTED_ACTIVATIONS


def check_device(t: torch.Tensor, name: str) -> None:
    from . import is_available

    ok, why = is_available(t.device)
    if not ok:
        raise ValueError(f"{name}: the fused Triton kernels cannot run here: {why}")


def check_vector(t, n: int, name: str, device, allow_scalar: bool = False) -> torch.Tensor:
    """A float vector of length n (or, with allow_scalar, a number), as float32 on device."""
    if allow_scalar and isinstance(t, numbers.Real) and not isinstance(t, bool):
        t = torch.full((n,), float(t), dtype=torch.float32, device=device)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a float tensor [{n}], got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor, got dtype {t.dtype}")
    if allow_scalar and t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device} (the weight's device), got {t.device}")
    t = t.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def check_weight(weight) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a tensor [Cout, Cin], got {type(weight).__name__}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be a float tensor, got dtype {weight.dtype}")
    if weight.dim() < 2 or any(k != 1 for k in weight.shape[2:]):
        raise ValueError(
            "weight must be [Cout, Cin] (Linear) or [Cout, Cin, 1, ...] (1x1 convolution), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"weight must have Cout, Cin >= 1, got shape {tuple(weight.shape)}")
    if max(weight.shape[0], weight.shape[1]) >= 2**31:
        raise ValueError(f"weight is too large: shape {tuple(weight.shape)}")
    w = weight.detach().reshape(weight.shape[0], weight.shape[1]).to(torch.float32).contiguous()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight must be finite")
    return w


def check_options(reduce, miller_madow) -> None:
    """ValueError unless ``reduce`` is None or ``"sum"`` and ``miller_madow`` a bool."""
    if reduce not in (None, "sum"):
        raise ValueError(f"reduce must be None or 'sum', got {reduce!r}")
    if not isinstance(miller_madow, bool):
        raise ValueError(f"miller_madow must be a bool, got {miller_madow!r}")


@dataclass(frozen=True)
class LayerArgs:
    """The checked arguments both fused kernels share (besides the weight)."""

    has_bias: bool
    has_affine: bool  # scale or shift given
    chan: torch.Tensor  # [3, Cout] float32: bias, scale, shift (rows the flags switch off: 0, 1, 0)
    noise: torch.Tensor  # [2, Cin] float32: the noise ranges lo, hi
    samples: int
    seed: int
    bins: int


def check_layer_args(
    cout: int,
    cin: int,
    device,
    bias,
    lo,
    hi,
    samples,
    seed,
    bins,
    scale,
    shift,
    activation,
    unit: str = "input unit",
) -> LayerArgs:
    """Check the arguments after the weight, in this order: bias, lo, hi (``hi >= lo`` for every
    ``unit``), samples, seed, bins, activation, scale, shift; tensors on ``device``; with one of
    scale / shift given, the other is ones / zeros."""
    b = None if bias is None else check_vector(bias, cout, "bias", device)
    lo_t = check_vector(lo, cin, "lo", device, allow_scalar=True)
    hi_t = check_vector(hi, cin, "hi", device, allow_scalar=True)
    if bool((hi_t < lo_t).any()):
        i = int(torch.nonzero(hi_t < lo_t)[0, 0])
        raise ValueError(f"hi must be >= lo for every {unit}, got lo[{i}] > hi[{i}]")
    samples = check_int(samples, "samples", 1, below=2**31)
    seed = check_int(seed, "seed", 0, below=2**63)
    bins = check_int(bins, "bins", 2, below=257)
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"activation must be one of {SUPPORTED_ACTIVATIONS}, got {activation!r}")
    ones, zeros = torch.ones(cout, device=device), torch.zeros(cout, device=device)
    has_affine = scale is not None or shift is not None
    scale = ones if scale is None else check_vector(scale, cout, "scale", device)
    shift = zeros if shift is None else check_vector(shift, cout, "shift", device)
    chan = torch.stack([zeros if b is None else b, scale, shift]).contiguous()
    return LayerArgs(b is not None, has_affine, chan, torch.stack([lo_t, hi_t]), samples, seed,
                     bins)  # fmt: skip
