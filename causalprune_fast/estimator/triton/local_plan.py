"""Host-side launch planning shared by the fused ``local``-mode kernels (local_linear.py,
local_conv.py): the launch shapes of their passes (:class:`LocalTileConfig`), how passes 1 and
1b split the rows into programs, and the slabs of output channels whose stored y codes fit the
memory budget (docs/method.md section 2.2)."""

from __future__ import annotations

from dataclasses import dataclass

import triton

from causalprune_fast.base import validation as v
from causalprune_fast.base.memory import default_memory_budget

from .mi_blocks import INTERPRET
from .pairwise_mi import MAX_SUB_BINS, pow2, tile_config

_MIN_DOT = 16  # smallest M / N / K of tl.dot
# Launch shapes on a GPU; the interpreter (NumPy, one program at a time) takes larger blocks.
GPU_BLOCK_S, GPU_BLOCK_K = 64, 32
INTERPRET_BLOCK_S, INTERPRET_BLOCK_K = 1024, 64
_INTERPRET_SIDE = 512  # rows / columns of an interpreted count tile


@dataclass(frozen=True)
class LocalTileConfig:
    px: int  # input units per pass-2 tile
    sbx: int  # padded x bins per sub-block
    kx: int
    py: int  # output channels per pass-2 tile
    sby: int
    ky: int
    yw: int  # channels per y computation (passes 1 and 1b): max(py, 16)
    block_s: int  # samples per step (every pass)
    block_k: int  # inputs per step of the layer's matrix product (passes 1 and 1b)
    num_warps: int  # pass 2
    num_stages: int


def local_tile_config(
    cin: int, cout: int, bins: int, samples: int | None = None, interpret: bool = INTERPRET
) -> LocalTileConfig:
    """Launch shapes of the passes.

    GPU: pass-2 pair tiles as ``pairwise_mi.tile_config`` (about 128 x 128 int32 counts per
    program, whole pairs), y computed (passes 1 and 1b) ``max(py, 16)`` channels at a time
    (the smallest tl.dot M), 64 samples x 32 inputs per step. Interpreter (NumPy, where every
    op costs Python overhead): up to 512 x 512 count tiles and 1024-sample steps, so that few
    programs and steps run (no more than ``samples`` needs); the kernels are the same, only their
    constexpr shapes differ.
    """
    if not interpret:
        c = tile_config(cin, cout, bins, bins, interpret=False)
        return LocalTileConfig(c.px, c.sbx, c.kx, c.py, c.sby, c.ky, max(c.py, _MIN_DOT),
                               GPU_BLOCK_S, GPU_BLOCK_K, c.num_warps, 1)  # fmt: skip
    pb = pow2(bins)
    sb = min(pb, MAX_SUB_BINS)
    px = max(min(pow2(cin), max(1, _INTERPRET_SIDE // sb)), _MIN_DOT // sb)
    py = max(min(pow2(cout), max(1, _INTERPRET_SIDE // sb)), _MIN_DOT // sb)
    block_s = INTERPRET_BLOCK_S if samples is None else min(INTERPRET_BLOCK_S, pow2(samples))
    block_s = max(block_s, GPU_BLOCK_S)
    return LocalTileConfig(px, sb, pb // sb, py, sb, pb // sb, max(py, _MIN_DOT), block_s,
                           INTERPRET_BLOCK_K, 4, 1)  # fmt: skip


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
