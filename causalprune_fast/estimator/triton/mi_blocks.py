"""Building blocks shared by every Triton kernel of causalprune_fast, as ``mi_math.h`` is for
the C++ and CUDA kernels: binning (docs/method.md section 4), stored uint8 codes, joint counts
of a tile of pairs as one int8 one-hot matrix product, and the float64 MI epilogue
(docs/method.md section 5).

A tile holds ``PX`` x columns and ``PY`` y columns. Bins are padded to a power of two and split
into sub-blocks of ``SBX`` (``SBY``) bins, ``KX`` (``KY``) of them per column (at most 2: more
than 128 padded bins would make a one-pair tile the whole register file). For one sub-block
pair the counts are

    rows r = (x column i, bin a),  cols c = (y column j, bin b),
    counts[r, c] = sum_s onehot_x[s, r] * onehot_y[s, c],

an int8 product accumulated in int32 (exact for S < 2^31). A kernel loops over the sub-blocks
and, inside, over chunks of samples calling :func:`count_pairs`; after each sub-block it folds
the counts into the running sums of :func:`tile_sums` with :func:`add_block` (and
:func:`add_rows` after each x sub-block), and finally :func:`tile_mi` and :func:`store_mi`
turn them into MI. Codes are int32 in the kernels; -1 marks a sample or column
outside the problem and matches no bin.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Decided when the kernels are defined, as triton.jit does: the kernels are interpreted (NumPy
# on the host) exactly when this was "1" at import time. The one definition for the package.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

LN2 = tl.constexpr(0.6931471805599453)  # float64 nearest ln 2, as kLn2 in mi_math.h


# ----------------------------------------------------------------------------- binning
@triton.jit
def bin_code(v, lo, hi, bins, WIDE: tl.constexpr):
    """quantize_value of mi_math.h: equal-width int32 code of v on [lo, hi], in float64.

    t = (v - lo) / (hi - lo) * bins in this order; !(t >= 1) -> 0 (also NaN); t >= bins - 1 ->
    bins - 1; else floor(t), which is truncation since t >= 1. A degenerate range (!(hi > lo))
    gives bins - 1 for values above hi and 0 otherwise. Where hi - lo overflows (a finite range
    wider than the largest double) every operand is halved first; h == 1 elsewhere is exact,
    so ordinary ranges keep their codes bit for bit. A contracted multiply-add cannot change
    the result: one of its products (times h) is always exact. WIDE=False leaves the halving
    out, for ranges that cannot overflow (those of float32 values: |hi - lo| < 2^129), where
    it would change nothing but cost registers in a hot loop.
    """
    v = v.to(tl.float64)
    if WIDE:
        d = hi - lo
        h = tl.where(d - d == 0.0, 1.0, 0.5)  # 0.5 where hi - lo is inf (or NaN)
        span = tl.where(hi > lo, hi * h - lo * h, 1.0)  # == (hi - lo) * h wherever it is used
        t = (v * h - lo * h) / span * bins
    else:
        span = tl.where(hi > lo, hi - lo, 1.0)  # == hi - lo wherever it is used
        t = (v - lo) / span * bins
    inner = (t >= 1.0) & (t < bins - 1)
    code = tl.where(inner, t, 0.0).to(tl.int32)  # only in-range values reach the conversion
    code = tl.where(t >= bins - 1, bins - 1, code)
    return tl.where(hi > lo, code, tl.where(v > hi, bins - 1, 0))


# ----------------------------------------------------------------------------- stored codes
@triton.jit
def store_codes(codes_ptr, rows, offs_s, S, codes, m):
    """Store int32 codes [P, BLOCK_S] (each in [0, 256)) as uint8 at codes_ptr[rows, offs_s]
    of a [*, S] row-major array (int64 offsets: rows * S may exceed 2^31) where m."""
    ptr = codes_ptr + rows.to(tl.int64)[:, None] * S + offs_s[None, :]
    tl.store(ptr, codes.to(tl.uint8), mask=m)


@triton.jit
def load_codes(codes_ptr, rows, valid, offs_s, S):
    """int32 codes [P, BLOCK_S] of codes_ptr[rows, offs_s] ([*, S] uint8, as store_codes
    writes them); -1 (no bin) where not valid or offs_s >= S."""
    m = valid[:, None] & (offs_s < S)[None, :]
    ptr = codes_ptr + rows.to(tl.int64)[:, None] * S + offs_s[None, :]
    codes = tl.load(ptr, mask=m, other=0).to(tl.int32)
    return tl.where(m, codes, -1)


# ----------------------------------------------------------------------------- joint counts
@triton.jit
def _onehot(codes, first_bin, SB: tl.constexpr):
    """int32 codes [P, BLOCK_S] -> int8 one-hot [P * SB, BLOCK_S] of bins first_bin + [0, SB)."""
    P: tl.constexpr = codes.shape[0]
    BLOCK_S: tl.constexpr = codes.shape[1]
    bins = first_bin + tl.arange(0, SB)
    hot = (codes[:, None, :] == bins[None, :, None]).to(tl.int8)
    return tl.reshape(hot, [P * SB, BLOCK_S])


@triton.jit
def count_pairs(acc, cx, cy, kx: tl.constexpr, ky: tl.constexpr, SBX: tl.constexpr,
                SBY: tl.constexpr):  # fmt: skip
    """acc [PX * SBX, PY * SBY] int32 += joint counts of x sub-block kx and y sub-block ky over
    one chunk of samples: cx [PX, BLOCK_S] and cy [PY, BLOCK_S] int32 codes (-1: no bin)."""
    ox = _onehot(cx, kx * SBX, SBX)  # A operand [BM, BLOCK_S]
    # y likewise as [BN, BLOCK_S], transposed into the B operand [BLOCK_S, BN]: int8 wgmma
    # wants B K-major (samples contiguous), which this layout already is.
    oy = tl.trans(_onehot(cy, ky * SBY, SBY))
    return tl.dot(ox, oy, acc, out_dtype=tl.int32)


# ----------------------------------------------------------------------------- MI epilogue
@triton.jit
def _xlogx(n):
    """n ln n of float64 counts n >= 0, with 0 ln 0 = 0 (xlogx in mi_math.h)."""
    pos = n > 0.0
    return tl.where(pos, n * tl.log(tl.where(pos, n, 1.0)), 0.0)


@triton.jit
def _pair_sum(t):
    """[PX, SBX, PY, SBY] -> [PX, PY]: the sum over each pair's SBX x SBY block."""
    return tl.sum(tl.sum(t, axis=3), axis=1)


