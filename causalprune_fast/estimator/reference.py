"""Pure-PyTorch float64 reference of the estimator: clear rather than fast.

This is the ground truth every other backend is tested against. It follows
``docs/method.md`` sections 4 and 5 literally: per-column equal-width binning, joint counts of every
(x column, y column) pair as a float64 one-hot product (exact for counts below 2**53), and the
plug-in MI in bits. Functions here take already validated arguments; the public entry points
are :func:`causalprune_fast.quantize` and :func:`causalprune_fast.pairwise_mi`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["quantize", "pairwise_mi", "pairwise_mi_sums", "joint_counts", "mi_from_counts"]


def quantize(
    x: torch.Tensor, bins: int, ranges: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[S, C]`` uint8 (column-major, like every backend) and the ranges ``[C, 2]``.

    ``code = min(floor((v - lo) / (hi - lo) * bins), bins - 1)``, clamped below at 0, in
    float64 in that order (every operand halved first where ``hi - lo`` overflows); a
    degenerate range (``hi <= lo``) gives bin 0, or ``bins - 1`` for values above ``hi``; NaN
    gives bin 0. Computed ranges are each column's min and max (NaN if the column holds a
    NaN).
    """
    xd = x.to(torch.float64)
    if ranges is None:
        ranges = torch.stack([xd.amin(dim=0), xd.amax(dim=0)], dim=1)
    else:
        ranges = ranges.to(torch.float64).clone()
    lo, hi = ranges[:, 0], ranges[:, 1]
    # A finite range wider than the largest double overflows hi - lo: halve every operand
    # there (quantize_value in mi_math.h); h == 1 elsewhere leaves the arithmetic unchanged.
    span = hi - lo
    h = torch.where(torch.isfinite(span), 1.0, 0.5).to(torch.float64)
    t = (xd * h - lo * h) / (hi * h - lo * h) * bins
    inner = torch.where(t >= 1, torch.where(t >= bins - 1, bins - 1, torch.floor(t)), 0.0)
    degenerate = torch.where(xd > hi, float(bins - 1), 0.0)
    codes = torch.where(hi > lo, inner, degenerate).to(torch.uint8)
    return codes.t().contiguous().t(), ranges


def _xlogx(t: torch.Tensor) -> torch.Tensor:
    return torch.special.xlogy(t, t)


def _one_hot(codes: torch.Tensor, bins: int) -> torch.Tensor:
    return F.one_hot(codes.long(), bins).to(torch.float64)  # [S, C, bins]


def joint_counts(x: torch.Tensor, y: torch.Tensor, bins_x: int, bins_y: int) -> torch.Tensor:
    """Exact joint counts ``[Cx, bins_x, Cy, bins_y]`` (float64) of every column pair."""
    return torch.einsum("sia,sjb->iajb", _one_hot(x, bins_x), _one_hot(y, bins_y))


def mi_from_counts(counts: torch.Tensor, miller_madow: bool = False) -> torch.Tensor:
    """MI in bits ``[Cx, Cy]`` (float64) from exact joint counts ``[Cx, Bx, Cy, By]``.

    The marginals come from the counts themselves, so counts summed over several sample
    shards (e.g. across processes) give exactly the MI of all samples.
    """
    c = counts.to(torch.float64)
    s = float(c[0, :, 0, :].sum())
    nx = c[:, :, 0, :].sum(dim=2)  # [Cx, Bx]: the x marginal is the same for every y column
    ny = c[0, :, :, :].sum(dim=0)  # [Cy, By]
    joint = _xlogx(c).sum(dim=(1, 3))
    mx = _xlogx(nx).sum(dim=1)
    my = _xlogx(ny).sum(dim=1)
    mi = (joint - mx[:, None] - my[None, :] + s * math.log(s)) / (s * math.log(2.0))
    nonempty_x = (nx > 0).sum(dim=1).to(torch.float64)
    nonempty_y = (ny > 0).sum(dim=1).to(torch.float64)
    if miller_madow:
        nonempty_xy = (c > 0).sum(dim=(1, 3)).to(torch.float64)
        mi = mi + (nonempty_x[:, None] + nonempty_y[None, :] - nonempty_xy - 1) / (
            2 * s * math.log(2.0)
        )
    # A constant column (one non-empty bin) carries exactly zero information.
    constant = (nonempty_x[:, None] <= 1) | (nonempty_y[None, :] <= 1)
    return mi.clamp_min(0.0).masked_fill(constant, 0.0)


def _mi_block(
    x: torch.Tensor, y: torch.Tensor, bins_x: int, bins_y: int, miller_madow: bool
) -> torch.Tensor:
    return mi_from_counts(joint_counts(x, y, bins_x, bins_y), miller_madow)


def _matrix(
    x: torch.Tensor, y: torch.Tensor, bins_x: int, bins_y: int, groups: int, miller_madow: bool
) -> torch.Tensor:
    """The float64 ``[Cx, Cy]`` MI matrix, pairs across groups 0."""
    cx, cy = x.shape[1], y.shape[1]
    gx, gy = cx // groups, cy // groups
    out = torch.zeros(cx, cy, dtype=torch.float64, device=x.device)
    for g in range(groups):
        xs, ys = slice(g * gx, (g + 1) * gx), slice(g * gy, (g + 1) * gy)
        out[xs, ys] = _mi_block(x[:, xs], y[:, ys], bins_x, bins_y, miller_madow)
    return out


def pairwise_mi(
    x: torch.Tensor,
    y: torch.Tensor,
    bins_x: int,
    bins_y: int,
    groups: int = 1,
    miller_madow: bool = False,
) -> torch.Tensor:
    """MI in bits of every (x column, y column) pair within a group, ``[Cx, Cy]`` float32.

    ``x``/``y`` are codes ``[S, Cx]``/``[S, Cy]``; with ``groups`` > 1 the columns of each are
    split into that many contiguous equal blocks and pairs across blocks are 0.
    """
    return _matrix(x, y, bins_x, bins_y, groups, miller_madow).to(torch.float32)


def pairwise_mi_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    bins_x: int,
    bins_y: int,
    groups: int = 1,
    miller_madow: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums (float64) of :func:`pairwise_mi`'s matrix."""
    m = _matrix(x, y, bins_x, bins_y, groups, miller_madow)
    return m.sum(dim=1), m.sum(dim=0)
