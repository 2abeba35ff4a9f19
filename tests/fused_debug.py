"""Test-only views into the fused local-mode kernels (estimator/triton/local_linear.py and
local_conv.py).

The production kernels store neither the noise nor the response (only the y codes, one slab
of output channels at a time). These kernels recompute them with the production device helpers
(``linear_response.noise``, ``range_response``, ``conv_response``) at the launch shapes of a
run, so the tests see the values the fused passes measured:

* :func:`materialize_noise`: the [S, Cin] noise of every kernel;
* :func:`local_linear_debug`: a fused run (with the y codes pass 2 counted) plus the response
  [S, Cout] as passes 1 and 1b compute it (``y``: pass 1 took its min / max, pass 1b binned it);
* :func:`reference_response`: the unfused float32 torch response of given noise;
* :func:`assert_codes_agree_off_edges`: stored codes against a recomputed response's codes;
* :func:`local_conv_debug`: a fused convolution run plus its patch rows [S, Cin * K] and the
  response passes 1 and 1b compute; :func:`reference_conv_response` the unfused torch response
  of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

import causalprune_fast as cf
from causalprune_fast.estimator.triton import local_conv as lc
from causalprune_fast.estimator.triton import local_linear as ll
from causalprune_fast.estimator.triton.conv_response import conv_response_t, patch_noise, row_base
from causalprune_fast.estimator.triton.linear_response import noise, range_response

NOISE_BLOCK_S, NOISE_BLOCK_K = 32, 64


@triton.jit
def _noise_kernel(out_ptr, noise_ptr, seed, S, CIN, BLOCK_S: tl.constexpr,
                  BLOCK_K: tl.constexpr):  # fmt: skip
    """out [S, CIN] float32 = the noise the fused kernels use (noise_ptr: [2, CIN] lo, hi)."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    in_k = offs_k < CIN
    mask = (offs_s < S)[:, None] & in_k[None, :]
    lo = tl.load(noise_ptr + offs_k, mask=in_k, other=0.0)
    hi = tl.load(noise_ptr + CIN + offs_k, mask=in_k, other=0.0)
    u = noise(seed, offs_s[:, None], offs_k[None, :], CIN, lo[None, :], hi[None, :])
    tl.store(out_ptr + offs_s.to(tl.int64)[:, None] * CIN + offs_k[None, :], u, mask=mask)


