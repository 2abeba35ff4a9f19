"""Fused ``local``-mode MI of a convolution (Conv1d / 2d / 3d, any kernel size, stride, zero
padding, dilation and groups, depthwise included).

The rows are those of the unfused ``patches`` path (docs/method.md sections 2.2 and 3.4), made
in registers (conv_response.py): each row is one receptive-field patch at an output position
drawn uniformly (on the host, from a generator seeded by ``seed``: S int32 base coordinates per
dimension, the only per-row data in memory), with i.i.d. Philox noise for every (input channel,
tap) on the channel's range and 0 for taps in the padding. Then, like local_linear.py:

* pass 1 (``conv_response._conv_range_kernel``): per-column min / max of the x columns (the
  padding zeros included) and of the response;
* pass 1b (``conv_response._conv_code_kernel``): the response recomputed as pass 1 computed it,
  binned on pass 1's ranges and stored as uint8 codes per slab of output channels (within
  ``memory_budget``, ``local_plan.channel_slabs``);
* pass 2 (``_conv_mi_kernel`` below): one program per tile of ``PX`` x columns x ``PY`` output
  channels of the slab; for each chunk of rows it regenerates only its x columns' noise, bins it
  on the pass-1 ranges, loads its channels' stored codes and adds the one-hot product into int32
  counts (``mi_blocks``), and ends with the same float64 MI epilogue.

Input units (x columns) are ``(channel, tap)`` pairs, channel-major (``taps="all"``), or the
centre tap of each channel (``taps="center"``), as on the unfused path. With ``groups > 1`` only
pairs within a group are measured, the others are 0 (as ``pairwise_mi(groups=...)``): a y tile's
programs cover only the x columns of the groups its channels belong to.

Cost. As in local_linear.py: the response (the noise of every unit of the groups of a block of
``YW`` channels, ``S * Cin / groups * K`` Philox draws per group, and its product in float32
FMAs) is computed twice, in passes 1 and 1b, and pass 2 draws ``S * PX`` noise values per
program and reads ``S * PY`` code bytes: ``S * X * Cout / (groups * PY)`` draws in all (X x
columns) where a tile's channels share a group, ``S * X`` for a depthwise layer (a tile spans
PY groups). benchmarks/bench_local_conv.py measures it against the unfused path on a GPU.

Scope: zero padding; ``S < 2^31``; ``Cin * K < 2^31``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from causalprune_fast.conv_geometry import ConvGeometry

from ._local_linear_args import check_device, check_int, check_vector
from .conv_response import (
    GEO_FIELDS,
    _conv_code_kernel,
    _conv_range_kernel,
    patch_noise,
    row_base,
)
from .layer_response import SUPPORTED_ACTIVATIONS
from .local_linear import LocalTileConfig, local_tile_config
from .local_plan import channel_slabs, code_budget, row_parts
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


# ----------------------------------------------------------------------------- geometry
def row_positions(geometry: ConvGeometry, samples: int, seed: int, device) -> torch.Tensor:
    """``[3, samples]`` int32 base coordinates ``o_d * stride_d - left_d`` of uniformly drawn
    output positions (a CPU generator seeded by ``seed``); dimensions missing in front: 0."""
    out = geometry.output_size
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randint(math.prod(out), (samples,), generator=gen)
    base = torch.zeros((3, samples), dtype=torch.int64)
    dims = len(out)
    for d in reversed(range(dims)):
        o = pos % out[d]
        pos = pos // out[d]
        base[3 - dims + d] = o * geometry.stride[d] - geometry.padding[d][0]
    return base.to(torch.int32).to(device)


def geo_values(geometry: ConvGeometry, cin: int, cout: int) -> list[int]:
    """The int32 vector conv_response.py reads (fields :data:`GEO_FIELDS`)."""
    dims = len(geometry.kernel_size)
    pad = 3 - dims
    ks = (1,) * pad + geometry.kernel_size
    ext = (1,) * pad + geometry.input_size
    dil = (1,) * pad + geometry.dilation
    k = geometry.taps
    g = geometry.groups
    values = dict(CIN=cin, UNITS=cin * k, K=k, KS1=ks[1], KS2=ks[2], E0=ext[0], E1=ext[1],
                  E2=ext[2], D0=dil[0], D1=dil[1], D2=dil[2], UG=cin // g * k,
                  COUT_G=cout // g)  # fmt: skip
    return [values[f] for f in GEO_FIELDS]


# ----------------------------------------------------------------------------- pass 2
@triton.jit
def _conv_mi_kernel(
    noise_ptr,  # [2, CIN] float32: noise ranges lo, hi
    base_ptr,  # [3, S] int32
    geo_ptr,  # int32 geometry (conv_response.GEO_FIELDS)
    ranges_ptr,  # [XCOLS + COUT, 2] float64 binning ranges of x, then of y (pass 1)
    codes_ptr,  # [C1 - C0, S] uint8 y codes of the slab's channels (pass 1b)
    out_ptr,  # [XCOLS, COUT] float32 MI matrix (unless SUMS)
    sums_ptr,  # [XCOLS + COUT] float64 row sums, then column sums (SUMS)
    seed,
    S,
    XCOLS,
    XSTRIDE,
    XOFF,
    XG,  # x columns per group
    COUT,
    bins,
    C0,  # the slab's channels [C0, C1)
    C1,
    TILES_Y,  # pair tiles along the slab's channels: cdiv(C1 - C0, PY)
    MILLER_MADOW: tl.constexpr,
    SUMS: tl.constexpr,
    PX: tl.constexpr,
    PY: tl.constexpr,
    SB: tl.constexpr,
    K: tl.constexpr,  # sub-blocks per column
    BLOCK_S: tl.constexpr,
):
    """Pass 2: joint counts and MI of PX x columns (of the groups of the tile's channels) and
    PY output channels of the slab: x regenerated and binned, y codes loaded; pairs across
    groups are 0."""
    pid = tl.program_id(0)
    t_y = pid % TILES_Y
    COUT_G = tl.load(geo_ptr + 12)
    jy = t_y * PY + tl.arange(0, PY)  # rows of the slab's codes
    oc0 = C0 + t_y * PY
    x_begin = (oc0 // COUT_G) * XG
    x_end = ((tl.minimum(oc0 + PY, C1) - 1) // COUT_G + 1) * XG
    ix = x_begin + (pid // TILES_Y) * PX + tl.arange(0, PX)
    iy = C0 + jy
    valid_x = ix < x_end
    valid_y = iy < C1
    unit_x = tl.where(valid_x, ix * XSTRIDE + XOFF, 2147483647)

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
                b0, b1, b2 = row_base(base_ptr, offs_s, S)
                u_x = patch_noise(seed, offs_s, b0, b1, b2, unit_x, noise_ptr, geo_ptr)
                cx = bin_code(u_x, xr_lo, xr_hi, bins, False)
                cx = tl.where(valid_x[:, None] & in_s[None, :], cx, -1)
                cy = load_codes(codes_ptr, jy, valid_y, offs_s, S)
                acc = count_pairs(acc, cx, cy, kx, ky, SB, SB)
            joint, nz_xy, rows, cols0, cols1 = add_block(acc, ky, joint, nz_xy, rows, cols0,
                                                         cols1, PX, PY)  # fmt: skip
        marg_x, nz_x = add_rows(rows, marg_x, nz_x)

    mi = tile_mi(joint, marg_x, nz_x, nz_xy, cols0, cols1, S, K, MILLER_MADOW)
    same = (ix // XG)[:, None] == (iy // COUT_G)[None, :]
    mi = tl.where(same, mi, 0.0)
    store_mi(mi, ix, iy, valid_x, valid_y, out_ptr, sums_ptr, XCOLS, COUT, SUMS)


# ----------------------------------------------------------------------------- launcher
@dataclass
class LocalConvRun:
    """Everything one fused convolution run computed (see :func:`run_local_conv`)."""

    matrix: torch.Tensor | None  # [X, Cout] float32 (reduce=None)
    per_x: torch.Tensor | None  # [X] float64 (reduce="sum")
    per_y: torch.Tensor | None  # [Cout] float64 (reduce="sum")
    x_ranges: torch.Tensor  # [X, 2] float64: min, max of each x column (padding zeros included)
    y_ranges: torch.Tensor  # [Cout, 2] float64
    base: torch.Tensor  # [3, S] int32 base coordinates of the rows
    geo: torch.Tensor  # int32 geometry (conv_response.GEO_FIELDS)
    config: LocalTileConfig
    slabs: list[tuple[int, int]]  # output channels [c0, c1) per slab (local_plan.channel_slabs)
    y_codes: torch.Tensor | None = None  # [S, Cout] uint8 codes pass 2 counted (keep_codes)


def _prepare(weight, bias, lo, hi, geometry, taps, samples, seed, bins, scale, shift, activation):
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be a float tensor [Cout, Cin / groups, *kernel], got "
                         f"{getattr(weight, 'dtype', type(weight).__name__)}")  # fmt: skip
    if weight.dim() not in (3, 4, 5):
        raise ValueError(f"weight must be [Cout, Cin / groups, *kernel] of a Conv1d/2d/3d, got "
                         f"shape {tuple(weight.shape)}")  # fmt: skip
    if not isinstance(geometry, ConvGeometry):
        raise ValueError(f"geometry must be a ConvGeometry, got {type(geometry).__name__}")
    geometry.check(weight.shape)
    if taps not in ("all", "center"):
        raise ValueError(f"taps must be 'all' or 'center', got {taps!r}")
    cout, cin = weight.shape[0], weight.shape[1] * geometry.groups
    if cin * geometry.taps >= 2**31 or cout >= 2**31 or min(cout, cin) < 1:
        raise ValueError(f"weight is too large or empty: shape {tuple(weight.shape)}")
    device = weight.device
    check_device(weight, "weight")
    w = weight.detach().reshape(cout, -1).to(torch.float32).contiguous()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight must be finite")
    b = None if bias is None else check_vector(bias, cout, "bias", device)
    lo_t = check_vector(lo, cin, "lo", device, allow_scalar=True)
    hi_t = check_vector(hi, cin, "hi", device, allow_scalar=True)
    if bool((hi_t < lo_t).any()):
        i = int(torch.nonzero(hi_t < lo_t)[0, 0])
        raise ValueError(f"hi must be >= lo for every input channel, got lo[{i}] > hi[{i}]")
    samples = check_int(samples, "samples", 1, 2**31)
    seed = check_int(seed, "seed", 0, 2**63)
    bins = check_int(bins, "bins", 2, 257)
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"activation must be one of {SUPPORTED_ACTIVATIONS}, got {activation!r}")
    ones, zeros = torch.ones(cout, device=device), torch.zeros(cout, device=device)
    has_affine = scale is not None or shift is not None
    scale = ones if scale is None else check_vector(scale, cout, "scale", device)
    shift = zeros if shift is None else check_vector(shift, cout, "shift", device)
    chan = torch.stack([zeros if b is None else b, scale, shift]).contiguous()
    return w, b is not None, chan, torch.stack([lo_t, hi_t]), samples, seed, bins, has_affine


def run_local_conv(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lo,
    hi,
    *,
    geometry: ConvGeometry,
    taps: str = "all",
    samples: int,
    seed: int,
    bins: int = 16,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    activation: str = "identity",
    miller_madow: bool = False,
    reduce: str | None = None,
    memory_budget: int | None = None,
    config: LocalTileConfig | None = None,
    keep_codes: bool = False,
) -> LocalConvRun:
    """:func:`local_conv_mi` with a given launch shape (``config``, default
    ``local_tile_config`` of the x columns and output channels), returning the ranges, the
    rows' base coordinates, the slabs and the shape used (tests, benchmarks); ``keep_codes``
    also returns the y codes pass 2 counted (tests: S x Cout bytes beyond the budget)."""
    if reduce not in (None, "sum"):
        raise ValueError(f"reduce must be None or 'sum', got {reduce!r}")
    if not isinstance(miller_madow, bool):
        raise ValueError(f"miller_madow must be a bool, got {miller_madow!r}")
    w, has_bias, chan, noise_ranges, S, seed, bins, has_affine = _prepare(
        weight, bias, lo, hi, geometry, taps, samples, seed, bins, scale, shift, activation
    )
    device = w.device
    cout = w.shape[0]
    cin = noise_ranges.shape[1]
    k, g = geometry.taps, geometry.groups
    xcols, xstride, xoff = (cin * k, 1, 0) if taps == "all" else (cin, k, geometry.center)
    cfg = config or local_tile_config(xcols, cout, bins, S)
    assert cfg.sbx == cfg.sby and cfg.kx == cfg.ky, "x and y share their bins"
    slabs = channel_slabs(cout, S, cfg.py, cfg.yw, code_budget(memory_budget))
    base = row_positions(geometry, S, seed, device)
    geo = torch.tensor(geo_values(geometry, cin, cout), dtype=torch.int32, device=device)
    common = dict(noise_ptr=noise_ranges, base_ptr=base, geo_ptr=geo, seed=seed, S=S,
                  XCOLS=xcols, COUT=cout, BLOCK_S=cfg.block_s,
                  enable_fp_fusion=False)  # fmt: skip
    layer = dict(common, w_ptr=w, chan_ptr=chan, ACT=activation, HAS_BIAS=has_bias,
                 HAS_AFFINE=has_affine, YW=cfg.yw, BLOCK_K=cfg.block_k)  # fmt: skip

    # Pass 1: ranges, the rows split into `parts` so that there are enough programs.
    tiles_y1 = triton.cdiv(cout, cfg.yw)
    tiles_1 = tiles_y1 + triton.cdiv(xcols, cfg.block_k)
    parts, rows_per_program = row_parts(S, cfg.block_s, tiles_1)
    partial = torch.empty((2, parts, xcols + cout), dtype=torch.float64, device=device)
    _conv_range_kernel[(parts, tiles_1)](
        part_ptr=partial, XSTRIDE=xstride, XOFF=xoff, rows_per_program=rows_per_program,
        TILES_Y=tiles_y1, num_warps=4, num_stages=1, **layer,
    )  # fmt: skip
    ranges = torch.stack([partial[0].amin(dim=0), partial[1].amax(dim=0)], dim=1).contiguous()
    bad = ~torch.isfinite(ranges[xcols:]).all(dim=1)
    if bool(bad.any()):
        chans = torch.nonzero(bad)[:, 0].tolist()
        raise ValueError(
            f"the layer's response ({activation}) is non-finite (NaN/Inf) in {len(chans)} "
            f"output channel(s) under the noise, e.g. {chans[:8]}; check weight, bias, scale, "
            "shift and the noise range for overflow"
        )

    # Per slab of output channels: pass 1b stores its y codes, pass 2 counts its pairs (a y
    # tile's programs cover the x columns of the groups of its channels).
    sums = reduce == "sum"
    sums_t = torch.zeros(xcols + cout if sums else 1, dtype=torch.float64, device=device)
    out = sums_t if sums else torch.zeros((xcols, cout), dtype=torch.float32, device=device)
    cout_g, xg = cout // g, xcols // g
    kept = []
    for c0, c1 in slabs:
        codes = torch.empty((c1 - c0, S), dtype=torch.uint8, device=device)
        blocks = (c1 - 1) // cfg.yw - c0 // cfg.yw + 1
        parts, rows_per_program = row_parts(S, cfg.block_s, blocks)
        _conv_code_kernel[(parts, blocks)](
            ranges_ptr=ranges, codes_ptr=codes, bins=bins, C0=c0, C1=c1,
            rows_per_program=rows_per_program, num_warps=4, num_stages=1, **layer,
        )  # fmt: skip
        tiles_y = triton.cdiv(c1 - c0, cfg.py)
        span = max(
            ((min(t + cfg.py, c1) - 1) // cout_g - t // cout_g + 1) * xg
            for t in range(c0, c1, cfg.py)
        )
        _conv_mi_kernel[(triton.cdiv(span, cfg.px) * tiles_y,)](
            ranges_ptr=ranges, codes_ptr=codes, out_ptr=out, sums_ptr=sums_t, XSTRIDE=xstride,
            XOFF=xoff, XG=xg, bins=bins, C0=c0, C1=c1, TILES_Y=tiles_y,
            MILLER_MADOW=miller_madow, SUMS=sums, PX=cfg.px, PY=cfg.py, SB=cfg.sbx, K=cfg.kx,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
        )  # fmt: skip
        if keep_codes:
            kept.append(codes)
        del codes
    return LocalConvRun(
        matrix=None if sums else out,
        per_x=sums_t[:xcols] if sums else None,
        per_y=sums_t[xcols:] if sums else None,
        x_ranges=ranges[:xcols],
        y_ranges=ranges[xcols:],
        base=base,
        geo=geo,
        config=cfg,
        slabs=slabs,
        y_codes=torch.cat(kept).t() if keep_codes else None,
    )


def local_conv_mi(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lo,
    hi,
    *,
    geometry: ConvGeometry,
    taps: str = "all",
    samples: int,
    seed: int,
    bins: int = 16,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    activation: str = "identity",
    miller_madow: bool = False,
    reduce: str | None = None,
    return_ranges: bool = False,
    memory_budget: int | None = None,
):
    """MI in bits between every input unit and every output channel of a convolution driven by
    uniform patch noise, fused (module docstring).

    Args:
        weight: ``[Cout, Cin / groups, *kernel]`` of a Conv1d / 2d / 3d, any float dtype
            (computed in float32).
        bias: ``[Cout]`` or None.
        lo, hi: per-input-channel noise ranges ``[Cin]`` (or numbers), finite, ``hi >= lo``.
        geometry: the layer's :class:`ConvGeometry` (``ConvGeometry.of(module, input_shape)``).
        taps: ``"all"``: the input units are the ``Cin * K`` (channel, tap) pairs,
            channel-major; ``"center"``: the centre tap of each channel (``Cin`` units).
        samples: patch rows S, 1 <= S < 2^31.
        seed: seed of the Philox noise and of the rows' output positions, 0 <= seed < 2^63.
        bins, scale, shift, activation, miller_madow, reduce, return_ranges, memory_budget: as
            :func:`~causalprune_fast.triton_kernels.local_linear.local_linear_mi`.

    Returns:
        The ``[units, Cout]`` float32 matrix (pairs across groups 0) or the sums ``(per_x,
        per_y)``; with ``return_ranges``, ``(result, x_ranges, y_ranges)``.

    Raises:
        ValueError: a bad argument (named), tensors on a device the kernels cannot use, a
            memory_budget too small for the codes of one tile of output channels, or a
            non-finite response.
    """
    run = run_local_conv(weight, bias, lo, hi, geometry=geometry, taps=taps, samples=samples,
                         seed=seed, bins=bins, scale=scale, shift=shift, activation=activation,
                         miller_madow=miller_madow, reduce=reduce,
                         memory_budget=memory_budget)  # fmt: skip
    result = (run.per_x, run.per_y) if reduce == "sum" else run.matrix
    return (result, run.x_ranges, run.y_ranges) if return_ranges else result


__all__ = ["ConvGeometry", "LocalConvRun", "local_conv_mi", "row_positions", "run_local_conv"]
