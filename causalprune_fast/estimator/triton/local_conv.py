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
* pass 2 (``local_mi._local_mi_kernel``, shared with the Linear layers): one program per tile
  of ``PX`` x columns x ``PY`` output channels of the slab; for each chunk of rows it
  regenerates only its x columns' noise, bins it on the pass-1 ranges, loads its channels'
  stored codes and adds the one-hot product into int32 counts (``mi_blocks``), and ends with
  the same float64 MI epilogue.

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
from dataclasses import dataclass, field

import torch

from causalprune_fast.base.conv_geometry import ConvGeometry

from .conv_response import GEO_FIELDS, _conv_code_kernel, _conv_range_kernel
from .local_args import check_device, check_layer_args, check_options
from .local_plan import LocalTileConfig
from .local_run import LocalRun, run_fused


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


# ----------------------------------------------------------------------------- launcher
@dataclass
class LocalConvRun(LocalRun):
    """Everything one fused convolution run computed (see :func:`run_local_conv`): X x columns
    (their ranges include the padding zeros), and the rows' coordinates."""

    base: torch.Tensor = field(kw_only=True)  # [3, S] int32 base coordinates of the rows
    geo: torch.Tensor = field(kw_only=True)  # int32 geometry (conv_response.GEO_FIELDS)


def _check_weight(weight, geometry, taps) -> torch.Tensor:
    """The checked weight as float32 ``[Cout, Cin / groups * K]``; also checks geometry, taps."""
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
    check_device(weight, "weight")
    w = weight.detach().reshape(cout, -1).to(torch.float32).contiguous()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight must be finite")
    return w


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
    check_options(reduce, miller_madow)
    w = _check_weight(weight, geometry, taps)
    device = w.device
    cout, cin = w.shape[0], weight.shape[1] * geometry.groups
    a = check_layer_args(cout, cin, device, bias, lo, hi, samples, seed, bins, scale, shift,
                         activation, unit="input channel")  # fmt: skip
    k, g = geometry.taps, geometry.groups
    xcols, xstride, xoff = (cin * k, 1, 0) if taps == "all" else (cin, k, geometry.center)
    base = row_positions(geometry, a.samples, a.seed, device)
    geo = torch.tensor(geo_values(geometry, cin, cout), dtype=torch.int32, device=device)
    return run_fused(_conv_range_kernel, _conv_code_kernel, w, a, xcols=xcols, groups=g,
                     activation=activation, config=config, memory_budget=memory_budget,
                     miller_madow=miller_madow, reduce=reduce, keep_codes=keep_codes,
                     shared=dict(base_ptr=base, geo_ptr=geo), own=dict(XCOLS=xcols),
                     pass1_args=dict(XSTRIDE=xstride, XOFF=xoff),
                     mi_args=dict(CONV=True, XSTRIDE=xstride, XOFF=xoff), run_type=LocalConvRun,
                     base=base, geo=geo)  # fmt: skip


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
            :func:`~causalprune_fast.estimator.triton.local_linear.local_linear_mi`.

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
    return run.result(return_ranges)


__all__ = ["LocalConvRun", "local_conv_mi", "row_positions", "run_local_conv"]
