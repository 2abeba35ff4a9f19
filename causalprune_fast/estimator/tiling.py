"""Memory-bounded tiling of one ``pairwise_mi`` call into column chunks.

Joint histograms are independent across pairs (docs/method.md section 7), so a layer of any width is
processed as a sequence of (x columns, y columns) chunks whose backend workspace fits the
budget. Chunks follow the group structure: whole groups at a time when they fit, otherwise
sub-chunks inside one group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass


def _mask_bytes(samples: int, bins: int) -> int:
    return (bins - 1) * ((samples + 511) // 512) * 64


def workspace_bytes(backend: str, samples: int, bins_x: int, bins_y: int, cx: int, cy: int) -> int:
    """Bytes of working memory ``backend`` needs for ``cx`` x columns by ``cy`` y columns
    (output excluded). Linear in the columns for the kernels, quadratic for the reference."""
    if backend == "cpu":  # column-major codes + bin masks
        return cx * (samples + _mask_bytes(samples, bins_x)) + cy * (
            samples + _mask_bytes(samples, bins_y)
        )
    if backend in ("cuda", "triton"):  # column-major codes + per-column marginals
        return (cx + cy) * samples + (cx * bins_x + cy * bins_y) * 8
    if backend == "reference":  # float64 one-hots + float64 joint counts
        return 8 * (samples * (cx * bins_x + cy * bins_y) + cx * cy * bins_x * bins_y)
    raise ValueError(f"unknown backend {backend!r}")


@dataclass(frozen=True)
class Chunk:
    """Columns ``[x0, x1)`` of x against ``[y0, y1)`` of y, split into ``groups`` groups."""

    x0: int
    x1: int
    y0: int
    y1: int
    groups: int


def plan_chunks(
    cx: int, cy: int, groups: int, fits: Callable[[int, int], bool], describe: str
) -> Iterator[Chunk]:
    """Column chunks covering every in-group pair once, each with ``fits(ncx, ncy)`` true.

    ``describe`` completes the error raised when not even one x column against one y column
    fits (the budget is too small for one tile).
    """
    if not fits(1, 1):
        raise ValueError(f"memory_budget is too small for one tile: {describe}")
    gx, gy = cx // groups, cy // groups
    if fits(gx, gy):
        k = 1  # whole groups per chunk: grow while the chunk fits
        while k < groups and fits(2 * k * gx, 2 * k * gy):
            k *= 2
        while k < groups and fits((k + 1) * gx, (k + 1) * gy):
            k += 1
        for g0 in range(0, groups, k):
            g1 = min(groups, g0 + k)
            yield Chunk(g0 * gx, g1 * gx, g0 * gy, g1 * gy, g1 - g0)
        return
    # One group is too big: split its x and y columns, halving the wider side until it fits.
    nx, ny = gx, gy
    while not fits(nx, ny):
        if nx >= ny and nx > 1:
            nx = (nx + 1) // 2
        else:
            ny = (ny + 1) // 2
    for g in range(groups):
        for x0 in range(g * gx, (g + 1) * gx, nx):
            for y0 in range(g * gy, (g + 1) * gy, ny):
                yield Chunk(x0, min(x0 + nx, (g + 1) * gx), y0, min(y0 + ny, (g + 1) * gy), 1)
