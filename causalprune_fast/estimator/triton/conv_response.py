"""The layer side of the fused ``local``-mode convolution kernels (local_conv.py): patch noise,
the convolution at a patch's output position, and the pass-1 range kernel.

Rows are receptive-field patches, as on the unfused ``patches`` path (docs/method.md section
2.2): row ``s`` has an output position, given to the kernels as its per-dimension base
coordinate ``base_d[s] = o_d * stride_d - left_pad_d`` (``base_ptr``: ``[3, S]`` int32; a
Conv1d / Conv2d uses the last one / two of the three dimensions, the others have base 0,
extent 1). Its input units are the ``(input channel c, tap t)`` pairs, numbered
``unit = c * K + t`` (K taps per channel, row-major over the kernel: channel-major like the
weight ``[Cout, Cin / groups, *kernel]``, ``F.unfold`` and the unfused path), and

    u[s, unit] = noise(seed, s, unit) on [lo_c, hi_c]   (linear_response.noise, UNITS = Cin*K)
                 if the tap's input coordinate base_d[s] + t_d * dilation_d lies inside the
                 input in every dimension, else 0 (zero padding).

So every (row, channel, tap) has its own Philox counter ``s * Cin * K + unit``: the values of a
row are i.i.d. uniform on their channels' ranges and 0 in the padding, independent across rows,
exactly the distribution of a patch-path row.

The response of output channel j (group ``g = j // (Cout / groups)``) is the dot of its weight
row with the ``Cin / groups * K`` units of group g, then ``linear_response.channel_response``. A
block of ``YW`` channels may span several groups: it is computed as one product with the
block-diagonal weight, the units of the groups it spans loaded ``BLOCK_K`` at a time and the
weight 0 outside each channel's own group, so each channel's sum runs over its own units in
order (adding exact zeros changes no float32 sum); for a depthwise layer that is YW-fold work in
the product, while the noise, the costly part, is drawn once per unit.

Pass 1 (``_conv_range_kernel``) takes the min / max of the x columns and of y, pass 1b
(``_conv_code_kernel``) stores the y codes of a slab of output channels: y computed by the same
helper on the same blocks as pass 1 (``YW`` channels from a multiple of YW, ``BLOCK_S`` rows
from a multiple of BLOCK_S), so it bins the values whose range pass 1 took (as in
linear_response.py).

``geo_ptr`` is an int32 vector :data:`GEO_FIELDS` long (see local_conv.geo_values).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .linear_response import (
    channel_response,
    minmax_init,
    minmax_step,
    noise,
    part_rows,
    part_span,
    slab_block,
    store_y_codes,
    store_y_ranges,
)

# Layout of the int32 geometry vector the kernels read (geo_ptr).
GEO_FIELDS = ("CIN", "UNITS", "K", "KS1", "KS2", "E0", "E1", "E2", "D0", "D1", "D2", "UG",
              "COUT_G")  # fmt: skip


@triton.jit
def _geo(geo_ptr, i: tl.constexpr):
    return tl.load(geo_ptr + i)


@triton.jit
def row_base(base_ptr, offs_s, S):
    """The base coordinates (b0, b1, b2), each [BLOCK_S] int32, of rows offs_s."""
    in_s = offs_s < S
    row = base_ptr + offs_s.to(tl.int64)
    b0 = tl.load(row, mask=in_s, other=0)
    b1 = tl.load(row + S, mask=in_s, other=0)
    b2 = tl.load(row + S + S, mask=in_s, other=0)  # no 2 * S: it may not fit an int32
    return b0, b1, b2


@triton.jit
def patch_noise(seed, offs_s, b0, b1, b2, unit, noise_ptr, geo_ptr):
    """u^T [len(unit), BLOCK_S] float32: the patch noise of units ``unit`` in rows offs_s
    (base coordinates b0, b1, b2): 0 for a tap in the padding and for unit >= UNITS."""
    CIN = _geo(geo_ptr, 0)
    UNITS = _geo(geo_ptr, 1)
    K = _geo(geo_ptr, 2)
    KS1 = _geo(geo_ptr, 3)
    KS2 = _geo(geo_ptr, 4)
    valid = unit < UNITS
    c = unit // K
    t = unit - c * K
    lo = tl.load(noise_ptr + c, mask=valid, other=0.0)[:, None]
    hi = tl.load(noise_ptr + CIN + c, mask=valid, other=0.0)[:, None]
    u = noise(seed, offs_s[None, :], unit[:, None], UNITS, lo, hi)
    p0 = b0[None, :] + ((t // (KS1 * KS2)) * _geo(geo_ptr, 8))[:, None]
    p1 = b1[None, :] + (((t // KS2) % KS1) * _geo(geo_ptr, 9))[:, None]
    p2 = b2[None, :] + ((t % KS2) * _geo(geo_ptr, 10))[:, None]
    inside = (p0 >= 0) & (p0 < _geo(geo_ptr, 5)) & (p1 >= 0) & (p1 < _geo(geo_ptr, 6))
    inside = inside & (p2 >= 0) & (p2 < _geo(geo_ptr, 7))
    return tl.where(valid[:, None] & inside, u, 0.0)


@triton.jit
def conv_response_t(seed, offs_s, b0, b1, b2, oc0, w_ptr, chan_ptr, noise_ptr, geo_ptr, COUT,
                    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr,
                    YW: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Transposed response y^T [YW, BLOCK_S] (float32) of output channels oc0 + [0, YW) on rows
    offs_s (module docstring); w_ptr: [COUT, UG] float32."""
    UG = _geo(geo_ptr, 11)
    COUT_G = _geo(geo_ptr, 12)
    oc = oc0 + tl.arange(0, YW)
    valid_oc = oc < COUT
    grp = oc // COUT_G
    last = tl.minimum(oc0 + YW, COUT) - 1
    k_begin = (oc0 // COUT_G) * UG
    k_end = (last // COUT_G + 1) * UG
    w_rows = w_ptr + oc.to(tl.int64) * UG
    acc = tl.zeros([YW, offs_s.shape[0]], tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        u_t = patch_noise(seed, offs_s, b0, b1, b2, offs_k, noise_ptr, geo_ptr)
        u_t = tl.where((offs_k < k_end)[:, None], u_t, 0.0)  # [BLOCK_K, BLOCK_S]
        local = offs_k[None, :] - (grp * UG)[:, None]  # the unit's index in oc's group
        w_mask = valid_oc[:, None] & (local >= 0) & (local < UG)
        w = tl.load(w_rows[:, None] + local, mask=w_mask, other=0.0)
        acc = tl.dot(w, u_t, acc, input_precision="ieee", out_dtype=tl.float32)
    return channel_response(acc, oc, chan_ptr, COUT, ACT, HAS_BIAS, HAS_AFFINE)


# ----------------------------------------------------------------------------- pass 1
@triton.jit
def _conv_y_ranges(w_ptr, chan_ptr, noise_ptr, base_ptr, geo_ptr, row_lo, row_hi, seed, S,
                   s_begin, s_end, COUT, t_y, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_AFFINE: tl.constexpr, YW: tl.constexpr, BLOCK_S: tl.constexpr,
                   BLOCK_K: tl.constexpr):  # fmt: skip
    """Min / max of the response of channels t_y * YW + [0, YW) over rows [s_begin, s_end),
    stored at row_lo / row_hi + channel (NaN for a channel that produced a NaN)."""
    oc = t_y * YW + tl.arange(0, YW)
    valid = oc < COUT
    mn, mx, nan = minmax_init(YW)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        b0, b1, b2 = row_base(base_ptr, offs_s, S)
        y_t = conv_response_t(seed, offs_s, b0, b1, b2, t_y * YW, w_ptr, chan_ptr, noise_ptr,
                              geo_ptr, COUT, ACT, HAS_BIAS, HAS_AFFINE, YW, BLOCK_K)  # fmt: skip
        m = valid[:, None] & (offs_s < s_end)[None, :]
        mn, mx, nan = minmax_step(mn, mx, nan, y_t, m)
    store_y_ranges(row_lo, row_hi, oc, valid, mn, mx, nan)


@triton.jit
def _conv_x_ranges(noise_ptr, base_ptr, geo_ptr, row_lo, row_hi, seed, S, s_begin, s_end, XCOLS,
                   XSTRIDE, XOFF, t_k, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Min / max of x columns t_k * BLOCK_K + [0, BLOCK_K) (padding zeros included) over rows
    [s_begin, s_end)."""
    cols = t_k * BLOCK_K + tl.arange(0, BLOCK_K)
    in_k = cols < XCOLS
    unit = tl.where(in_k, cols * XSTRIDE + XOFF, 2147483647)  # invalid: above UNITS
    mn, mx, nan = minmax_init(BLOCK_K)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        b0, b1, b2 = row_base(base_ptr, offs_s, S)
        u_t = patch_noise(seed, offs_s, b0, b1, b2, unit, noise_ptr, geo_ptr)
        m = in_k[:, None] & (offs_s < s_end)[None, :]
        mn, mx, nan = minmax_step(mn, mx, nan, u_t, m)
    tl.store(row_lo + cols, mn.to(tl.float64), mask=in_k)
    tl.store(row_hi + cols, mx.to(tl.float64), mask=in_k)


@triton.jit
def _conv_range_kernel(
    w_ptr,  # [COUT, UG] float32
    chan_ptr,  # [3, COUT] float32: bias, scale, shift
    noise_ptr,  # [2, CIN] float32: lo, hi
    base_ptr,  # [3, S] int32 base coordinates of the rows
    geo_ptr,  # [len(GEO_FIELDS)] int32
    part_ptr,  # [2, parts, XCOLS + COUT] float64 partial minima, maxima (NaN where seen)
    seed,
    S,
    XCOLS,  # x columns: UNITS (every tap) or CIN (centre taps)
    XSTRIDE,  # unit of x column i: i * XSTRIDE + XOFF
    XOFF,
    COUT,
    rows_per_program,  # multiple of BLOCK_S
    TILES_Y,  # programs along axis 1 with pid < TILES_Y do y channels, the others x columns
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    YW: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Pass 1: partial min / max of y (YW channels) or of the x columns (BLOCK_K of them, the
    padding zeros included) per part of the rows."""
    part = tl.program_id(0)
    pid = tl.program_id(1)
    s_begin, s_end, row_lo, row_hi = part_rows(part_ptr, part, rows_per_program, S, XCOLS + COUT)
    if pid < TILES_Y:
        _conv_y_ranges(w_ptr, chan_ptr, noise_ptr, base_ptr, geo_ptr, row_lo + XCOLS,
                       row_hi + XCOLS, seed, S, s_begin, s_end, COUT, pid, ACT, HAS_BIAS,
                       HAS_AFFINE, YW, BLOCK_S, BLOCK_K)  # fmt: skip
    else:
        _conv_x_ranges(noise_ptr, base_ptr, geo_ptr, row_lo, row_hi, seed, S, s_begin, s_end,
                       XCOLS, XSTRIDE, XOFF, pid - TILES_Y, BLOCK_S, BLOCK_K)  # fmt: skip


# ----------------------------------------------------------------------------- pass 1b
@triton.jit
def _conv_code_kernel(
    w_ptr,  # [COUT, UG] float32
    chan_ptr,  # [3, COUT] float32: bias, scale, shift
    noise_ptr,  # [2, CIN] float32: lo, hi
    base_ptr,  # [3, S] int32 base coordinates of the rows
    geo_ptr,  # [len(GEO_FIELDS)] int32
    ranges_ptr,  # [XCOLS + COUT, 2] float64 binning ranges (pass 1)
    codes_ptr,  # [C1 - C0, S] uint8 y codes of channels [C0, C1)
    seed,
    S,
    XCOLS,
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
    """Pass 1b, as linear_response._code_kernel: the codes of the slab's channels of block
    C0 // YW + tl.program_id(1) in part tl.program_id(0) of the rows (patch rows here)."""
    t_y, oc, valid, lo, hi = slab_block(ranges_ptr, XCOLS, C0, C1, YW)
    s_begin, s_end = part_span(rows_per_program, S)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        b0, b1, b2 = row_base(base_ptr, offs_s, S)
        y_t = conv_response_t(seed, offs_s, b0, b1, b2, t_y * YW, w_ptr, chan_ptr, noise_ptr,
                              geo_ptr, COUT, ACT, HAS_BIAS, HAS_AFFINE, YW, BLOCK_K)  # fmt: skip
        store_y_codes(codes_ptr, y_t, lo, hi, bins, oc, valid, C0, offs_s, s_end, S)
