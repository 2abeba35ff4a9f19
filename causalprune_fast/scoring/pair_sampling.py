"""Sampled MI sums (``pairs_per_unit=K``, docs/method.md section 5.4): each unit's sum of MI
over its partners estimated from ``K`` of them, for layers whose ``inputs x outputs`` pairs
are too many to measure.

An output channel's incoming sum runs over the layer's ``X`` input units; an input unit's
outgoing sum over its ``Y`` output channels. With ``K`` smaller than a side, ``K`` partner
units are drawn from it uniformly without replacement (one draw per layer and side, seeded
from ``(seed, (PAIRS, layer))``), every unit of the other side is measured against those
``K`` only, and its sum is estimated as ``partners / K`` times the sum over them: unbiased
for every unit (a uniform sample of its partners). Its standard error is that of a total
estimated from a simple random sample, ``partners * sqrt(s^2 / K * (1 - K / partners))``,
with ``s^2`` the sample variance of the ``K`` values; an input channel's outgoing sum (over
its taps and outputs) takes the sum over its taps as one value per partner. The work is
``(X + Y) * K`` pairs instead of ``X * Y``. All units of one side share the same partners,
so their estimates are correlated: common errors shift a layer's scores together, which
leaves their ranking within the layer less disturbed than independent draws would.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from causalprune_fast.base.distributed import DistContext
from causalprune_fast.scoring.layer_mi import LayerMI, MISettings, layer_mi


def _columns(codes: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """The columns ``idx`` of ``[rows, C]`` codes, column-major like the codes the binning
    makes (all of them for None)."""
    if idx is None:
        return codes
    return codes.t()[idx.to(codes.device)].t()


def _total_and_se(values: torch.Tensor, partners: int, dim: int):
    """Estimated totals over ``partners`` from the ``K`` sampled values along ``dim``, and
    their standard errors (simple random sampling without replacement)."""
    k = values.shape[dim]
    total = values.sum(dim=dim) * (partners / k)
    if k >= partners:
        return total, torch.zeros_like(total)
    var = values.var(dim=dim, unbiased=True)
    return total, partners * torch.sqrt(var / k * (1.0 - k / partners))


def sampled_layer_mi(
    xc: torch.Tensor,
    yc: torch.Tensor,
    mi: MISettings,
    ctx: DistContext,
    seed: int,
    taps_per_channel: int,
) -> LayerMI:
    """Per-unit MI sums of codes ``xc`` [rows, X] and ``yc`` [rows, Y] estimated from
    ``mi.pairs_per_unit`` partners per unit (module docstring), with their standard errors:
    ``per_y_se`` for the output channels, ``per_channel_x_se`` for the input channels (each
    ``taps_per_channel`` consecutive input units)."""
    k = mi.pairs_per_unit
    x, y = xc.shape[1], yc.shape[1]
    gen = torch.Generator().manual_seed(seed)
    x_part = torch.randperm(x, generator=gen)[:k].sort().values if k < x else None
    y_part = torch.randperm(y, generator=gen)[:k].sort().values if k < y else None
    whole = replace(mi, return_matrices=True, pairs_per_unit=None)
    incoming = layer_mi(_columns(xc, x_part), yc, 1, whole, ctx)  # [Kx, Y]
    per_y, per_y_se = _total_and_se(incoming.matrix.double(), x, dim=0)
    if y_part is None and x_part is None:
        outgoing = incoming
    else:
        outgoing = layer_mi(xc, _columns(yc, y_part), 1, whole, ctx)  # [X, Ky]
    m = outgoing.matrix.double()
    per_x = m.sum(dim=1) * (y / m.shape[1])
    per_channel = m.reshape(x // taps_per_channel, taps_per_channel, m.shape[1]).sum(dim=1)
    _, per_channel_se = _total_and_se(per_channel, y, dim=1)
    pairs = incoming.matrix.numel() + (0 if outgoing is incoming else m.numel())
    return LayerMI(
        per_x, per_y, None, incoming.rows, per_y_se=per_y_se, per_channel_x_se=per_channel_se,
        pairs=pairs,
    )  # fmt: skip


def measured_pairs(x: int, y: int, groups: int, k: int | None) -> int:
    """Pairs a layer with ``x`` input units, ``y`` outputs and ``groups`` costs."""
    if k is None or groups > 1 or (k >= x and k >= y):
        return x * y // groups
    return min(k, x) * y + x * min(k, y)


__all__ = ["measured_pairs", "sampled_layer_mi"]
