"""The layer side of the fused ``local``-mode Linear kernels (local_linear.py): noise, layer,
response and the pass-1 range kernel (docs/method.md sections 2 and 4).

* noise: sample ``s``, input unit ``i``: ``u = lo_i + (hi_i - lo_i) * r`` (float32, multiply
  then add, then clamped to ``hi_i``), ``r = tl.rand(seed, s * Cin + i)``: Triton's
  counter-based Philox 4x32-10, with int64 offsets (Philox's counter takes their upper 32 bits,
  so offsets up to 2^63 are distinct; here ``S * Cin < 2^62`` since S < 2^31). Every kernel
  regenerates the values it needs from ``(seed, offset)`` instead of storing them.
* layer and response: ``y = act(scale * (u @ W^T + b) + shift)``: a per-output-channel affine
  (a folded eval BatchNorm, or none) and an elementwise activation (``SUPPORTED_ACTIVATIONS``).
* pass 1 (``_range_kernel``): per-column min / max of ``u`` (over its S samples) and of ``y``,
  as per-program partials ``[parts, Cin + Cout]`` reduced by torch (tiny);
* pass 1b (``_code_kernel``): the y codes of a slab of output channels, ``[C1 - C0, S]``
  uint8: y recomputed exactly as pass 1 computed it and binned on pass 1's ranges. Neither the
  noise nor y itself is ever written.

Argument layout shared by the kernels: ``noise_ptr`` is ``[2, Cin]`` float32 (lo, hi rows),
``chan_ptr`` is ``[3, Cout]`` float32 (bias, scale, shift rows; read only under ``HAS_BIAS``
/ ``HAS_AFFINE``).

Precision. The matrix product is ``tl.dot(..., input_precision="ieee")``: float32 operands, no
TF32, so the pre-activation is an ordinary float32 sum over Cin (on sm_90 an FMA chain in input
order per output, chunks of ``BLOCK_K`` under the interpreter's NumPy); it differs from torch's
float32 matmul only by summation order (a few ulp of ``sum_k |u_k W_jk|``). Bias, scale and
shift are applied as separate float32 operations in torch's order, and the kernels are compiled
with ``enable_fp_fusion=False`` so that no multiply-add is contracted: given the same
pre-activation they equal torch's ``scale * (z + b) + shift`` bit for bit. relu, relu6 and
hardswish use torch's float32 formulas (exact); gelu (erf form), silu, sigmoid and tanh are
evaluated in float64 and rounded to float32 (within an ulp of torch's float32 kernels).

Passes 1 and 1b compute y with the same helper (:func:`range_response`) on the same blocks:
channels ``t * YW + [0, YW)``, rows ``i * BLOCK_S + [0, BLOCK_S)`` (both passes start every
program's steps on multiples of BLOCK_S), inputs in chunks of BLOCK_K. So the value pass 1b
bins is the value whose min / max pass 1 took, the same float32 operations on the same
operands: on a GPU the same FMA chain per output, bit for bit; under the interpreter the same
NumPy product of the same shapes (bit for bit as far as that BLAS is deterministic per shape;
were it not, binning would clamp a value an ulp outside pass 1's range into the edge bin).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .mi_blocks import bin_code, store_codes

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


@triton.jit
def noise(seed, s_idx, i_idx, CIN, lo, hi):
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
def response_t(
    seed,
    offs_s,  # [BLOCK_S] sample indices
    oc,  # [YW] output channels (any, masked by COUT)
    w_ptr,  # [COUT, CIN] float32, contiguous
    chan_ptr,  # [3, COUT] float32: bias, scale, shift
    noise_ptr,  # [2, CIN] float32: lo, hi
    CIN,
    COUT,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Transposed response y^T [YW, BLOCK_S] (float32) of output channels oc on samples offs_s.

    y^T = W[oc] @ u^T in chunks of BLOCK_K inputs (noise regenerated in registers), then
    (+ b) (* scale + shift) in torch's order and the activation.
    """
    YW: tl.constexpr = oc.shape[0]
    BLOCK_S: tl.constexpr = offs_s.shape[0]
    valid_oc = oc < COUT
    w_rows = w_ptr + oc.to(tl.int64) * CIN
    acc = tl.zeros([YW, BLOCK_S], tl.float32)
    for k0 in range(0, CIN, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        in_k = offs_k < CIN
        lo = tl.load(noise_ptr + offs_k, mask=in_k, other=0.0)
        hi = tl.load(noise_ptr + CIN + offs_k, mask=in_k, other=0.0)
        u_t = noise(seed, offs_s[None, :], offs_k[:, None], CIN, lo[:, None], hi[:, None])
        u_t = tl.where(in_k[:, None], u_t, 0.0)  # [BLOCK_K, BLOCK_S]
        w_mask = valid_oc[:, None] & in_k[None, :]
        w = tl.load(w_rows[:, None] + offs_k[None, :], mask=w_mask, other=0.0)
        acc = tl.dot(w, u_t, acc, input_precision="ieee", out_dtype=tl.float32)
    return channel_response(acc, oc, chan_ptr, COUT, ACT, HAS_BIAS, HAS_AFFINE)


@triton.jit
def channel_response(z, oc, chan_ptr, COUT, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_AFFINE: tl.constexpr):  # fmt: skip
    """The response of pre-activations z^T [YW, BLOCK_S] of output channels oc: (+ b)
    (* scale + shift) in torch's order, then the activation (chan_ptr: [3, COUT])."""
    valid_oc = oc < COUT
    if HAS_BIAS:
        z = z + tl.load(chan_ptr + oc, mask=valid_oc, other=0.0)[:, None]
    if HAS_AFFINE:
        z = z * tl.load(chan_ptr + COUT + oc, mask=valid_oc, other=1.0)[:, None]
        z = z + tl.load(chan_ptr + 2 * COUT + oc, mask=valid_oc, other=0.0)[:, None]
    return _activation(z, ACT)


@triton.jit
def minmax_step(mn, mx, nan, v, m):
    """Running per-row min / max (and NaN flag) of v [P, BLOCK_S] over the entries where m."""
    isnan = v != v
    nan = nan | tl.max((m & isnan).to(tl.int32), axis=1)
    ok = m & ~isnan
    mn = tl.minimum(mn, tl.min(tl.where(ok, v, float("inf")), axis=1))
    mx = tl.maximum(mx, tl.max(tl.where(ok, v, float("-inf")), axis=1))
    return mn, mx, nan


@triton.jit
def minmax_init(P: tl.constexpr):
    """The start of :func:`minmax_step` for P rows: min +inf, max -inf, no NaN."""
    mn = tl.full([P], float("inf"), tl.float32)
    mx = tl.full([P], float("-inf"), tl.float32)
    return mn, mx, tl.zeros([P], tl.int32)


@triton.jit
def store_y_ranges(row_lo, row_hi, oc, valid, mn, mx, nan):
    """Store the min / max of channels oc at row_lo / row_hi + oc, NaN where a NaN was seen."""
    lo = tl.where(nan > 0, float("nan"), mn.to(tl.float64))
    hi = tl.where(nan > 0, float("nan"), mx.to(tl.float64))
    tl.store(row_lo + oc, lo, mask=valid)
    tl.store(row_hi + oc, hi, mask=valid)


@triton.jit
def part_span(rows_per_program, S):
    """This program's rows [s_begin, s_end): part tl.program_id(0) of the rows (passes 1, 1b)."""
    s_begin = tl.program_id(0) * rows_per_program
    return s_begin, tl.minimum(s_begin + rows_per_program, S)


@triton.jit
def part_rows(part_ptr, part, rows_per_program, S, NCOLS):
    """Pass 1: the rows [s_begin, s_end) of part ``part`` (tl.program_id(0)) and its rows
    row_lo, row_hi of the partial minima / maxima ``part_ptr`` ([2, parts, NCOLS])."""
    s_begin = part * rows_per_program
    s_end = tl.minimum(s_begin + rows_per_program, S)
    row_lo = part_ptr + part.to(tl.int64) * NCOLS
    row_hi = row_lo + tl.num_programs(0).to(tl.int64) * NCOLS
    return s_begin, s_end, row_lo, row_hi


@triton.jit
def slab_block(ranges_ptr, YOFF, C0, C1, YW: tl.constexpr):
    """Pass 1b: the channel block t_y = C0 // YW + tl.program_id(1), its channels oc, those of
    the slab [C0, C1) (valid) and their binning ranges lo, hi [YW, 1] (rows YOFF + oc of
    ``ranges_ptr``)."""
    t_y = C0 // YW + tl.program_id(1)
    oc = t_y * YW + tl.arange(0, YW)
    valid = (oc >= C0) & (oc < C1)
    yr = ranges_ptr + (YOFF + oc).to(tl.int64) * 2
    lo = tl.load(yr, mask=valid, other=0.0)[:, None]
    hi = tl.load(yr + 1, mask=valid, other=0.0)[:, None]
    return t_y, oc, valid, lo, hi


@triton.jit
def store_y_codes(codes_ptr, y_t, lo, hi, bins, oc, valid, C0, offs_s, s_end, S):
    """Pass 1b: bin y^T [YW, BLOCK_S] of channels oc on [lo, hi] and store the codes of the
    slab's channels (rows oc - C0 of ``codes_ptr``) for rows offs_s < s_end."""
    # Ranges of float32 values: hi - lo cannot overflow a double (WIDE=False).
    codes = bin_code(y_t, lo, hi, bins, False)
    m = valid[:, None] & (offs_s < s_end)[None, :]
    store_codes(codes_ptr, oc - C0, offs_s, S, codes, m)


@triton.jit
def range_response(seed, offs_s, t_y, w_ptr, chan_ptr, noise_ptr, CIN, COUT, ACT: tl.constexpr,
                   HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, YW: tl.constexpr,
                   BLOCK_K: tl.constexpr):  # fmt: skip
    """y^T [YW, BLOCK_S] of channels t_y * YW + [0, YW), as pass 1 computes it."""
    oc = t_y * YW + tl.arange(0, YW)
    return response_t(seed, offs_s, oc, w_ptr, chan_ptr, noise_ptr, CIN, COUT, ACT, HAS_BIAS,
                      HAS_AFFINE, BLOCK_K)  # fmt: skip


# ----------------------------------------------------------------------------- pass 1
@triton.jit
def _y_ranges(w_ptr, chan_ptr, noise_ptr, row_lo, row_hi, seed, s_begin, s_end, CIN, COUT, t_y,
              ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr,
              YW: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Min / max of the response of channels t_y * YW + [0, YW) over samples [s_begin, s_end),
    stored at row_lo / row_hi + CIN + channel (NaN for a channel that produced a NaN)."""
    oc = t_y * YW + tl.arange(0, YW)
    valid = oc < COUT
    mn, mx, nan = minmax_init(YW)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        y_t = range_response(seed, offs_s, t_y, w_ptr, chan_ptr, noise_ptr, CIN, COUT, ACT,
                             HAS_BIAS, HAS_AFFINE, YW, BLOCK_K)  # fmt: skip
        m = valid[:, None] & (offs_s < s_end)[None, :]
        mn, mx, nan = minmax_step(mn, mx, nan, y_t, m)
    store_y_ranges(row_lo + CIN, row_hi + CIN, oc, valid, mn, mx, nan)


@triton.jit
def _u_ranges(noise_ptr, row_lo, row_hi, seed, s_begin, s_end, CIN, t_k, BLOCK_S: tl.constexpr,
              BLOCK_K: tl.constexpr):  # fmt: skip
    """Min / max of the noise of inputs t_k * BLOCK_K + [0, BLOCK_K) over [s_begin, s_end)."""
    offs_k = t_k * BLOCK_K + tl.arange(0, BLOCK_K)
    in_k = offs_k < CIN
    lo = tl.load(noise_ptr + offs_k, mask=in_k, other=0.0)
    hi = tl.load(noise_ptr + CIN + offs_k, mask=in_k, other=0.0)
    mn = tl.full([BLOCK_K], float("inf"), tl.float32)
    mx = tl.full([BLOCK_K], float("-inf"), tl.float32)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        u_t = noise(seed, offs_s[None, :], offs_k[:, None], CIN, lo[:, None], hi[:, None])
        m = in_k[:, None] & (offs_s < s_end)[None, :]
        mn = tl.minimum(mn, tl.min(tl.where(m, u_t, float("inf")), axis=1))
        mx = tl.maximum(mx, tl.max(tl.where(m, u_t, float("-inf")), axis=1))
    tl.store(row_lo + offs_k, mn.to(tl.float64), mask=in_k)
    tl.store(row_hi + offs_k, mx.to(tl.float64), mask=in_k)


@triton.jit
def _range_kernel(
    w_ptr,  # [COUT, CIN] float32
    chan_ptr,  # [3, COUT] float32: bias, scale, shift
    noise_ptr,  # [2, CIN] float32: lo, hi
    part_ptr,  # [2, parts, CIN + COUT] float64 partial minima, maxima (NaN where a NaN was seen)
    seed,
    S,
    CIN,
    COUT,
    rows_per_program,  # multiple of BLOCK_S
    TILES_Y,  # programs along axis 1 with pid < TILES_Y do y channels, the others inputs
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    YW: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Pass 1: partial min / max of y (YW channels) or of u (BLOCK_K inputs) per sample part."""
    part = tl.program_id(0)
    pid = tl.program_id(1)
    s_begin, s_end, row_lo, row_hi = part_rows(part_ptr, part, rows_per_program, S, CIN + COUT)
    if pid < TILES_Y:
        _y_ranges(w_ptr, chan_ptr, noise_ptr, row_lo, row_hi, seed, s_begin, s_end, CIN, COUT,
                  pid, ACT, HAS_BIAS, HAS_AFFINE, YW, BLOCK_S, BLOCK_K)  # fmt: skip
    else:
        _u_ranges(noise_ptr, row_lo, row_hi, seed, s_begin, s_end, CIN, pid - TILES_Y, BLOCK_S,
                  BLOCK_K)  # fmt: skip


# ----------------------------------------------------------------------------- pass 1b
@triton.jit
def _code_kernel(
    w_ptr,  # [COUT, CIN] float32
    chan_ptr,  # [3, COUT] float32: bias, scale, shift
    noise_ptr,  # [2, CIN] float32: lo, hi
    ranges_ptr,  # [CIN + COUT, 2] float64 binning ranges (pass 1)
    codes_ptr,  # [C1 - C0, S] uint8 y codes of channels [C0, C1)
    seed,
    S,
    CIN,
    COUT,
    bins,
    C0,  # the slab's channels [C0, C1)
    C1,
    rows_per_program,  # multiple of BLOCK_S
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    YW: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Pass 1b: program (part, t) bins the response of channel block C0 // YW + t (channels of
    the slab only) over its part of the rows, y computed as pass 1 computes it."""
    t_y, oc, valid, lo, hi = slab_block(ranges_ptr, CIN, C0, C1, YW)
    s_begin, s_end = part_span(rows_per_program, S)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        y_t = range_response(seed, offs_s, t_y, w_ptr, chan_ptr, noise_ptr, CIN, COUT, ACT,
                             HAS_BIAS, HAS_AFFINE, YW, BLOCK_K)  # fmt: skip
        store_y_codes(codes_ptr, y_t, lo, hi, bins, oc, valid, C0, offs_s, s_end, S)
