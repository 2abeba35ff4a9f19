"""Public entry points of the estimator: :func:`quantize` and :func:`pairwise_mi`.

Thin wrappers in the style of ``torchvision.ops``: they validate arguments (ValueError naming
the argument), bin float activations, split the work into memory-bounded column chunks
(``tiling.py``) and call one backend (``backends.py``). What is computed is docs/method.md sections
4 and 5.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from causalprune_fast.base import validation as v
from causalprune_fast.base.memory import default_memory_budget
from causalprune_fast.estimator.backends import Backend, resolve
from causalprune_fast.estimator.tiling import plan_chunks, workspace_bytes

__all__ = ["quantize", "pairwise_mi", "PairwiseMISums", "default_memory_budget"]


class PairwiseMISums(NamedTuple):
    """Row and column sums of the MI matrix, float64.

    ``per_x[i] = sum_j MI[i, j]`` (what input unit i passes on: docs/method.md's ``outgoing`` before
    the per-channel reduction) and ``per_y[j] = sum_i MI[i, j]`` (``incoming``).
    """

    per_x: torch.Tensor
    per_y: torch.Tensor


def _quantize_checked(
    impl: Backend, t: torch.Tensor, bins: int, ranges: torch.Tensor | None, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if ranges is not None:
        ranges = v.check_ranges(ranges, t.shape[1], t.device, f"ranges of {name}")
        v.check_finite(t, name)
        return impl.quantize(t, bins, ranges)
    codes, used = impl.quantize(t, bins, None)
    if not bool(torch.isfinite(used).all()):  # a NaN or Inf makes its column's range non-finite
        v.check_finite(t, name)
    return codes, used


def quantize(
    x: torch.Tensor,
    bins: int = 16,
    ranges: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin every column of ``x`` into ``bins`` equal-width bins (docs/method.md section 4).

    Args:
        x: float activations ``[samples, columns]`` (float16, bfloat16, float32 or float64).
        bins: number of bins, 2..256.
        ranges: optional ``[columns, 2]`` (lo, hi) per column; values outside are clamped into
            the edge bins. Default: each column's own min and max.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``(codes, ranges)``: uint8 codes ``[samples, columns]`` (stored column-major, which the
        pairwise kernels read without a copy) and the float64 ranges used.

    Raises:
        ValueError: bad shape or dtype, bins out of range, NaN/Inf in ``x``, bad ranges.
    """
    v.check_matrix(x, "x")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must hold float activations to quantize, got dtype {x.dtype}")
    bins = v.check_bins(bins)
    return _quantize_checked(resolve(backend, x.device), x, bins, ranges, "x")


def _codes(
    impl: Backend,
    t: torch.Tensor,
    bins: int,
    ranges: torch.Tensor | None,
    name: str,
    bins_name: str,
) -> torch.Tensor:
    if t.dtype.is_floating_point:
        return _quantize_checked(impl, t, bins, ranges, name)[0]
    if ranges is not None:
        raise ValueError(f"ranges were given for {name}, but {name} already holds integer codes")
    return v.check_codes(t, bins, name, bins_name)


