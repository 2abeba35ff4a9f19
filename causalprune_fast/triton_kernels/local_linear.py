"""Fused ``local``-mode MI of a Linear (or 1x1, stride-1, ungrouped convolution) layer.

In ``local`` mode (METHOD.md section 2) a layer's input is replaced by fresh uniform noise on
per-input-unit ranges ``[lo_i, hi_i]``. For a Linear layer the whole measurement (noise, layer,
response, binning, joint histograms, MI; METHOD.md sections 3-5) fits in two kernels, so that
neither the noise nor the activations ever touch global memory:

* noise: sample ``s``, input unit ``i``: ``u = lo_i + (hi_i - lo_i) * r`` (float32, multiply
  then add, then clamped to ``hi_i``), ``r = tl.rand(seed, s * Cin + i)``: Triton's
  counter-based Philox 4x32-10, with int64 offsets (Philox's counter takes their upper 32 bits,
  so offsets up to 2^63 are distinct; here ``S * Cin < 2^62`` since S < 2^31). Every kernel
  regenerates the values it needs from ``(seed, offset)`` instead of storing them, and
  :func:`materialize_noise` writes the same values for the unfused path.
* layer and response: ``y = act(scale * (u @ W^T + b) + shift)``: a per-output-channel affine
  (a folded eval BatchNorm, or none) and an elementwise activation (``SUPPORTED_ACTIVATIONS``).
* pass 1 (``_range_kernel``): per-column min / max of ``u`` (over its S samples) and of ``y``,
  as per-program partials ``[parts, Cin + Cout]`` reduced by torch (tiny); nothing of size
  S x C is written.
* pass 2 (``_mi_kernel``): one program per tile of pairs (``PX`` input units x ``PY`` output
  channels, as ``pairwise_mi.tile_config`` picks them). For every chunk of samples it
  regenerates the noise of all Cin units, computes the y chunk of its output channels, bins x
  and y with the arithmetic of ``quantize_value`` (mi_math.h) on the pass-1 ranges, and adds
  the int8 one-hot product into an int32 count tile exactly as ``pairwise_mi.py`` does; the
  float64 MI epilogue is the same as there (plug-in MI in bits, optional Miller-Madow, clamp
  at 0, exactly 0 for a constant column), storing the [Cin, Cout] float32 matrix or adding
  float64 per-row / per-column sums atomically.

Precision. Everything is float32 except binning and MI (float64, as in every backend). The
matrix product is ``tl.dot(..., input_precision="ieee")``: float32 operands, no TF32, so the
pre-activation is an ordinary float32 sum over Cin (on sm_90 an FMA chain in input order per
output, chunks of ``BLOCK_K`` under the interpreter's NumPy); it differs from torch's float32
matmul only by summation order (a few ulp of ``sum_k |u_k W_jk|``). Bias, scale and shift are
applied as separate float32 operations in torch's order, and the kernels are compiled with
``enable_fp_fusion=False`` so that no multiply-add is contracted: given the same pre-activation
they equal torch's ``scale * (z + b) + shift`` bit for bit. relu, relu6 and hardswish use
torch's float32 formulas (exact); gelu (erf form), silu, sigmoid and tanh are evaluated in
float64 and rounded to float32 (within an ulp of torch's float32 kernels). Both passes compute
y with the same helper, block shapes and operation order, so pass 2's y equals pass 1's bit for
bit (the tests check it through :func:`local_linear_debug`; so far under the interpreter only,
on sm_90 it rests on the FMA lowering of float32 tl.dot accumulating in input order whatever
the warp count). Code flips against the unfused
path happen only where the last-ulp difference of y straddles a bin edge.

Cost. Pass 2 regenerates the noise of all Cin inputs (and recomputes the y columns) in each of
its ``ceil(Cin / PX) * ceil(Cout / PY)`` programs: ``S * Cin * Cin * Cout / (PX * PY)`` Philox
draws in all (PX * PY = 64 pairs per program at 16 bins). That duplication is the price of
storing neither noise nor activations; it grows with Cin and bins.

Scope: ``groups == 1`` only (a grouped 1x1 convolution's weight [Cout, Cin/groups, 1, 1] would
be read as an ungrouped one with Cin/groups inputs); ``Cin, Cout < 2^31``; ``S < 2^31`` (exact
int32 counts).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .pairwise_mi import _MAX_SUB_BINS, LN2, _pair_sum, _pow2, _xlogx, tile_config

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_ACTIVATIONS = (
    "identity",
    "relu",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "relu6",
)

_MIN_DOT = 16  # smallest M / N / K of tl.dot
# Launch shapes on a GPU; the interpreter (NumPy, one program at a time) takes larger blocks.
GPU_BLOCK_S, GPU_BLOCK_K = 64, 32
INTERPRET_BLOCK_S, INTERPRET_BLOCK_K = 1024, 64
_INTERPRET_SIDE = 512  # rows / columns of an interpreted count tile
NOISE_BLOCK_S, NOISE_BLOCK_K = 32, 64  # materialize_noise


# ----------------------------------------------------------------------------- device helpers
@triton.jit
def _noise(seed, s_idx, i_idx, CIN, lo, hi):
    """Uniform noise of (sample s_idx, input unit i_idx) on [lo, hi] (broadcast shapes).

    r = tl.rand(seed, s * CIN + i) in [0, 1) with int64 offsets; u = lo + (hi - lo) * r in
    float32 (no contraction: the kernels are compiled with enable_fp_fusion=False), clamped to
    hi against rounding, so u lies in [lo, hi] and lo == hi gives exactly lo.
    """
    offs = s_idx.to(tl.int64) * CIN + i_idx
    r = tl.rand(seed, offs)
    u = lo + (hi - lo) * r
    return tl.where(u > hi, hi, u)


@triton.jit
def _code(v, lo, hi, bins):
    """quantize_value of mi_math.h (as _quantize_kernel in quantize.py), float64, int32 codes."""
    v = v.to(tl.float64)
    span = tl.where(hi > lo, hi - lo, 1.0)  # == hi - lo wherever it is used
    t = (v - lo) / span * bins
    inner = (t >= 1.0) & (t < bins - 1)
    code = tl.where(inner, t, 0.0).to(tl.int32)
    code = tl.where(t >= bins - 1, bins - 1, code)
    return tl.where(hi > lo, code, tl.where(v > hi, bins - 1, 0))


@triton.jit
def _activation(z, ACT: tl.constexpr):
    """The elementwise activation of float32 z, as a float32 tensor."""
    if ACT == "relu":
        z = tl.where(z > 0.0, z, 0.0)
    elif ACT == "relu6":
        z = tl.where(z > 0.0, z, 0.0)
        z = tl.where(z < 6.0, z, 6.0)
    elif ACT == "hardswish":
        # torch: x * min(max(x + 3, 0), 6) / 6, in float32, with an IEEE division (a plain
        # float32 `/` compiles to the approximate div.full.f32 on NVIDIA GPUs).
        g = z + 3.0
        g = tl.where(g > 0.0, g, 0.0)
        g = tl.where(g < 6.0, g, 6.0)
        z = tl.math.div_rn(z * g, 6.0)
    elif ACT == "gelu":
        d = z.to(tl.float64)
        z = (0.5 * d * (1.0 + tl.math.erf(d * 0.7071067811865476))).to(tl.float32)
    elif ACT == "silu":
        d = z.to(tl.float64)
        z = (d / (1.0 + tl.exp(-d))).to(tl.float32)
    elif ACT == "sigmoid":
        d = z.to(tl.float64)
        z = (1.0 / (1.0 + tl.exp(-d))).to(tl.float32)
    elif ACT == "tanh":
        # float64: odd series below 1e-4 (relative error < 1e-16), else via exp(-2|x|).
        d = z.to(tl.float64)
        a = tl.where(d < 0.0, -d, d)
        e = tl.exp(-2.0 * a)
        big = (1.0 - e) / (1.0 + e)
        small = a - a * a * a / 3.0
        t = tl.where(a < 1e-4, small, big)
        z = tl.where(d < 0.0, -t, t).to(tl.float32)
    else:
        tl.static_assert(ACT == "identity", "unsupported activation")
    return z


@triton.jit
def _response_t(
    seed,
    offs_s,  # [BLOCK_S] sample indices
    oc,  # [YW] output channels (any, masked by COUT)
    w_ptr,  # [COUT, CIN] float32, contiguous
    b_ptr,
    scale_ptr,
    shift_ptr,
    lo_ptr,  # [CIN] float32
    hi_ptr,
    CIN,
    COUT,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    YW: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Transposed response y^T [YW, BLOCK_S] (float32) of output channels oc on samples offs_s.

    y^T = W[oc] @ u^T in chunks of BLOCK_K inputs (noise regenerated in registers), then
    (+ b) (* scale + shift) in torch's order and the activation. Pass 1 and pass 2 call this
    with the same shapes, so they get identical values.
    """
    valid_oc = oc < COUT
    w_rows = w_ptr + oc.to(tl.int64) * CIN
    acc = tl.zeros([YW, BLOCK_S], tl.float32)
    for k0 in range(0, CIN, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        in_k = offs_k < CIN
        lo = tl.load(lo_ptr + offs_k, mask=in_k, other=0.0)
        hi = tl.load(hi_ptr + offs_k, mask=in_k, other=0.0)
        u_t = _noise(seed, offs_s[None, :], offs_k[:, None], CIN, lo[:, None], hi[:, None])
        u_t = tl.where(in_k[:, None], u_t, 0.0)  # [BLOCK_K, BLOCK_S]
        w = tl.load(w_rows[:, None] + offs_k[None, :], mask=valid_oc[:, None] & in_k[None, :],
                    other=0.0)  # fmt: skip
        acc = tl.dot(w, u_t, acc, input_precision="ieee", out_dtype=tl.float32)
    z = acc
    if HAS_BIAS:
        z = z + tl.load(b_ptr + oc, mask=valid_oc, other=0.0)[:, None]
    if HAS_AFFINE:
        z = z * tl.load(scale_ptr + oc, mask=valid_oc, other=1.0)[:, None]
        z = z + tl.load(shift_ptr + oc, mask=valid_oc, other=0.0)[:, None]
    return _activation(z, ACT)


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _noise_kernel(out_ptr, lo_ptr, hi_ptr, seed, S, CIN, BLOCK_S: tl.constexpr,
                  BLOCK_K: tl.constexpr):  # fmt: skip
    """out [S, CIN] float32 = the noise the fused kernels use."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    in_k = offs_k < CIN
    mask = (offs_s < S)[:, None] & in_k[None, :]
    lo = tl.load(lo_ptr + offs_k, mask=in_k, other=0.0)
    hi = tl.load(hi_ptr + offs_k, mask=in_k, other=0.0)
    u = _noise(seed, offs_s[:, None], offs_k[None, :], CIN, lo[None, :], hi[None, :])
    tl.store(out_ptr + offs_s.to(tl.int64)[:, None] * CIN + offs_k[None, :], u, mask=mask)


@triton.jit
def _y_ranges(
    w_ptr, b_ptr, scale_ptr, shift_ptr, lo_ptr, hi_ptr, row_lo, row_hi, ydbg_ptr, seed, s_begin,
    s_end, CIN, COUT, t_y, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_AFFINE: tl.constexpr, DEBUG_Y: tl.constexpr, YW: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Min / max of the response of channels t_y * YW + [0, YW) over samples [s_begin, s_end),
    stored at row_lo / row_hi + CIN + channel (NaN for a channel that produced a NaN)."""
    oc = t_y * YW + tl.arange(0, YW)
    valid = oc < COUT
    mn = tl.full([YW], float("inf"), tl.float32)
    mx = tl.full([YW], float("-inf"), tl.float32)
    nan = tl.zeros([YW], tl.int32)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        y_t = _response_t(seed, offs_s, oc, w_ptr, b_ptr, scale_ptr, shift_ptr, lo_ptr, hi_ptr,
                          CIN, COUT, ACT, HAS_BIAS, HAS_AFFINE, YW, BLOCK_S,
                          BLOCK_K)  # fmt: skip
        m = valid[:, None] & (offs_s < s_end)[None, :]
        if DEBUG_Y:
            dbg = ydbg_ptr + offs_s.to(tl.int64)[None, :] * COUT + oc[:, None]
            tl.store(dbg, y_t, mask=m)
        isnan = y_t != y_t
        nan = nan | tl.max((m & isnan).to(tl.int32), axis=1)
        ok = m & ~isnan
        mn = tl.minimum(mn, tl.min(tl.where(ok, y_t, float("inf")), axis=1))
        mx = tl.maximum(mx, tl.max(tl.where(ok, y_t, float("-inf")), axis=1))
    lo = tl.where(nan > 0, float("nan"), mn.to(tl.float64))
    hi = tl.where(nan > 0, float("nan"), mx.to(tl.float64))
    tl.store(row_lo + CIN + oc, lo, mask=valid)
    tl.store(row_hi + CIN + oc, hi, mask=valid)


@triton.jit
def _u_ranges(lo_ptr, hi_ptr, row_lo, row_hi, seed, s_begin, s_end, CIN, t_k,
              BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Min / max of the noise of inputs t_k * BLOCK_K + [0, BLOCK_K) over [s_begin, s_end)."""
    offs_k = t_k * BLOCK_K + tl.arange(0, BLOCK_K)
    in_k = offs_k < CIN
    lo = tl.load(lo_ptr + offs_k, mask=in_k, other=0.0)
    hi = tl.load(hi_ptr + offs_k, mask=in_k, other=0.0)
    mn = tl.full([BLOCK_K], float("inf"), tl.float32)
    mx = tl.full([BLOCK_K], float("-inf"), tl.float32)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        u_t = _noise(seed, offs_s[None, :], offs_k[:, None], CIN, lo[:, None], hi[:, None])
        m = in_k[:, None] & (offs_s < s_end)[None, :]
        mn = tl.minimum(mn, tl.min(tl.where(m, u_t, float("inf")), axis=1))
        mx = tl.maximum(mx, tl.max(tl.where(m, u_t, float("-inf")), axis=1))
    tl.store(row_lo + offs_k, mn.to(tl.float64), mask=in_k)
    tl.store(row_hi + offs_k, mx.to(tl.float64), mask=in_k)


@triton.jit
def _range_kernel(
    w_ptr,
    b_ptr,
    scale_ptr,
    shift_ptr,
    lo_ptr,
    hi_ptr,
    part_lo_ptr,  # [parts, CIN + COUT] float64 partial minima (NaN where a NaN was seen)
    part_hi_ptr,  # [parts, CIN + COUT] float64 partial maxima
    ydbg_ptr,  # [S, COUT] float32, DEBUG_Y only
    seed,
    S,
    CIN,
    COUT,
    rows_per_program,  # multiple of BLOCK_S
    TILES_Y,  # programs along axis 1 with pid < TILES_Y do y channels, the others inputs
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    DEBUG_Y: tl.constexpr,
    YW: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Pass 1: partial min / max of y (YW channels) or of u (BLOCK_K inputs) per sample part."""
    part = tl.program_id(0)
    pid = tl.program_id(1)
    s_begin = part * rows_per_program
    s_end = tl.minimum(s_begin + rows_per_program, S)
    row_lo = part_lo_ptr + part.to(tl.int64) * (CIN + COUT)
    row_hi = part_hi_ptr + part.to(tl.int64) * (CIN + COUT)
    if pid < TILES_Y:
        _y_ranges(w_ptr, b_ptr, scale_ptr, shift_ptr, lo_ptr, hi_ptr, row_lo, row_hi, ydbg_ptr,
                  seed, s_begin, s_end, CIN, COUT, pid, ACT, HAS_BIAS, HAS_AFFINE, DEBUG_Y, YW,
                  BLOCK_S, BLOCK_K)  # fmt: skip
    else:
        _u_ranges(lo_ptr, hi_ptr, row_lo, row_hi, seed, s_begin, s_end, CIN, pid - TILES_Y,
                  BLOCK_S, BLOCK_K)  # fmt: skip


@triton.jit
def _mi_kernel(
    w_ptr,  # [COUT, CIN] float32
    b_ptr,  # [COUT] float32 (HAS_BIAS)
    scale_ptr,  # [COUT] float32 (HAS_AFFINE)
    shift_ptr,
    lo_ptr,  # [CIN] float32 noise ranges
    hi_ptr,
    xr_ptr,  # [CIN, 2] float64 binning ranges of u (pass 1)
    yr_ptr,  # [COUT, 2] float64 binning ranges of y (pass 1)
    out_ptr,  # [CIN, COUT] float32 MI matrix (unless SUMS)
    per_x_ptr,  # [CIN] float64 (SUMS)
    per_y_ptr,  # [COUT] float64 (SUMS)
    ydbg_ptr,  # [S, COUT] float32 (DEBUG_Y)
    seed,
    S,
    CIN,
    COUT,
    bins,
    TILES_Y,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    MILLER_MADOW: tl.constexpr,
    SUMS: tl.constexpr,
    DEBUG_Y: tl.constexpr,
    PX: tl.constexpr,
    SBX: tl.constexpr,
    KX: tl.constexpr,
    PY: tl.constexpr,
    SBY: tl.constexpr,
    KY: tl.constexpr,
    YW: tl.constexpr,  # channels per y computation: max(PY, 16), a multiple of PY
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Pass 2: joint counts and MI of a PX x PY tile of (input unit, output channel) pairs."""
    BM: tl.constexpr = PX * SBX
    BN: tl.constexpr = PY * SBY
    R: tl.constexpr = YW // PY

    pid = tl.program_id(0)
    t_x = pid // TILES_Y
    t_y = pid % TILES_Y
    ix = t_x * PX + tl.arange(0, PX)
    iy = t_y * PY + tl.arange(0, PY)
    valid_x = ix < CIN
    valid_y = iy < COUT
    oc = t_y * PY + tl.arange(0, YW)  # the first PY of these are the tile's channels

    lo_x = tl.load(lo_ptr + ix, mask=valid_x, other=0.0)
    hi_x = tl.load(hi_ptr + ix, mask=valid_x, other=0.0)
    xr_lo = tl.load(xr_ptr + ix.to(tl.int64) * 2, mask=valid_x, other=0.0)
    xr_hi = tl.load(xr_ptr + ix.to(tl.int64) * 2 + 1, mask=valid_x, other=0.0)
    yr_lo = tl.load(yr_ptr + iy.to(tl.int64) * 2, mask=valid_y, other=0.0)
    yr_hi = tl.load(yr_ptr + iy.to(tl.int64) * 2 + 1, mask=valid_y, other=0.0)

    joint = tl.zeros([PX, PY], tl.float64)
    marg_x = tl.zeros([PX, PY], tl.float64)
    marg_y = tl.zeros([PX, PY], tl.float64)
    nz_xy = tl.zeros([PX, PY], tl.int32)
    nz_x = tl.zeros([PX, PY], tl.int32)
    nz_y = tl.zeros([PX, PY], tl.int32)
    cols0 = tl.zeros([PX, PY, SBY], tl.int32)
    cols1 = tl.zeros([PX, PY, SBY], tl.int32)

    for kx in tl.static_range(KX):
        bins_x = kx * SBX + tl.arange(0, SBX)
        rows = tl.zeros([PX, SBX, PY], tl.int32)
        for ky in tl.static_range(KY):
            bins_y = ky * SBY + tl.arange(0, SBY)
            acc = tl.zeros([BM, BN], tl.int32)
            for s0 in range(0, S, BLOCK_S):
                offs_s = s0 + tl.arange(0, BLOCK_S)
                in_s = offs_s < S
                # x: the tile's own inputs, regenerated: codes [PX, BLOCK_S] -> A [BM, BLOCK_S].
                u_x = _noise(seed, offs_s[None, :], ix[:, None], CIN, lo_x[:, None],
                             hi_x[:, None])  # fmt: skip
                cx = _code(u_x, xr_lo[:, None], xr_hi[:, None], bins)
                cx = tl.where(valid_x[:, None] & in_s[None, :], cx, -1)
                ox = (cx[:, None, :] == bins_x[None, :, None]).to(tl.int8)
                ox = tl.reshape(ox, [BM, BLOCK_S])
                # y: all CIN inputs regenerated, YW channels computed, the first PY kept.
                y_t = _response_t(seed, offs_s, oc, w_ptr, b_ptr, scale_ptr, shift_ptr, lo_ptr,
                                  hi_ptr, CIN, COUT, ACT, HAS_BIAS, HAS_AFFINE, YW,
                                  BLOCK_S, BLOCK_K)  # fmt: skip
                if R > 1:
                    y3 = tl.reshape(y_t, [R, PY, BLOCK_S])
                    first = (tl.arange(0, R) == 0)[:, None, None]
                    y_t = tl.sum(tl.where(first, y3, 0.0), axis=0)  # exact: one term per sum
                if DEBUG_Y and kx == 0 and ky == 0:
                    if t_x == 0:
                        dbg = ydbg_ptr + offs_s.to(tl.int64)[None, :] * COUT + iy[:, None]
                        tl.store(dbg, y_t, mask=valid_y[:, None] & in_s[None, :])
                cy = _code(y_t, yr_lo[:, None], yr_hi[:, None], bins)
                cy = tl.where(valid_y[:, None] & in_s[None, :], cy, -1)
                # K-major y one-hot, transposed into the B operand (as in pairwise_mi.py).
                oy = (cy[:, None, :] == bins_y[None, :, None]).to(tl.int8)
                oy = tl.trans(tl.reshape(oy, [BN, BLOCK_S]))
                acc = tl.dot(ox, oy, acc, out_dtype=tl.int32)

            n = tl.reshape(acc, [PX, SBX, PY, SBY])
            joint += _pair_sum(_xlogx(n.to(tl.float64)))
            nz_xy += _pair_sum((n > 0).to(tl.int32))
            rows += tl.sum(n, axis=3)
            cols = tl.sum(n, axis=1)
            if ky == 0:
                cols0 += cols
            else:
                cols1 += cols

        marg_x += tl.sum(_xlogx(rows.to(tl.float64)), axis=1)
        nz_x += tl.sum((rows > 0).to(tl.int32), axis=1)

    marg_y += tl.sum(_xlogx(cols0.to(tl.float64)), axis=2)
    nz_y += tl.sum((cols0 > 0).to(tl.int32), axis=2)
    if KY == 2:
        marg_y += tl.sum(_xlogx(cols1.to(tl.float64)), axis=2)
        nz_y += tl.sum((cols1 > 0).to(tl.int32), axis=2)

    # mi_bits (mi_math.h), float64, as in pairwise_mi.py.
    s_f = tl.zeros([PX, PY], tl.float64) + S
    mi = (joint - marg_x - marg_y + _xlogx(s_f)) / (s_f * LN2)
    if MILLER_MADOW:
        mi += (nz_x + nz_y - nz_xy - 1).to(tl.float64) / (2.0 * s_f * LN2)
    mi = tl.where(mi > 0.0, mi, 0.0)
    mi = tl.where((nz_x <= 1) | (nz_y <= 1), 0.0, mi)
    valid = valid_x[:, None] & valid_y[None, :]
    mi = tl.where(valid, mi, 0.0)

    if SUMS:
        tl.atomic_add(per_x_ptr + ix, tl.sum(mi, axis=1), mask=valid_x)
        tl.atomic_add(per_y_ptr + iy, tl.sum(mi, axis=0), mask=valid_y)
    else:
        out = ix.to(tl.int64)[:, None] * COUT + iy[None, :]
        tl.store(out_ptr + out, mi.to(tl.float32), mask=valid)


# ----------------------------------------------------------------------------- launch shapes
@dataclass(frozen=True)
class LocalTileConfig:
    px: int  # input units per pass-2 tile
    sbx: int  # padded x bins per sub-block
    kx: int
    py: int  # output channels per pass-2 tile
    sby: int
    ky: int
    yw: int  # channels per y computation (both passes): max(py, 16)
    block_s: int  # samples per step (both passes)
    block_k: int  # inputs per step of the layer's matrix product (both passes)
    num_warps: int  # pass 2
    num_stages: int


def local_tile_config(
    cin: int, cout: int, bins: int, samples: int | None = None, interpret: bool = INTERPRET
) -> LocalTileConfig:
    """Launch shapes of both passes.

    GPU: pass-2 pair tiles as ``pairwise_mi.tile_config`` (about 128 x 128 int32 counts per
    program, whole pairs), y computed ``max(py, 16)`` channels at a time (the smallest tl.dot
    M), 64 samples x 32 inputs per step. Interpreter (NumPy, where every op costs Python
    overhead): up to 512 x 512 count tiles and 1024-sample steps, so that few programs and
    steps run (no more than ``samples`` needs); the kernels are the same, only their
    constexpr shapes differ.
    """
    if not interpret:
        c = tile_config(cin, cout, bins, bins, interpret=False)
        return LocalTileConfig(c.px, c.sbx, c.kx, c.py, c.sby, c.ky, max(c.py, _MIN_DOT),
                               GPU_BLOCK_S, GPU_BLOCK_K, c.num_warps, 1)  # fmt: skip
    pb = _pow2(bins)
    sb = min(pb, _MAX_SUB_BINS)
    px = max(min(_pow2(cin), max(1, _INTERPRET_SIDE // sb)), _MIN_DOT // sb)
    py = max(min(_pow2(cout), max(1, _INTERPRET_SIDE // sb)), _MIN_DOT // sb)
    block_s = INTERPRET_BLOCK_S if samples is None else min(INTERPRET_BLOCK_S, _pow2(samples))
    block_s = max(block_s, GPU_BLOCK_S)
    return LocalTileConfig(px, sb, pb // sb, py, sb, pb // sb, max(py, _MIN_DOT), block_s,
                           INTERPRET_BLOCK_K, 4, 1)  # fmt: skip


# ----------------------------------------------------------------------------- validation
def _check_device(t: torch.Tensor, name: str) -> None:
    from . import is_available

    ok, why = is_available(t.device)
    if not ok:
        raise ValueError(f"{name}: the fused Triton kernels cannot run here: {why}")


def _check_int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int in [{lo}, {hi}), got {value!r}")
    if not lo <= int(value) < hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}), got {value}")
    return int(value)


def _check_vector(t, n: int, name: str, device, allow_scalar: bool = False) -> torch.Tensor:
    """A float vector of length n (or, with allow_scalar, a number), as float32 on device."""
    if allow_scalar and isinstance(t, numbers.Real) and not isinstance(t, bool):
        t = torch.full((n,), float(t), dtype=torch.float32, device=device)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a float tensor [{n}], got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor, got dtype {t.dtype}")
    if allow_scalar and t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device} (the weight's device), got {t.device}")
    t = t.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def _check_weight(weight) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a tensor [Cout, Cin], got {type(weight).__name__}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be a float tensor, got dtype {weight.dtype}")
    if weight.dim() < 2 or any(k != 1 for k in weight.shape[2:]):
        raise ValueError(
            "weight must be [Cout, Cin] (Linear) or [Cout, Cin, 1, ...] (1x1 convolution), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"weight must have Cout, Cin >= 1, got shape {tuple(weight.shape)}")
    if max(weight.shape[0], weight.shape[1]) >= 2**31:
        raise ValueError(f"weight is too large: shape {tuple(weight.shape)}")
    w = weight.detach().reshape(weight.shape[0], weight.shape[1]).to(torch.float32).contiguous()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight must be finite")
    return w


def _prepare(weight, bias, lo, hi, samples, seed, bins, scale, shift, activation):
    w = _check_weight(weight)
    cout, cin = w.shape
    device = w.device
    _check_device(w, "weight")
    b = None if bias is None else _check_vector(bias, cout, "bias", device)
    lo_t = _check_vector(lo, cin, "lo", device, allow_scalar=True)
    hi_t = _check_vector(hi, cin, "hi", device, allow_scalar=True)
    if bool((hi_t < lo_t).any()):
        i = int(torch.nonzero(hi_t < lo_t)[0, 0])
        raise ValueError(f"hi must be >= lo for every input unit, got lo[{i}] > hi[{i}]")
    samples = _check_int(samples, "samples", 1, 2**31)
    seed = _check_int(seed, "seed", 0, 2**63)
    bins = _check_int(bins, "bins", 2, 257)
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"activation must be one of {SUPPORTED_ACTIVATIONS}, got {activation!r}")
    has_affine = scale is not None or shift is not None
    if has_affine:
        scale = (
            torch.ones(cout, device=device)
            if scale is None
            else _check_vector(scale, cout, "scale", device)
        )
        shift = (
            torch.zeros(cout, device=device)
            if shift is None
            else _check_vector(shift, cout, "shift", device)
        )
    return w, b, lo_t, hi_t, samples, seed, bins, scale, shift, has_affine


# ----------------------------------------------------------------------------- host functions
def materialize_noise(samples: int, lo, hi, seed: int) -> torch.Tensor:
    """The [samples, Cin] float32 noise that the fused kernels regenerate: sample s, unit i is
    ``lo_i + (hi_i - lo_i) * tl.rand(seed, s * Cin + i)`` (clamped to hi_i).

    ``lo`` and ``hi`` are float tensors [Cin] on the device that will run the kernels (a CUDA
    device, or any device under TRITON_INTERPRET=1). For the unfused path and for tests; the
    fused kernels never store it.
    """
    if not isinstance(lo, torch.Tensor):
        raise ValueError(f"lo must be a float tensor [Cin], got {type(lo).__name__}")
    if lo.dim() != 1 or lo.shape[0] < 1:
        raise ValueError(f"lo must have shape [Cin] with Cin >= 1, got {tuple(lo.shape)}")
    cin = lo.shape[0]
    lo_t = _check_vector(lo, cin, "lo", lo.device)
    hi_t = _check_vector(hi, cin, "hi", lo.device, allow_scalar=True)
    if bool((hi_t < lo_t).any()):
        raise ValueError("hi must be >= lo for every input unit")
    samples = _check_int(samples, "samples", 1, 2**31)
    seed = _check_int(seed, "seed", 0, 2**63)
    _check_device(lo_t, "lo")
    out = torch.empty((samples, cin), dtype=torch.float32, device=lo_t.device)
    grid = (triton.cdiv(samples, NOISE_BLOCK_S), triton.cdiv(cin, NOISE_BLOCK_K))
    _noise_kernel[grid](
        out, lo_t, hi_t, seed, samples, cin, BLOCK_S=NOISE_BLOCK_S, BLOCK_K=NOISE_BLOCK_K,
        num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    return out


@dataclass
class LocalLinearRun:
    """Everything one fused run computed (see :func:`local_linear_debug`)."""

    matrix: torch.Tensor | None  # [Cin, Cout] float32 (reduce=None)
    per_x: torch.Tensor | None  # [Cin] float64 (reduce="sum")
    per_y: torch.Tensor | None  # [Cout] float64 (reduce="sum")
    x_ranges: torch.Tensor  # [Cin, 2] float64: min, max of each input unit's noise
    y_ranges: torch.Tensor  # [Cout, 2] float64: min, max of each output channel's response
    y_pass1: torch.Tensor | None  # [S, Cout] float32 response as pass 1 computed it (debug)
    y_pass2: torch.Tensor | None  # [S, Cout] float32 response as pass 2 computed it (debug)
    config: LocalTileConfig


def _run(
    weight, bias, lo, hi, samples, seed, bins, scale, shift, activation, miller_madow, reduce,
    debug, config,
) -> LocalLinearRun:  # fmt: skip
    if reduce not in (None, "sum"):
        raise ValueError(f"reduce must be None or 'sum', got {reduce!r}")
    if not isinstance(miller_madow, bool):
        raise ValueError(f"miller_madow must be a bool, got {miller_madow!r}")
    w, b, lo_t, hi_t, S, seed, bins, scale, shift, has_affine = _prepare(
        weight, bias, lo, hi, samples, seed, bins, scale, shift, activation
    )
    cout, cin = w.shape
    device = w.device
    cfg = config or local_tile_config(cin, cout, bins, S)
    dummy = w  # placeholder for unused pointer arguments
    b_arg = b if b is not None else dummy
    scale_arg = scale if has_affine else dummy
    shift_arg = shift if has_affine else dummy
    ydbg1 = torch.full((S, cout), float("nan"), device=device) if debug else dummy
    ydbg2 = torch.full((S, cout), float("nan"), device=device) if debug else dummy
    common = dict(ACT=activation, HAS_BIAS=b is not None, HAS_AFFINE=has_affine,
                  DEBUG_Y=debug, enable_fp_fusion=False)  # fmt: skip

    # Pass 1: ranges. Samples are split into `parts` so that there are enough programs.
    tiles_y1 = triton.cdiv(cout, cfg.yw)
    tiles_k = triton.cdiv(cin, cfg.block_k)
    target = 4 if INTERPRET else 1024
    parts = max(1, min(triton.cdiv(S, cfg.block_s), triton.cdiv(target, tiles_y1 + tiles_k)))
    rows_per_program = triton.cdiv(triton.cdiv(S, parts), cfg.block_s) * cfg.block_s
    parts = triton.cdiv(S, rows_per_program)
    part_lo = torch.empty((parts, cin + cout), dtype=torch.float64, device=device)
    part_hi = torch.empty((parts, cin + cout), dtype=torch.float64, device=device)
    _range_kernel[(parts, tiles_y1 + tiles_k)](
        w, b_arg, scale_arg, shift_arg, lo_t, hi_t, part_lo, part_hi, ydbg1,
        seed, S, cin, cout, rows_per_program, tiles_y1,
        YW=cfg.yw, BLOCK_S=cfg.block_s, BLOCK_K=cfg.block_k, num_warps=4, num_stages=1,
        **common,
    )  # fmt: skip
    ranges = torch.stack([part_lo.amin(dim=0), part_hi.amax(dim=0)], dim=1)  # NaN propagates
    x_ranges = ranges[:cin].contiguous()
    y_ranges = ranges[cin:].contiguous()
    bad = ~torch.isfinite(y_ranges).all(dim=1)
    if bool(bad.any()):
        chans = torch.nonzero(bad)[:, 0].tolist()
        raise ValueError(
            f"the layer's response ({activation}) is non-finite (NaN/Inf) in {len(chans)} "
            f"output channel(s) under the noise, e.g. {chans[:8]}; check weight, bias, scale, "
            "shift and the noise range for overflow"
        )

    # Pass 2: joint counts and MI per tile of pairs.
    tiles_x, tiles_y = triton.cdiv(cin, cfg.px), triton.cdiv(cout, cfg.py)
    sums = reduce == "sum"
    if sums:
        per_x = torch.zeros(cin, dtype=torch.float64, device=device)
        per_y = torch.zeros(cout, dtype=torch.float64, device=device)
        out = per_x  # placeholder
    else:
        out = torch.zeros((cin, cout), dtype=torch.float32, device=device)
        per_x = per_y = out  # placeholders
    _mi_kernel[(tiles_x * tiles_y,)](
        w, b_arg, scale_arg, shift_arg, lo_t, hi_t, x_ranges, y_ranges, out, per_x, per_y,
        ydbg2, seed, S, cin, cout, bins, tiles_y,
        MILLER_MADOW=miller_madow, SUMS=sums,
        PX=cfg.px, SBX=cfg.sbx, KX=cfg.kx, PY=cfg.py, SBY=cfg.sby, KY=cfg.ky, YW=cfg.yw,
        BLOCK_S=cfg.block_s, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **common,
    )  # fmt: skip
    return LocalLinearRun(
        matrix=None if sums else out,
        per_x=per_x if sums else None,
        per_y=per_y if sums else None,
        x_ranges=x_ranges,
        y_ranges=y_ranges,
        y_pass1=ydbg1 if debug else None,
        y_pass2=ydbg2 if debug else None,
        config=cfg,
    )


def local_linear_mi(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lo,
    hi,
    *,
    samples: int,
    seed: int,
    bins: int = 16,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    activation: str = "identity",
    miller_madow: bool = False,
    reduce: str | None = None,
    return_ranges: bool = False,
):
    """MI in bits between every input unit and every output channel of a Linear layer driven
    by uniform noise, fused: noise, layer, response, binning and counts stay in registers.

    Args:
        weight: ``[Cout, Cin]`` (or a 1x1 convolution's ``[Cout, Cin, 1, 1]``, groups=1),
            any float dtype (computed in float32).
        bias: ``[Cout]`` or None.
        lo, hi: per-input-unit noise ranges ``[Cin]`` (or numbers), finite, ``hi >= lo``.
        samples: noise samples S, 1 <= S < 2^31.
        seed: Philox seed, 0 <= seed < 2^63.
        bins: bins per variable (x and y), 2..256.
        scale, shift: per-output-channel affine after the layer (a folded eval BatchNorm);
            None for none (one of them None: ones / zeros).
        activation: one of ``SUPPORTED_ACTIVATIONS`` (``"gelu"`` is the erf form).
        miller_madow: add the Miller-Madow correction (clamped at 0).
        reduce: None for the ``[Cin, Cout]`` float32 matrix; ``"sum"`` for
            ``PairwiseMISums(per_x [Cin], per_y [Cout])`` in float64.
        return_ranges: also return the binning ranges ``x_ranges [Cin, 2]``,
            ``y_ranges [Cout, 2]`` (float64 min, max over the S samples).

    Returns:
        The matrix or the sums; with ``return_ranges``, ``(result, x_ranges, y_ranges)``.

    Raises:
        ValueError: a bad argument (named), tensors on a device the kernels cannot use, or a
            non-finite response.
    """
    run = _run(weight, bias, lo, hi, samples, seed, bins, scale, shift, activation,
               miller_madow, reduce, False, None)  # fmt: skip
    if reduce == "sum":
        from causalprune_fast.estimator import PairwiseMISums

        result = PairwiseMISums(run.per_x, run.per_y)
    else:
        result = run.matrix
    return (result, run.x_ranges, run.y_ranges) if return_ranges else result


def local_linear_debug(
    weight, bias, lo, hi, *, samples, seed, bins=16, scale=None, shift=None,
    activation="identity", miller_madow=False, reduce=None, config=None,
) -> LocalLinearRun:  # fmt: skip
    """:func:`local_linear_mi` that also writes the response y [S, Cout] as each pass computed
    it, and returns the ranges and tile shape (tests; writes S x Cout floats twice)."""
    return _run(weight, bias, lo, hi, samples, seed, bins, scale, shift, activation,
                miller_madow, reduce, True, config)  # fmt: skip


def reference_response(u, weight, bias=None, scale=None, shift=None, activation="identity"):
    """The unfused float32 torch response ``act(scale * (u @ W^T + b) + shift)`` of noise u."""
    w = weight.reshape(weight.shape[0], weight.shape[1]).to(torch.float32)
    y = u @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    if scale is not None or shift is not None:
        if scale is not None:
            y = y * scale.to(torch.float32)
        if shift is not None:
            y = y + shift.to(torch.float32)
    fns = {
        "identity": lambda t: t,
        "relu": torch.relu,
        "gelu": torch.nn.functional.gelu,
        "silu": torch.nn.functional.silu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "hardswish": torch.nn.functional.hardswish,
        "relu6": torch.nn.functional.relu6,
    }
    return fns[activation](y)


__all__ = [
    "SUPPORTED_ACTIVATIONS",
    "LocalLinearRun",
    "LocalTileConfig",
    "local_linear_debug",
    "local_linear_mi",
    "local_tile_config",
    "materialize_noise",
    "reference_response",
]
