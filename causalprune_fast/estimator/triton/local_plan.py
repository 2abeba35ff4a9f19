"""Host-side launch planning shared by the fused ``local``-mode kernels (local_linear.py,
local_conv.py): how passes 1 and 1b split the rows into programs, and the slabs of output
channels whose stored y codes fit the memory budget (docs/method.md section 2.2)."""

from __future__ import annotations

import triton

from causalprune_fast.base import validation as v

from .mi_blocks import INTERPRET


def row_parts(
    samples: int, block_s: int, tiles: int, interpret: bool = INTERPRET
) -> tuple[int, int]:
    """``(parts, rows_per_program)``: the rows split into ``parts`` consecutive runs of
    ``rows_per_program`` rows (a multiple of ``block_s``, so every program's steps start on
    multiples of ``block_s``), enough that ``parts * tiles`` programs fill the device (about
    1024 on a GPU, 4 under the interpreter)."""
    target = 4 if interpret else 1024
    parts = max(1, min(triton.cdiv(samples, block_s), triton.cdiv(target, tiles)))
    rows_per_program = triton.cdiv(triton.cdiv(samples, parts), block_s) * block_s
    return triton.cdiv(samples, rows_per_program), rows_per_program


def code_budget(memory_budget: int | None) -> int:
    """The checked memory budget in bytes (default ``default_memory_budget()``)."""
    if memory_budget is None:
        from causalprune_fast.estimator.ops import default_memory_budget

        return default_memory_budget()
    return v.check_memory_budget(memory_budget)


def channel_slabs(cout: int, samples: int, py: int, yw: int, budget: int) -> list[tuple[int, int]]:
    """Output channels ``[c0, c1)`` per slab, so that a slab's y codes (``(c1 - c0) * samples``
    uint8) fit ``budget`` bytes: as wide as the budget allows, a multiple of ``yw`` (the
    channel blocks of passes 1 and 1b) where at least ``yw`` channels fit, else of ``py`` (one
    pass-2 tile of channels).

    Raises:
        ValueError: not even ``min(py, cout)`` channels' codes fit the budget.
    """
    fit = budget // samples
    least = min(py, cout)
    if fit < least:
        raise ValueError(
            f"memory_budget={budget} bytes cannot hold the y codes of {least} output "
            f"channel(s) at {samples} samples ({least * samples} bytes); raise memory_budget "
            "or lower samples"
        )
    width = fit // yw * yw if fit >= yw else fit // py * py
    width = min(max(width, least), cout)  # least: py channels, or all where fewer than py
    return [(c0, min(c0 + width, cout)) for c0 in range(0, cout, width)]