def pairwise_mi(
    x: torch.Tensor,
    y: torch.Tensor,
    bins: int | tuple[int, int] = 16,
    ranges: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    correction: str | None = None,
    backend: str = "auto",
    *,
    groups: int = 1,
    reduce: str | None = None,
    memory_budget: int | None = None,
) -> torch.Tensor | PairwiseMISums:
    """Plug-in mutual information, in bits, of every (x column, y column) pair.

    Args:
        x: ``[samples, Cx]`` float activations (binned per column, docs/method.md section 4) or
            integer codes in ``[0, bins_x)``.
        y: ``[samples, Cy]``, likewise.
        bins: bins for both, or ``(bins_x, bins_y)``; 2..256.
        ranges: optional ``(ranges_x, ranges_y)``, each ``None`` or ``[columns, 2]`` (lo, hi)
            to bin float columns on fixed ranges (values outside clamp into the edge bins).
        correction: ``None`` (plug-in) or ``"miller-madow"``; both clamp at 0.
        backend: ``"auto"`` (C++ for CPU tensors; the faster of CUDA and Triton for CUDA
            tensors), ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.
        groups: split the columns of x and of y into this many contiguous equal groups and
            measure only pairs within a group (grouped convolutions); other pairs are 0.
        reduce: ``None`` returns the ``[Cx, Cy]`` float32 matrix; ``"sum"`` returns
            :class:`PairwiseMISums` (its row and column sums, float64) without materialising
            it.
        memory_budget: bytes of working memory (excluding the returned matrix); wider inputs
            are processed in column chunks. Default :func:`default_memory_budget`.

    Returns:
        The ``[Cx, Cy]`` float32 MI matrix, or :class:`PairwiseMISums` with ``reduce="sum"``.

    Raises:
        ValueError: bad shapes or dtypes, mismatched samples, bins out of range, codes not
            below their bins, NaN/Inf activations, a backend not available for the tensors'
            device, a memory budget too small for one tile.
    """
    v.check_matrix(x, "x")
    v.check_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    bins_x, bins_y = v.check_bins_pair(bins)
    miller_madow = v.check_correction(correction)
    groups = v.check_column_groups(groups, x.shape[1], y.shape[1])
    if reduce not in (None, "sum"):
        raise ValueError(f"reduce must be None or 'sum', got {reduce!r}")
    budget = v.check_memory_budget(
        default_memory_budget() if memory_budget is None else memory_budget
    )
    if ranges is None:
        ranges = (None, None)
    elif not (isinstance(ranges, tuple | list) and len(ranges) == 2):
        raise ValueError("ranges must be None or a pair (ranges_x, ranges_y)")

    impl = resolve(backend, x.device)
    xc = _codes(impl, x, bins_x, ranges[0], "x", "bins_x")
    yc = _codes(impl, y, bins_y, ranges[1], "y", "bins_y")
    return pairwise_mi_of_codes(impl, xc, yc, bins_x, bins_y, groups, miller_madow, reduce, budget)


def pairwise_mi_of_codes(
    impl: Backend,
    xc: torch.Tensor,
    yc: torch.Tensor,
    bins_x: int,
    bins_y: int,
    groups: int,
    miller_madow: bool,
    reduce: str | None,
    budget: int,
) -> torch.Tensor | PairwiseMISums:
    """:func:`pairwise_mi` of uint8 codes already known to be valid (made by :func:`quantize`
    at these bins, as scoring's are: checked arguments, no second pass over the
    codes), split into column chunks that fit ``budget`` bytes of workspace."""
    samples, cx, cy = xc.shape[0], xc.shape[1], yc.shape[1]

    def fits(ncx: int, ncy: int) -> bool:
        return workspace_bytes(impl.name, samples, bins_x, bins_y, ncx, ncy) <= budget

    need = workspace_bytes(impl.name, samples, bins_x, bins_y, 1, 1)
    describe = (
        f"the {impl.name} backend needs at least {need} bytes for one x column and one y "
        f"column at {samples} samples and bins ({bins_x}, {bins_y}), memory_budget={budget}"
    )
    chunks = list(plan_chunks(cx, cy, groups, fits, describe))
    whole = len(chunks) == 1 and chunks[0].x1 - chunks[0].x0 == cx and chunks[0].y1 == cy

    if reduce is None:
        if whole:
            return impl.pairwise_mi(xc, yc, bins_x, bins_y, groups, miller_madow)
        out = torch.zeros(cx, cy, dtype=torch.float32, device=xc.device)
        for c in chunks:
            out[c.x0 : c.x1, c.y0 : c.y1] = impl.pairwise_mi(
                xc[:, c.x0 : c.x1], yc[:, c.y0 : c.y1], bins_x, bins_y, c.groups, miller_madow
            )
        return out
    if whole:
        return PairwiseMISums(*impl.pairwise_mi_sums(xc, yc, bins_x, bins_y, groups, miller_madow))
    per_x = torch.zeros(cx, dtype=torch.float64, device=xc.device)
    per_y = torch.zeros(cy, dtype=torch.float64, device=xc.device)
    for c in chunks:
        px, py = impl.pairwise_mi_sums(
            xc[:, c.x0 : c.x1], yc[:, c.y0 : c.y1], bins_x, bins_y, c.groups, miller_madow
        )
        per_x[c.x0 : c.x1] += px
        per_y[c.y0 : c.y1] += py
    return PairwiseMISums(per_x, per_y)
