"""Pass 2 of the fused ``local``-mode kernels, one kernel for a Linear layer and a convolution
(docs/method.md section 2.2): the joint counts and MI of a tile of ``PX`` x columns by ``PY``
output channels of a slab.

For every chunk of rows the program regenerates the noise of its own x columns (a Linear
layer's input units: ``linear_response.noise``; a convolution's (channel, tap) units of patch
rows: ``conv_response.patch_noise``, ``CONV``), bins it on pass 1's ranges, loads the y codes
pass 1b stored for its channels and adds the int8 one-hot product into int32 counts with the
blocks ``pairwise_mi.py`` uses (``mi_blocks``); the float64 MI epilogue is the same too
(plug-in MI in bits, optional Miller-Madow, clamp at 0, exactly 0 for a constant column),
storing the ``[XCOLS, COUT]`` float32 matrix or adding float64 per-row / per-column sums
atomically. For a convolution with ``groups > 1`` a tile of channels spans only the x columns of
their groups, and pairs across groups are 0 (as ``pairwise_mi(groups=...)``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .conv_response import patch_noise, row_base
from .linear_response import noise
from .mi_blocks import (
    add_block,
    add_rows,
    bin_code,
    count_pairs,
    load_codes,
    store_mi,
    tile_mi,
    tile_sums,
)


@triton.jit
def _local_mi_kernel(
    noise_ptr,  # [2, CIN] float32: noise ranges lo, hi
    base_ptr,  # CONV: [3, S] int32 base coordinates of the rows (unused otherwise)
    geo_ptr,  # CONV: int32 geometry (conv_response.GEO_FIELDS; unused otherwise)
    ranges_ptr,  # [XCOLS + COUT, 2] float64 binning ranges of x, then of y (pass 1)
    codes_ptr,  # [C1 - C0, S] uint8 y codes of the slab's channels (pass 1b)
    out_ptr,  # [XCOLS, COUT] float32 MI matrix (unless SUMS)
    sums_ptr,  # [XCOLS + COUT] float64 row sums, then column sums (SUMS)
    seed,
    S,
    XCOLS,  # x columns: a Linear layer's input units, a convolution's (channel, tap) units
    XSTRIDE,  # CONV: x column i is unit i * XSTRIDE + XOFF
    XOFF,
    XG,  # CONV: x columns per group
    COUT,
    bins,
    C0,  # the slab's channels [C0, C1)
    C1,
    TILES_Y,  # pair tiles along the slab's channels: cdiv(C1 - C0, PY)
    CONV: tl.constexpr,  # patch rows of a convolution (else noise rows of a Linear layer)
    MILLER_MADOW: tl.constexpr,
    SUMS: tl.constexpr,
    PX: tl.constexpr,
    PY: tl.constexpr,
    SB: tl.constexpr,  # padded bins per sub-block (x and y have the same bins)
    K: tl.constexpr,  # sub-blocks per column: padded bins = K * SB
    BLOCK_S: tl.constexpr,
):
    """Pass 2: joint counts and MI of a PX x PY tile of (x column, output channel) pairs of
    the slab: x regenerated and binned, y codes loaded."""
    pid = tl.program_id(0)
    t_y = pid % TILES_Y
    jy = t_y * PY + tl.arange(0, PY)  # rows of the slab's codes
    iy = C0 + jy
    valid_y = iy < C1
    if CONV:  # the x columns of the groups of the tile's channels
        COUT_G = tl.load(geo_ptr + 12)
        oc0 = C0 + t_y * PY
        x_begin = (oc0 // COUT_G) * XG
        x_end = ((tl.minimum(oc0 + PY, C1) - 1) // COUT_G + 1) * XG
        ix = x_begin + (pid // TILES_Y) * PX + tl.arange(0, PX)
        valid_x = ix < x_end
        unit_x = tl.where(valid_x, ix * XSTRIDE + XOFF, 2147483647)
    else:
        ix = (pid // TILES_Y) * PX + tl.arange(0, PX)
        valid_x = ix < XCOLS
        lo_x = tl.load(noise_ptr + ix, mask=valid_x, other=0.0)[:, None]
        hi_x = tl.load(noise_ptr + XCOLS + ix, mask=valid_x, other=0.0)[:, None]
    xr = ranges_ptr + ix.to(tl.int64) * 2
    xr_lo = tl.load(xr, mask=valid_x, other=0.0)[:, None]
    xr_hi = tl.load(xr + 1, mask=valid_x, other=0.0)[:, None]

    joint, marg_x, nz_xy, nz_x, cols0, cols1 = tile_sums(PX, PY, SB)
    for kx in tl.static_range(K):
        rows = tl.zeros([PX, SB, PY], tl.int32)
        for ky in tl.static_range(K):
            acc = tl.zeros([PX * SB, PY * SB], tl.int32)
            for s0 in range(0, S, BLOCK_S):
                offs_s = s0 + tl.arange(0, BLOCK_S)
                in_s = offs_s < S
                # x: the tile's own columns, regenerated and binned.
                if CONV:
                    b0, b1, b2 = row_base(base_ptr, offs_s, S)
                    u_x = patch_noise(seed, offs_s, b0, b1, b2, unit_x, noise_ptr, geo_ptr)
                else:
                    u_x = noise(seed, offs_s[None, :], ix[:, None], XCOLS, lo_x, hi_x)
                # Ranges of float32 values: hi - lo cannot overflow a double (WIDE=False).
                cx = bin_code(u_x, xr_lo, xr_hi, bins, False)
                cx = tl.where(valid_x[:, None] & in_s[None, :], cx, -1)
                # y: the codes pass 1b stored.
                cy = load_codes(codes_ptr, jy, valid_y, offs_s, S)
                acc = count_pairs(acc, cx, cy, kx, ky, SB, SB)
            joint, nz_xy, rows, cols0, cols1 = add_block(acc, ky, joint, nz_xy, rows, cols0,
                                                         cols1, PX, PY)  # fmt: skip
        marg_x, nz_x = add_rows(rows, marg_x, nz_x)

    mi = tile_mi(joint, marg_x, nz_x, nz_xy, cols0, cols1, S, K, MILLER_MADOW)
    if CONV:  # pairs across groups are 0
        same = (ix // XG)[:, None] == (iy // COUT_G)[None, :]
        mi = tl.where(same, mi, 0.0)
    store_mi(mi, ix, iy, valid_x, valid_y, out_ptr, sums_ptr, XCOLS, COUT, SUMS)
