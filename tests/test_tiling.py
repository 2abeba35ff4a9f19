"""Column chunking within a memory budget (causalprune_fast/tiling.py)."""

from __future__ import annotations

import itertools

import pytest

from causalprune_fast.estimator.tiling import plan_chunks, workspace_bytes


def covered(chunks):
    pairs = []
    for c in chunks:
        gx, gy = (c.x1 - c.x0) // c.groups, (c.y1 - c.y0) // c.groups
        for g in range(c.groups):
            xs = range(c.x0 + g * gx, c.x0 + (g + 1) * gx)
            ys = range(c.y0 + g * gy, c.y0 + (g + 1) * gy)
            pairs += itertools.product(xs, ys)
    return pairs


@pytest.mark.parametrize(
    "cx,cy,groups,limit",
    [(10, 6, 1, 5), (10, 6, 1, 1000), (64, 8, 8, 12), (72, 8, 8, 7), (50, 70, 1, 20), (9, 1, 1, 2)],
)
def test_chunks_cover_every_in_group_pair_once_within_budget(cx, cy, groups, limit):
    def fits(nx, ny):
        return nx + ny <= limit

    chunks = list(plan_chunks(cx, cy, groups, fits, "test"))
    pairs = covered(chunks)
    gx, gy = cx // groups, cy // groups
    want = [(i, j) for i in range(cx) for j in range(cy) if i // gx == j // gy]
    assert sorted(pairs) == want  # every in-group pair, exactly once
    assert all(fits(c.x1 - c.x0, c.y1 - c.y0) for c in chunks)


def test_budget_too_small_for_one_tile():
    with pytest.raises(ValueError, match="too small for one tile: needs 7"):
        list(plan_chunks(4, 4, 1, lambda nx, ny: False, "needs 7"))


def test_workspace_grows_linearly_for_kernels_and_quadratically_for_reference():
    for backend in ("cpu", "cuda", "triton"):
        assert workspace_bytes(backend, 1000, 16, 16, 20, 20) == 2 * workspace_bytes(
            backend, 1000, 16, 16, 10, 10
        )
    ref = workspace_bytes("reference", 1000, 16, 16, 20, 20) - 8 * 1000 * 16 * 40
    assert ref == 8 * 400 * 256
    with pytest.raises(ValueError, match="unknown backend"):
        workspace_bytes("numpy", 1, 2, 2, 1, 1)