@triton.jit
def _response_kernel(y_ptr, w_ptr, chan_ptr, noise_ptr, seed, S, CIN, COUT, ACT: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, YW: tl.constexpr,
                     BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """y [S, COUT] float32 as passes 1 and 1b compute it: program (i, t) computes samples
    i * BLOCK_S + [0, BLOCK_S) of channel block t (YW channels), with their helper."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    t = tl.program_id(1)
    oc = t * YW + tl.arange(0, YW)
    y_t = range_response(seed, offs_s, t, w_ptr, chan_ptr, noise_ptr, CIN, COUT, ACT, HAS_BIAS,
                         HAS_AFFINE, YW, BLOCK_K)  # fmt: skip
    mask = (oc < COUT)[:, None] & (offs_s < S)[None, :]
    tl.store(y_ptr + offs_s.to(tl.int64)[None, :] * COUT + oc[:, None], y_t, mask=mask)


def materialize_noise(samples: int, lo: torch.Tensor, hi, seed: int) -> torch.Tensor:
    """The [samples, Cin] float32 noise the fused kernels regenerate: sample s, unit i is
    ``lo_i + (hi_i - lo_i) * tl.rand(seed, s * Cin + i)`` (clamped to hi_i)."""
    cin = lo.shape[0]
    hi = torch.as_tensor(hi, dtype=torch.float32, device=lo.device).expand(cin)
    ranges = torch.stack([lo.to(torch.float32), hi]).contiguous()
    out = torch.empty((samples, cin), dtype=torch.float32, device=lo.device)
    grid = (triton.cdiv(samples, NOISE_BLOCK_S), triton.cdiv(cin, NOISE_BLOCK_K))
    _noise_kernel[grid](out_ptr=out, noise_ptr=ranges, seed=seed, S=samples, CIN=cin,
                        BLOCK_S=NOISE_BLOCK_S, BLOCK_K=NOISE_BLOCK_K, num_warps=4,
                        enable_fp_fusion=False)  # fmt: skip
    return out


@dataclass
class DebugRun:
    run: ll.LocalLinearRun  # with y_codes [S, Cout]: the codes pass 2 counted
    y: torch.Tensor  # [S, Cout] float32: the response pass 1 took the ranges of, pass 1b binned


def local_linear_debug(weight, bias, lo, hi, *, samples, seed, bins=16, scale=None, shift=None,
                       activation="identity", miller_madow=False, reduce=None, config=None,
                       memory_budget=None) -> DebugRun:  # fmt: skip
    """run_local_linear (keeping the y codes), and the response y [S, Cout] it binned."""
    run = ll.run_local_linear(weight, bias, lo, hi, samples=samples, seed=seed, bins=bins,
                              scale=scale, shift=shift, activation=activation,
                              miller_madow=miller_madow, reduce=reduce, config=config,
                              memory_budget=memory_budget, keep_codes=True)  # fmt: skip
    cfg = run.config
    w = weight.detach().reshape(weight.shape[0], weight.shape[1]).to(torch.float32).contiguous()
    cout, cin = w.shape
    f32 = dict(dtype=torch.float32, device=w.device)
    chan = torch.stack([
        torch.zeros(cout, **f32) if bias is None else bias.to(**f32),
        torch.ones(cout, **f32) if scale is None else scale.to(**f32),
        torch.zeros(cout, **f32) if shift is None else shift.to(**f32),
    ]).contiguous()  # fmt: skip
    ranges = torch.stack([torch.as_tensor(v, **f32).expand(cin) for v in (lo, hi)]).contiguous()
    y = torch.full((samples, cout), float("nan"), **f32)
    grid = (triton.cdiv(samples, cfg.block_s), triton.cdiv(cout, cfg.yw))
    _response_kernel[grid](
        y_ptr=y, w_ptr=w, chan_ptr=chan, noise_ptr=ranges, seed=seed, S=samples, CIN=cin,
        COUT=cout, ACT=activation, HAS_BIAS=bias is not None,
        HAS_AFFINE=scale is not None or shift is not None, YW=cfg.yw, BLOCK_S=cfg.block_s,
        BLOCK_K=cfg.block_k, num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    return DebugRun(run, y)


def assert_codes_agree_off_edges(y_a, codes_b, ranges, bins, bound):
    """The codes of y_a on ranges and codes_b agree except where y_a lies within bound of a
    bin edge (lo + k (hi - lo) / bins), where rounding may put two computations of y on
    either side; returns the fraction that differ."""
    ca, _ = cf.quantize(y_a.cpu(), bins, ranges.cpu(), backend="cpu")
    differ = ca != codes_b.cpu()
    if bool(differ.any()):
        lo, hi = ranges[:, 0].cpu(), ranges[:, 1].cpu()
        t = (y_a.cpu().double() - lo) / (hi - lo) * bins
        edge = lo + torch.round(t) * (hi - lo) / bins
        near = (y_a.cpu().double() - edge).abs() <= bound.cpu().double()
        assert bool(near[differ].all()), f"{int((differ & ~near).sum())} codes flipped off an edge"
    return float(differ.double().mean())


def reference_response(u, weight, bias=None, scale=None, shift=None, activation="identity"):
    """The unfused float32 torch response ``act(scale * (u @ W^T + b) + shift)`` of noise u."""
    w = weight.reshape(weight.shape[0], weight.shape[1]).to(torch.float32)
    y = u @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
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


# ----------------------------------------------------------------------------- convolutions
@triton.jit
def _patch_kernel(out_ptr, noise_ptr, base_ptr, geo_ptr, seed, S, UNITS, BLOCK_S: tl.constexpr,
                  BLOCK_K: tl.constexpr):  # fmt: skip
    """out [S, UNITS] float32 = the patch rows the fused convolution kernels use."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    unit = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    b0, b1, b2 = row_base(base_ptr, offs_s, S)
    u_t = patch_noise(seed, offs_s, b0, b1, b2, unit, noise_ptr, geo_ptr)  # [BLOCK_K, BLOCK_S]
    mask = (unit < UNITS)[:, None] & (offs_s < S)[None, :]
    tl.store(out_ptr + offs_s.to(tl.int64)[None, :] * UNITS + unit[:, None], u_t, mask=mask)


@triton.jit
def _conv_y_kernel(y_ptr, w_ptr, chan_ptr, noise_ptr, base_ptr, geo_ptr, seed, S, COUT,
                   ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr,
                   YW: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """y [S, COUT] float32 as passes 1 and 1b of the convolution kernels compute it (channel
    block t of YW)."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    t = tl.program_id(1)
    b0, b1, b2 = row_base(base_ptr, offs_s, S)
    y_t = conv_response_t(seed, offs_s, b0, b1, b2, t * YW, w_ptr, chan_ptr, noise_ptr, geo_ptr,
                          COUT, ACT, HAS_BIAS, HAS_AFFINE, YW, BLOCK_K)  # fmt: skip
    oc = t * YW + tl.arange(0, YW)
    mask = (oc < COUT)[:, None] & (offs_s < S)[None, :]
    tl.store(y_ptr + offs_s.to(tl.int64)[None, :] * COUT + oc[:, None], y_t, mask=mask)


@dataclass
class ConvDebugRun:
    run: lc.LocalConvRun
    u: torch.Tensor  # [S, Cin * K] float32: the patch rows (0 in the padding)
    x: torch.Tensor  # [S, X] the x columns (every unit, or the centre taps)
    y: torch.Tensor  # [S, Cout] float32: the response pass 1 took the ranges of, pass 1b binned
    inside: torch.Tensor  # [S, K] bool: which taps of each row are inside the input


def local_conv_debug(weight, bias, lo, hi, *, geometry, taps="all", samples, seed, bins=16,
                     scale=None, shift=None, activation="identity", miller_madow=False,
                     reduce=None, config=None, memory_budget=None) -> ConvDebugRun:  # fmt: skip
    """run_local_conv (keeping the y codes), the patch rows and the response y [S, Cout] that
    pass 1b binned."""
    run = lc.run_local_conv(weight, bias, lo, hi, geometry=geometry, taps=taps, samples=samples,
                            seed=seed, bins=bins, scale=scale, shift=shift,
                            activation=activation, miller_madow=miller_madow, reduce=reduce,
                            config=config, memory_budget=memory_budget,
                            keep_codes=True)  # fmt: skip
    cfg = run.config
    cout = weight.shape[0]
    cin = weight.shape[1] * geometry.groups
    k = geometry.taps
    w = weight.detach().reshape(cout, -1).to(torch.float32).contiguous()
    f32 = dict(dtype=torch.float32, device=w.device)
    chan = torch.stack([
        torch.zeros(cout, **f32) if bias is None else bias.to(**f32),
        torch.ones(cout, **f32) if scale is None else scale.to(**f32),
        torch.zeros(cout, **f32) if shift is None else shift.to(**f32),
    ]).contiguous()  # fmt: skip
    ranges = torch.stack([torch.as_tensor(v, **f32).expand(cin) for v in (lo, hi)]).contiguous()
    u = torch.full((samples, cin * k), float("nan"), **f32)
    grid = (triton.cdiv(samples, NOISE_BLOCK_S), triton.cdiv(cin * k, NOISE_BLOCK_K))
    _patch_kernel[grid](out_ptr=u, noise_ptr=ranges, base_ptr=run.base, geo_ptr=run.geo,
                        seed=seed, S=samples, UNITS=cin * k, BLOCK_S=NOISE_BLOCK_S,
                        BLOCK_K=NOISE_BLOCK_K, num_warps=4, enable_fp_fusion=False)  # fmt: skip
    y = torch.full((samples, cout), float("nan"), **f32)
    grid = (triton.cdiv(samples, cfg.block_s), triton.cdiv(cout, cfg.yw))
    _conv_y_kernel[grid](
        y_ptr=y, w_ptr=w, chan_ptr=chan, noise_ptr=ranges, base_ptr=run.base, geo_ptr=run.geo,
        seed=seed, S=samples, COUT=cout, ACT=activation, HAS_BIAS=bias is not None,
        HAS_AFFINE=scale is not None or shift is not None, YW=cfg.yw,
        BLOCK_S=cfg.block_s, BLOCK_K=cfg.block_k, num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    x = u if taps == "all" else u[:, geometry.center :: k]
    return ConvDebugRun(run, u, x, y, conv_inside(geometry, run.base))


def conv_inside(geometry, base: torch.Tensor) -> torch.Tensor:
    """[S, K] bool: which taps of each row (base coordinates [3, S]) lie inside the input."""
    ks = geometry.kernel_size
    dims = len(ks)
    grid = torch.meshgrid(*[torch.arange(s) for s in ks], indexing="ij")
    taps = torch.stack([t.reshape(-1) for t in grid])  # [dims, K]
    base = base.cpu().long()
    ok = torch.ones((base.shape[1], taps.shape[1]), dtype=torch.bool)
    for d in range(dims):
        coord = base[3 - dims + d][:, None] + taps[d][None, :] * geometry.dilation[d]
        ok &= (coord >= 0) & (coord < geometry.input_size[d])
    return ok


def reference_conv_response(u, weight, groups, bias=None, scale=None, shift=None,
                            activation="identity"):  # fmt: skip
    """The unfused float32 torch response of patch rows u [S, Cin * K] (block-diagonal product
    for groups > 1, as scoring/sampling.py computes it)."""
    cout = weight.shape[0]
    w = weight.reshape(groups, cout // groups, -1).to(torch.float32)
    n = u.shape[0]
    y = torch.einsum("rgi,goi->rgo", u.reshape(n, groups, -1), w).reshape(n, cout)
    return reference_response(y, torch.eye(cout, dtype=torch.float32, device=u.device), bias,
                              scale, shift, activation)  # fmt: skip
