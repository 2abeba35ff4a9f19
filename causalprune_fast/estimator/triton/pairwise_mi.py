"""Fused joint-histogram + mutual-information Triton kernel (docs/method.md sections 5 and 7).

The joint counts of a tile of pairs are one integer matrix product on the tensor cores:

    rows r = (x column i, bin a),  cols c = (y column j, bin b),
    counts[r, c] = sum_s onehot_x[s, r] * onehot_y[s, c],

with int8 one-hot operands built in registers from the uint8 codes of a chunk of samples
(a compare against ``tl.arange`` of the padded bins) and int32 accumulation over all samples,
which is exact for S < 2^31. Bins are padded to a power of two and a tile holds whole pairs
(``BLOCK_M = PX * padded_bins_x``); padded bins never match a code and samples past S are given
code -1, so neither contributes.

The one-hot product and the epilogue are the shared blocks of ``mi_blocks.py``. The epilogue
runs in the same program on the int32 tile, in float64: per pair the joint term
``sum_ab n_ab ln n_ab``, the marginals ``n_a = sum_b n_ab`` and ``n_b = sum_a n_ab`` taken from the
same tile, and ``mi_bits`` of ``csrc/causalprune_fast/mi_math.h`` (plug-in MI in bits, optional
Miller-Madow term, clamp at 0). The count tile never reaches global memory: only the [Cx, Cy]
float32 MI matrix is stored, or, for the sums variant, each tile's row and column sums are
atomically added to float64 per-column totals.

More than 128 padded bins (129 to 256 bins) would make a one-pair tile 256 x 256 int32, the whole
register file of an SM; such a pair is split into 128-bin sub-blocks (KX x KY of them, at most
2 x 2) that the program visits one after the other, carrying the partial marginals in
registers, so the MI is still computed by the program that counted the pair.

Groups (grouped / depthwise convolutions): x and y columns are split into ``groups`` equal
contiguous blocks and the 1-D grid enumerates only the tiles inside a group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .mi_blocks import (
    INTERPRET,
    add_block,
    add_rows,
    count_pairs,
    store_mi,
    tile_mi,
    tile_sums,
)


@triton.jit
def _pairwise_mi_kernel(
    xt_ptr,  # [Cx, S] uint8 codes, contiguous (one column per row)
    yt_ptr,  # [Cy, S] uint8 codes, contiguous
    out_ptr,  # [Cx, Cy] float32 MI matrix (unless SUMS)
    sums_ptr,  # [Cx + Cy] float64 row sums, then column sums (SUMS)
    S,
    CXG,  # x columns per group
    CYG,  # y columns per group
    CX,  # columns of x (offset of the column sums)
    CY,  # row stride of out
    TILES_X,  # tiles per group along x: cdiv(CXG, PX)
    TILES_Y,
    MILLER_MADOW: tl.constexpr,
    SUMS: tl.constexpr,
    PX: tl.constexpr,  # x columns per tile
    SBX: tl.constexpr,  # padded x bins per sub-block (power of two, <= 128)
    KX: tl.constexpr,  # sub-blocks per x column: padded bins = KX * SBX
    PY: tl.constexpr,
    SBY: tl.constexpr,
    KY: tl.constexpr,
    BLOCK_S: tl.constexpr,  # samples per step (the K of the matrix product)
):
    # Tile -> (group, x tile, y tile). Neighbouring programs share the x columns.
    pid = tl.program_id(0)
    g = pid // (TILES_X * TILES_Y)
    t = pid % (TILES_X * TILES_Y)
    ix = (t // TILES_Y) * PX + tl.arange(0, PX)
    iy = (t % TILES_Y) * PY + tl.arange(0, PY)
    valid_x = ix < CXG
    valid_y = iy < CYG
    col_x = g * CXG + ix
    col_y = g * CYG + iy
    x_rows = xt_ptr + col_x.to(tl.int64) * S  # start of each x column's codes
    y_rows = yt_ptr + col_y.to(tl.int64) * S

    joint, marg_x, nz_xy, nz_x, cols0, cols1 = tile_sums(PX, PY, SBY)
    for kx in tl.static_range(KX):
        rows = tl.zeros([PX, SBX, PY], tl.int32)  # n_a, completed over the y sub-blocks
        for ky in tl.static_range(KY):
            acc = tl.zeros([PX * SBX, PY * SBY], tl.int32)
            for s0 in range(0, S, BLOCK_S):
                offs_s = s0 + tl.arange(0, BLOCK_S)
                in_s = offs_s < S
                # Samples past S and columns past the group get code -1: an all-zero one-hot.
                mx = valid_x[:, None] & in_s[None, :]
                cx = tl.load(x_rows[:, None] + offs_s[None, :], mask=mx, other=0)
                cx = tl.where(mx, cx.to(tl.int32), -1)
                my = valid_y[:, None] & in_s[None, :]
                cy = tl.load(y_rows[:, None] + offs_s[None, :], mask=my, other=0)
                cy = tl.where(my, cy.to(tl.int32), -1)
                acc = count_pairs(acc, cx, cy, kx, ky, SBX, SBY)
            joint, nz_xy, rows, cols0, cols1 = add_block(acc, ky, joint, nz_xy, rows, cols0,
                                                         cols1, PX, PY)  # fmt: skip
        marg_x, nz_x = add_rows(rows, marg_x, nz_x)

    mi = tile_mi(joint, marg_x, nz_x, nz_xy, cols0, cols1, S, KY, MILLER_MADOW)
    store_mi(mi, col_x, col_y, valid_x, valid_y, out_ptr, sums_ptr, CX, CY, SUMS)


@dataclass(frozen=True)
class TileConfig:
    px: int  # x columns per tile
    sbx: int  # padded x bins per sub-block
    kx: int  # x sub-blocks per column
    py: int
    sby: int
    ky: int
    block_s: int
    num_warps: int
    num_stages: int


def pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 << max(0, n - 1).bit_length()


MAX_SUB_BINS = 128  # larger padded bins are split into sub-blocks of this size
_MAX_TILE = 128 * 128  # int32 accumulator elements per program
_MAX_SIDE = 256  # rows (or columns) of the accumulator
_MIN_DOT = 16  # smallest M / N of tl.dot


def tile_config(
    cxg: int, cyg: int, bins_x: int, bins_y: int, interpret: bool = INTERPRET
) -> TileConfig:
    """Tile shape for one group of cxg x cyg columns.

    About 128 x 128 int32 counts per program (64 accumulator registers per thread with 8
    warps), whole pairs per tile, no more columns per tile than the group has (depthwise layers
    have 9 x 1 columns per group: one 16 x 1-column tile, not a mostly empty square).
    For sm_90 (compile_check): the products become int8 wgmma, the sample loop is free of
    register spills, and the float64 epilogue spills some registers once per tile. The loop is
    bound by building the one-hots on the CUDA cores (compare, select, byte store to shared
    memory per one-hot element), not by the tensor cores.
    """
    pbx, pby = pow2(bins_x), pow2(bins_y)
    sbx, sby = min(pbx, MAX_SUB_BINS), min(pby, MAX_SUB_BINS)
    py = min(pow2(cyg), max(1, MAX_SUB_BINS // sby))
    py = max(py, _MIN_DOT // sby)
    px = min(pow2(cxg), max(1, _MAX_TILE // (py * sby * sbx)), max(1, _MAX_SIDE // sbx))
    px = max(px, _MIN_DOT // sbx)
    tile = px * sbx * py * sby
    if interpret:
        # numpy runs each program: few large sample steps keep the Python overhead down.
        block_s, num_warps, num_stages = 256, 4, 1
    else:
        block_s = 64
        num_warps = 8 if tile >= 128 * 128 else 4
        num_stages = 3
    return TileConfig(px, sbx, pbx // sbx, py, sby, pby // sby, block_s, num_warps, num_stages)


def _launch(x, y, bins_x, bins_y, groups, miller_madow, want_sums, config):
    assert x.dim() == 2 and y.dim() == 2 and x.dtype == torch.uint8 and y.dtype == torch.uint8
    assert x.shape[0] == y.shape[0] and x.shape[0] >= 1 and x.device == y.device
    assert 2 <= bins_x <= 256 and 2 <= bins_y <= 256 and groups >= 1
    S, cx = x.shape
    cy = y.shape[1]
    assert cx % groups == 0 and cy % groups == 0 and S < 2**31
    # Column-major codes: a no-op for codes made by quantize.
    xt = x.t().contiguous()
    yt = y.t().contiguous()
    cxg, cyg = cx // groups, cy // groups
    cfg = config or tile_config(cxg, cyg, bins_x, bins_y)
    tiles_x, tiles_y = triton.cdiv(cxg, cfg.px), triton.cdiv(cyg, cfg.py)
    grid = (groups * tiles_x * tiles_y,)
    # Unused pointer arguments get a placeholder tensor: they are never accessed.
    sums = torch.zeros(cx + cy if want_sums else 1, dtype=torch.float64, device=x.device)
    out = sums if want_sums else torch.zeros((cx, cy), dtype=torch.float32, device=x.device)
    _pairwise_mi_kernel[grid](
        xt_ptr=xt, yt_ptr=yt, out_ptr=out, sums_ptr=sums,
        S=S, CXG=cxg, CYG=cyg, CX=cx, CY=cy, TILES_X=tiles_x, TILES_Y=tiles_y,
        MILLER_MADOW=bool(miller_madow), SUMS=want_sums,
        PX=cfg.px, SBX=cfg.sbx, KX=cfg.kx, PY=cfg.py, SBY=cfg.sby, KY=cfg.ky,
        BLOCK_S=cfg.block_s, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return (sums[:cx], sums[cx:]) if want_sums else out


def pairwise_mi(
    x: torch.Tensor,
    y: torch.Tensor,
    bins_x: int,
    bins_y: int,
    groups: int = 1,
    miller_madow: bool = False,
    *,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """MI in bits of every in-group pair of columns of codes x [S, Cx] and y [S, Cy].

    Returns [Cx, Cy] float32; pairs in different groups are 0. ``config`` overrides the tile
    shape (tests and benchmarks).
    """
    return _launch(x, y, bins_x, bins_y, groups, miller_madow, False, config)


def pairwise_mi_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    bins_x: int,
    bins_y: int,
    groups: int = 1,
    miller_madow: bool = False,
    *,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums of the ``pairwise_mi`` matrix, float64, without materialising it.

    per_x[i] = sum_j MI[i, j], per_y[j] = sum_i MI[i, j]. The float64 atomics make the last
    bits depend on the order in which tiles finish.
    """
    return _launch(x, y, bins_x, bins_y, groups, miller_madow, True, config)