@triton.jit
def tile_sums(PX: tl.constexpr, PY: tl.constexpr, SBY: tl.constexpr):
    """Zeroed running sums of a tile of PX x PY pairs: (joint, marg_x, nz_xy, nz_x, cols0,
    cols1) = sum_ab n_ab ln n_ab and sum_a n_a ln n_a (float64), non-empty cells and x bins
    (int32), and the y marginals n_b of y sub-blocks 0 and 1 [PX, PY, SBY] (int32)."""
    z64 = tl.zeros([PX, PY], tl.float64)
    z32 = tl.zeros([PX, PY], tl.int32)
    cols = tl.zeros([PX, PY, SBY], tl.int32)
    return z64, z64, z32, z32, cols, cols


@triton.jit
def add_block(acc, ky: tl.constexpr, joint, nz_xy, rows, cols0, cols1, PX: tl.constexpr,
              PY: tl.constexpr):  # fmt: skip
    """Fold the counts acc of x sub-block kx and y sub-block ky into the running sums.

    joint [PX, PY] += sum_ab n_ab ln n_ab and nz_xy += non-empty cells; rows [PX, SBX, PY] +=
    the x marginals n_a (completed over the y sub-blocks); cols0 / cols1 (for ky = 0 / 1)
    [PX, PY, SBY] += the y marginals n_b (completed over the x sub-blocks).
    """
    SBX: tl.constexpr = acc.shape[0] // PX
    SBY: tl.constexpr = acc.shape[1] // PY
    n = tl.reshape(acc, [PX, SBX, PY, SBY])  # [x column, x bin, y column, y bin]
    joint += _pair_sum(_xlogx(n.to(tl.float64)))
    nz_xy += _pair_sum((n > 0).to(tl.int32))
    rows += tl.sum(n, axis=3)
    if ky == 0:
        cols0 += tl.sum(n, axis=1)
    else:
        cols1 += tl.sum(n, axis=1)
    return joint, nz_xy, rows, cols0, cols1


@triton.jit
def add_rows(rows, marg_x, nz_x):
    """Fold the completed x marginals rows [PX, SBX, PY] of one x sub-block into marg_x
    (sum_a n_a ln n_a) and nz_x (non-empty x bins)."""
    marg_x += tl.sum(_xlogx(rows.to(tl.float64)), axis=1)
    nz_x += tl.sum((rows > 0).to(tl.int32), axis=1)
    return marg_x, nz_x


@triton.jit
def tile_mi(joint, marg_x, nz_x, nz_xy, cols0, cols1, S, KY: tl.constexpr,
            MILLER_MADOW: tl.constexpr):  # fmt: skip
    """The [PX, PY] MI in bits of the tile from its running sums: mi_bits of mi_math.h,
    float64, in its order of operations (plug-in MI, optional Miller-Madow term, clamp at 0,
    exactly 0 where a column has one non-empty bin)."""
    marg_y = tl.sum(_xlogx(cols0.to(tl.float64)), axis=2)
    nz_y = tl.sum((cols0 > 0).to(tl.int32), axis=2)
    if KY == 2:
        marg_y += tl.sum(_xlogx(cols1.to(tl.float64)), axis=2)
        nz_y += tl.sum((cols1 > 0).to(tl.int32), axis=2)
    s_f = tl.zeros(joint.shape, tl.float64) + S
    mi = (joint - marg_x - marg_y + _xlogx(s_f)) / (s_f * LN2)
    if MILLER_MADOW:
        mi += (nz_x + nz_y - nz_xy - 1).to(tl.float64) / (2.0 * s_f * LN2)
    mi = tl.where(mi > 0.0, mi, 0.0)
    # A constant column (one non-empty bin) carries exactly zero information.
    return tl.where((nz_x <= 1) | (nz_y <= 1), 0.0, mi)


@triton.jit
def store_mi(mi, col_x, col_y, valid_x, valid_y, out_ptr, sums_ptr, CX, CY, SUMS: tl.constexpr):
    """Write the [PX, PY] MI of columns col_x x col_y: into the [CX, CY] float32 matrix at
    out_ptr, or (SUMS) atomically added to the float64 row sums sums_ptr[col_x] and column
    sums sums_ptr[CX + col_y]."""
    valid = valid_x[:, None] & valid_y[None, :]
    mi = tl.where(valid, mi, 0.0)
    if SUMS:
        tl.atomic_add(sums_ptr + col_x, tl.sum(mi, axis=1), mask=valid_x)
        tl.atomic_add(sums_ptr + CX + col_y, tl.sum(mi, axis=0), mask=valid_y)
    else:
        out = col_x.to(tl.int64)[:, None] * CY + col_y[None, :]
        tl.store(out_ptr + out, mi.to(tl.float32), mask=valid)
