"""Host side of a fused ``local``-mode run, shared by local_linear.py and local_conv.py
(:func:`run_fused`): launch shapes and slabs, pass 1 (ranges, refused where the response is not
finite), then per slab of output channels pass 1b (the y codes) and pass 2 (the pairs' MI, one
kernel for both: local_mi.py), and what the run returns (docs/method.md section 2.2).

The two layers differ only in their pass-1 and pass-1b kernels and the arguments those take
(given here as dicts of keyword arguments), and in their groups: a pass-2 tile of channels
spans the x columns of the groups of its channels (every input unit of a Linear layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import triton

from .local_args import LayerArgs
from .local_mi import _local_mi_kernel
from .local_plan import LocalTileConfig, channel_slabs, code_budget, local_tile_config, row_parts


@dataclass
class LocalRun:
    """Everything one fused run computed (x: the input units, y: the output channels)."""

    matrix: torch.Tensor | None  # [X, Cout] float32 (reduce=None)
    per_x: torch.Tensor | None  # [X] float64 (reduce="sum")
    per_y: torch.Tensor | None  # [Cout] float64 (reduce="sum")
    x_ranges: torch.Tensor  # [X, 2] float64: min, max of each input unit's values
    y_ranges: torch.Tensor  # [Cout, 2] float64: min, max of each output channel's response
    config: LocalTileConfig
    slabs: list[tuple[int, int]]  # output channels [c0, c1) per slab (local_plan.channel_slabs)
    y_codes: torch.Tensor | None = None  # [S, Cout] uint8 codes pass 2 counted (keep_codes)

    def result(self, return_ranges: bool = False):
        """What ``local_*_mi`` returns: the matrix or the sums ``(per_x, per_y)``; with
        ``return_ranges``, ``(result, x_ranges, y_ranges)``."""
        result = (self.per_x, self.per_y) if self.matrix is None else self.matrix
        return (result, self.x_ranges, self.y_ranges) if return_ranges else result


R = TypeVar("R", bound=LocalRun)


def pass1_ranges(
    range_kernel,
    layer: dict[str, Any],
    *,
    xcols: int,
    cout: int,
    cfg: LocalTileConfig,
    activation: str,
    **kernel_args,
) -> torch.Tensor:
    """Pass 1: ``[xcols + cout, 2]`` float64 min, max of every x column, then of every output
    channel's response, the rows split into parts so that there are enough programs.
    ``layer``: the arguments of passes 1 and 1b; ``kernel_args``: pass 1's own.

    Raises:
        ValueError: the response is not finite in some output channel (NaN propagates).
    """
    device = layer["w_ptr"].device
    tiles_y1 = triton.cdiv(cout, cfg.yw)
    tiles_1 = tiles_y1 + triton.cdiv(xcols, cfg.block_k)
    parts, rows_per_program = row_parts(layer["S"], cfg.block_s, tiles_1)
    partial = torch.empty((2, parts, xcols + cout), dtype=torch.float64, device=device)
    range_kernel[(parts, tiles_1)](
        part_ptr=partial, rows_per_program=rows_per_program, TILES_Y=tiles_y1, num_warps=4,
        num_stages=1, **kernel_args, **layer,
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
    return ranges


def run_slabs(
    code_kernel,
    layer: dict[str, Any],
    mi_args: dict[str, Any],
    ranges: torch.Tensor,
    *,
    xcols: int,
    groups: int,
    cout: int,
    cfg: LocalTileConfig,
    slabs: list[tuple[int, int]],
    bins: int,
    miller_madow: bool,
    sums: bool,
    keep_codes: bool,
    run_type: type[R] = LocalRun,
    **fields,
) -> R:
    """Per slab of output channels ``[c0, c1)``: pass 1b stores its y codes, pass 2 counts its
    pairs, each tile of ``cfg.py`` channels against the x columns of their groups. ``layer``:
    the arguments of passes 1 and 1b; ``mi_args``: pass 2's. Returns a ``run_type`` with the
    results and ``fields`` (those a subclass adds)."""
    device = ranges.device
    samples = layer["S"]
    cout_g, xg = cout // groups, xcols // groups

    def x_span(c0: int, c1: int) -> int:  # the most x columns a tile of channels spans
        return max(
            ((min(t + cfg.py, c1) - 1) // cout_g - t // cout_g + 1) * xg
            for t in range(c0, c1, cfg.py)
        )

    sums_t = torch.zeros(xcols + cout if sums else 1, dtype=torch.float64, device=device)
    out = sums_t if sums else torch.zeros((xcols, cout), dtype=torch.float32, device=device)
    kept = []
    for c0, c1 in slabs:
        codes = torch.empty((c1 - c0, samples), dtype=torch.uint8, device=device)
        blocks = (c1 - 1) // cfg.yw - c0 // cfg.yw + 1
        parts, rows_per_program = row_parts(samples, cfg.block_s, blocks)
        code_kernel[(parts, blocks)](
            ranges_ptr=ranges, codes_ptr=codes, bins=bins, C0=c0, C1=c1,
            rows_per_program=rows_per_program, num_warps=4, num_stages=1, **layer,
        )  # fmt: skip
        tiles_y = triton.cdiv(c1 - c0, cfg.py)
        _local_mi_kernel[(triton.cdiv(x_span(c0, c1), cfg.px) * tiles_y,)](
            ranges_ptr=ranges, codes_ptr=codes, out_ptr=out, sums_ptr=sums_t, XCOLS=xcols,
            XG=xg, bins=bins, C0=c0, C1=c1, TILES_Y=tiles_y, MILLER_MADOW=miller_madow,
            SUMS=sums, PX=cfg.px, PY=cfg.py, SB=cfg.sbx, K=cfg.kx, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages, **mi_args,
        )  # fmt: skip
        if keep_codes:
            kept.append(codes)
        del codes
    return run_type(
        matrix=None if sums else out,
        per_x=sums_t[:xcols] if sums else None,
        per_y=sums_t[xcols:] if sums else None,
        x_ranges=ranges[:xcols],
        y_ranges=ranges[xcols:],
        config=cfg,
        slabs=slabs,
        y_codes=torch.cat(kept).t() if keep_codes else None,
        **fields,
    )


def run_fused(
    range_kernel,
    code_kernel,
    w: torch.Tensor,
    a: LayerArgs,
    *,
    xcols: int,
    groups: int = 1,
    activation: str,
    config: LocalTileConfig | None,
    memory_budget: int | None,
    miller_madow: bool,
    reduce: str | None,
    keep_codes: bool,
    shared: dict[str, Any],
    own: dict[str, Any],
    mi_args: dict[str, Any],
    pass1_args: dict[str, Any] | None = None,
    run_type: type[R] = LocalRun,
    **fields,
) -> R:
    """One fused run of a layer with weight ``w`` (``[Cout, ...]`` float32) and checked
    arguments ``a``: the launch shape (``config``, default :func:`local_tile_config` of the x
    columns and output channels), the slabs within ``memory_budget``, pass 1, then passes 1b
    and 2 per slab. The layer's own arguments: ``shared`` for every pass, ``own`` for passes 1
    and 1b, ``pass1_args`` for pass 1, ``mi_args`` for pass 2."""
    cout = w.shape[0]
    cfg = config or local_tile_config(xcols, cout, a.bins, a.samples)
    assert cfg.sbx == cfg.sby and cfg.kx == cfg.ky, "x and y share their bins"
    slabs = channel_slabs(cout, a.samples, cfg.py, cfg.yw, code_budget(memory_budget))
    common = dict(noise_ptr=a.noise, seed=a.seed, S=a.samples, COUT=cout, BLOCK_S=cfg.block_s,
                  enable_fp_fusion=False, **shared)  # fmt: skip
    layer = dict(common, **own, w_ptr=w, chan_ptr=a.chan, ACT=activation, HAS_BIAS=a.has_bias,
                 HAS_AFFINE=a.has_affine, YW=cfg.yw, BLOCK_K=cfg.block_k)  # fmt: skip
    ranges = pass1_ranges(range_kernel, layer, xcols=xcols, cout=cout, cfg=cfg,
                          activation=activation, **(pass1_args or {}))  # fmt: skip
    return run_slabs(code_kernel, layer, dict(common, **mi_args), ranges, xcols=xcols,
                     groups=groups, cout=cout, cfg=cfg, slabs=slabs, bins=a.bins,
                     miller_madow=miller_madow, sums=reduce == "sum", keep_codes=keep_codes,
                     run_type=run_type, **fields)  # fmt: skip
