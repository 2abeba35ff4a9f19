"""Triton kernels of ``quantize``: per-column ranges and equal-width codes
(docs/method.md section 4).

Two kernels, in the style of Triton's tutorials:

* ``_column_min_max_kernel`` reduces a [rows, columns] tile stream to per-column minima and
  maxima in float64, NaN-propagating. Long columns are split over several programs (partial
  results), then the same kernel reduces the partials, so a few wide columns still fill a GPU.
* ``_quantize_kernel`` bins every value with the arithmetic of ``quantize_value`` in
  ``csrc/causalprune_fast/mi_math.h`` (float64, same operation order, so the codes are
  bit-identical to the C++ and CUDA ops) and writes them column-major: ``codes_t`` is [C, S]
  contiguous and the caller gets its transpose, the layout the MI kernels read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .mi_blocks import INTERPRET, bin_code

# Launch shapes on a GPU. The interpreter (numpy, one program at a time) gets fewer, larger
# programs instead.
QUANTIZE_BLOCK_S, QUANTIZE_BLOCK_C, QUANTIZE_WARPS = 64, 64, 4
MINMAX_BLOCK_R, MINMAX_BLOCK_C = 32, 64


@triton.jit
def _column_min_max_kernel(
    lo_src,  # [rows, C] values whose minimum is wanted (any float dtype)
    hi_src,  # [rows, C] values whose maximum is wanted (== lo_src in the first pass)
    stride_r,
    stride_c,
    rows,
    C,
    rows_per_program,  # multiple of BLOCK_R
    lo_out,  # lo_out[p * out_stride_p + c * out_stride_c], float64
    hi_out,
    out_stride_p,
    out_stride_c,
    SAME_SRC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_p = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    r_begin = pid_p * rows_per_program
    r_end = tl.minimum(r_begin + rows_per_program, rows)

    # Element-wise running min / max over the rows this program owns, reduced across the tile
    # once at the end. NaNs are kept out of the comparisons and tracked in a flag instead, so
    # the result does not depend on how the hardware's min / max treat NaN.
    mn = tl.full([BLOCK_R, BLOCK_C], float("inf"), tl.float64)
    mx = tl.full([BLOCK_R, BLOCK_C], float("-inf"), tl.float64)
    nan = tl.zeros([BLOCK_R, BLOCK_C], tl.int32)
    for r0 in range(r_begin, r_end, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask = (offs_r < r_end)[:, None] & mask_c[None, :]
        offs = offs_r.to(tl.int64)[:, None] * stride_r + offs_c.to(tl.int64)[None, :] * stride_c
        v_lo = tl.load(lo_src + offs, mask=mask, other=0.0).to(tl.float64)
        if SAME_SRC:
            v_hi = v_lo
        else:
            v_hi = tl.load(hi_src + offs, mask=mask, other=0.0).to(tl.float64)
        nan = nan | (mask & ((v_lo != v_lo) | (v_hi != v_hi))).to(tl.int32)
        mn = tl.where(mask & (v_lo < mn), v_lo, mn)
        mx = tl.where(mask & (v_hi > mx), v_hi, mx)

    lo = tl.min(mn, axis=0)
    hi = tl.max(mx, axis=0)
    has_nan = tl.max(nan, axis=0) > 0
    lo = tl.where(has_nan, float("nan"), lo)
    hi = tl.where(has_nan, float("nan"), hi)
    out = pid_p.to(tl.int64) * out_stride_p + offs_c.to(tl.int64) * out_stride_c
    tl.store(lo_out + out, lo, mask=mask_c)
    tl.store(hi_out + out, hi, mask=mask_c)


@triton.jit
def _quantize_kernel(
    x_ptr,  # [S, C], any float dtype, any strides
    stride_s,
    stride_c,
    ranges_ptr,  # [C, 2] float64 (lo, hi)
    stride_rc,
    stride_rk,
    codes_ptr,  # [C, S] uint8, contiguous (column-major codes)
    S,
    C,
    bins,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_s = offs_s < S
    mask_c = offs_c < C
    mask = mask_s[:, None] & mask_c[None, :]

    lo = tl.load(ranges_ptr + offs_c.to(tl.int64) * stride_rc, mask=mask_c, other=0.0)
    hi = tl.load(ranges_ptr + offs_c.to(tl.int64) * stride_rc + stride_rk, mask=mask_c, other=1.0)
    lo = lo.to(tl.float64)[None, :]
    hi = hi.to(tl.float64)[None, :]
    offs = offs_s.to(tl.int64)[:, None] * stride_s + offs_c.to(tl.int64)[None, :] * stride_c
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float64)

    # quantize_value (mi_math.h), in float64 and in its order of operations.
    code = bin_code(v, lo, hi, bins, True)  # given ranges may span the doubles

    # Column-major store: codes_t[c, s]. Rows of the tile are consecutive in memory.
    out = offs_c.to(tl.int64)[None, :] * S + offs_s[:, None]
    tl.store(codes_ptr + out, code.to(tl.uint8), mask=mask)


def _column_ranges(x: torch.Tensor) -> torch.Tensor:
    """Per-column (min, max) of x [S, C] as [C, 2] float64, NaN where a column holds a NaN."""
    S, C = x.shape
    ranges = torch.empty((C, 2), dtype=torch.float64, device=x.device)
    block_r, block_c = (64, 64) if INTERPRET else (MINMAX_BLOCK_R, MINMAX_BLOCK_C)
    tiles_c = triton.cdiv(C, block_c)
    # Split long columns so that there are at least a few programs per SM; a second pass of the
    # same kernel reduces the partial results.
    target_programs = 4 if INTERPRET else 1024
    parts = max(1, min(triton.cdiv(S, block_r * 16), triton.cdiv(target_programs, tiles_c)))
    rows_per_program = triton.cdiv(triton.cdiv(S, parts), block_r) * block_r
    parts = triton.cdiv(S, rows_per_program)
    if parts == 1:
        lo_out, hi_out = ranges[:, 0], ranges[:, 1]
        out_stride_p, out_stride_c = 0, 2
    else:
        partial = torch.empty((2, parts, C), dtype=torch.float64, device=x.device)
        lo_out, hi_out = partial[0], partial[1]
        out_stride_p, out_stride_c = C, 1
    _column_min_max_kernel[(tiles_c, parts)](
        lo_src=x, hi_src=x, stride_r=x.stride(0), stride_c=x.stride(1), rows=S, C=C,
        rows_per_program=rows_per_program, lo_out=lo_out, hi_out=hi_out,
        out_stride_p=out_stride_p, out_stride_c=out_stride_c,
        SAME_SRC=True, BLOCK_R=block_r, BLOCK_C=block_c,
    )  # fmt: skip
    if parts > 1:
        rows_per_program = triton.cdiv(parts, block_r) * block_r
        _column_min_max_kernel[(tiles_c, 1)](
            lo_src=lo_out, hi_src=hi_out, stride_r=C, stride_c=1, rows=parts, C=C,
            rows_per_program=rows_per_program, lo_out=ranges[:, 0], hi_out=ranges[:, 1],
            out_stride_p=0, out_stride_c=2,
            SAME_SRC=False, BLOCK_R=block_r, BLOCK_C=block_c,
        )  # fmt: skip
    return ranges


def quantize(
    x: torch.Tensor, bins: int, ranges: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-width codes of every column of ``x`` [S, C] into ``bins`` bins.

    Returns ``(codes, ranges)``: codes [S, C] uint8 stored column-major (strides (1, S)), and the
    [C, 2] float64 ranges used (the given ones, else each column's min and max, NaN for a column
    holding a NaN). Arguments are validated by the caller; only cheap asserts here.
    """
    assert x.dim() == 2 and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    assert x.shape[0] >= 1 and 2 <= bins <= 256
    S, C = x.shape
    if ranges is None:
        ranges = _column_ranges(x)
    else:
        assert ranges.shape == (C, 2) and ranges.dtype == torch.float64
        assert ranges.device == x.device
    codes_t = torch.empty((C, S), dtype=torch.uint8, device=x.device)
    if C > 0:
        # Tiles of 64 samples x 64 columns: reads are coalesced along whichever axis of x is
        # contiguous and the compiler transposes through shared memory for the column-major
        # store. The interpreter prefers fewer, larger programs.
        if INTERPRET:
            block_s, block_c, warps = 256, 64, 4
        else:
            block_s, block_c, warps = QUANTIZE_BLOCK_S, QUANTIZE_BLOCK_C, QUANTIZE_WARPS
        grid = (triton.cdiv(S, block_s), triton.cdiv(C, block_c))
        _quantize_kernel[grid](
            x_ptr=x, stride_s=x.stride(0), stride_c=x.stride(1), ranges_ptr=ranges,
            stride_rc=ranges.stride(0), stride_rk=ranges.stride(1), codes_ptr=codes_t, S=S, C=C,
            bins=bins, BLOCK_S=block_s, BLOCK_C=block_c, num_warps=warps,
        )  # fmt: skip
    return codes_t.t(), ranges
