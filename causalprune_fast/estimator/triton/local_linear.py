"""Fused ``local``-mode MI of a Linear (or 1x1, stride-1, ungrouped convolution) layer.

In ``local`` mode (docs/method.md section 2) a layer's input is replaced by fresh uniform noise on
per-input-unit ranges ``[lo_i, hi_i]``. For a Linear layer the whole measurement (noise, layer,
response, binning, joint histograms, MI; docs/method.md sections 3-5) takes three kernels; the
noise and the activations never touch global memory, only the response's uint8 codes do:

* pass 1 (``linear_response._range_kernel``): per-column min / max of the noise ``u`` and of
  the response ``y = act(scale * (u @ W^T + b) + shift)``, with the noise regenerated from
  Philox counters (see linear_response.py for noise, response and their precision).
* pass 1b (``linear_response._code_kernel``): y recomputed with pass 1's helper on pass 1's
  blocks, binned with ``mi_blocks.bin_code`` (quantize_value of mi_math.h) on pass 1's ranges
  and stored as uint8 codes ``[C1 - C0, S]`` for a slab ``[C0, C1)`` of output channels.
* pass 2 (``local_mi._local_mi_kernel``, shared with the convolution): one program per tile
  of pairs of the slab (``PX`` input units x ``PY`` output channels, as
  ``pairwise_mi.tile_config`` picks them). For every chunk of samples it regenerates the noise
  of its own PX units, bins it on the pass-1 ranges, loads the stored codes of its PY channels
  and adds the int8 one-hot product into an int32 count tile with the blocks ``pairwise_mi.py``
  uses (``mi_blocks``); the float64 MI epilogue is the same too (plug-in MI in bits, optional
  Miller-Madow, clamp at 0, exactly 0 for a constant column), storing the [Cin, Cout] float32
  matrix or adding float64 per-row / per-column sums atomically.

The host side (launch shapes, slabs, the passes) is ``local_run.run_fused``, shared with the
convolution.

Codes. Pass 1b computes exactly the values whose min / max pass 1 took (same helper, same
channel, row and input blocks: linear_response.py), so the y codes are those of the unfused
estimator applied to the kernel's response on its own ranges; they differ from the unfused
path on torch's response only where torch's float32 product rounds across a bin edge.

Memory and slabs. The stored codes take ``(C1 - C0) * S`` bytes; the launcher picks the widest
slabs that fit ``memory_budget`` (``local_plan.channel_slabs``), running pass 1b and pass 2 per
slab, and refuses (ValueError, before any work) a budget too small for one tile of channels.
Code offsets are int64 (``C * S`` may exceed 2^31).

Cost. y (``S * Cin * Cout`` multiply-adds, its noise ``S * Cin`` draws per block of YW
channels) is computed twice, in passes 1 and 1b. Pass 2 draws ``S * PX`` noise values per
program, ``S * Cin * Cout / PY`` in all (``PY = 8`` channels per tile at 16 bins), and reads
``S * PY`` code bytes per program.

Scope: ``groups == 1`` only (a grouped 1x1 convolution's weight [Cout, Cin/groups, 1, 1] would
be read as an ungrouped one with Cin/groups inputs); ``Cin, Cout < 2^31``; ``S < 2^31`` (exact
int32 counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linear_response import _code_kernel, _range_kernel
from .local_args import check_device, check_layer_args, check_options, check_weight
from .local_plan import LocalTileConfig
from .local_run import LocalRun, run_fused


# ----------------------------------------------------------------------------- launcher
@dataclass
class LocalLinearRun(LocalRun):
    """Everything one fused run computed (see :func:`run_local_linear`): X = Cin input units."""


def run_local_linear(
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
    memory_budget: int | None = None,
    config: LocalTileConfig | None = None,
    keep_codes: bool = False,
) -> LocalLinearRun:
    """:func:`local_linear_mi` with a given launch shape (``config``, default
    ``local_plan.local_tile_config``), returning the ranges, the slabs and the shape used (tests,
    benchmarks); ``keep_codes`` also returns the y codes pass 2 counted (tests: S x Cout bytes
    beyond the budget)."""
    check_options(reduce, miller_madow)
    w = check_weight(weight)
    cout, cin = w.shape
    check_device(w, "weight")
    a = check_layer_args(cout, cin, w.device, bias, lo, hi, samples, seed, bins, scale, shift,
                         activation)  # fmt: skip
    return run_fused(_range_kernel, _code_kernel, w, a, xcols=cin, activation=activation,
                     config=config, memory_budget=memory_budget, miller_madow=miller_madow,
                     reduce=reduce, keep_codes=keep_codes, shared={}, own=dict(CIN=cin),
                     mi_args=dict(CONV=False, base_ptr=a.noise, geo_ptr=a.noise, XSTRIDE=1,
                                  XOFF=0),  # no rows' coordinates, no geometry
                     run_type=LocalLinearRun)  # fmt: skip


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
    memory_budget: int | None = None,
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
            the tuple ``(per_x [Cin], per_y [Cout])`` in float64 (row and column sums).
        return_ranges: also return the binning ranges ``x_ranges [Cin, 2]``,
            ``y_ranges [Cout, 2]`` (float64 min, max over the S samples).
        memory_budget: bytes for the stored y codes (S x Cout uint8, processed in slabs of
            output channels when larger); default ``default_memory_budget()``.

    Returns:
        The matrix or the sums; with ``return_ranges``, ``(result, x_ranges, y_ranges)``.

    Raises:
        ValueError: a bad argument (named), tensors on a device the kernels cannot use, a
            memory_budget too small for the codes of one tile of output channels, or a
            non-finite response.
    """
    run = run_local_linear(weight, bias, lo, hi, samples=samples, seed=seed, bins=bins,
                           scale=scale, shift=shift, activation=activation,
                           miller_madow=miller_madow, reduce=reduce,
                           memory_budget=memory_budget)  # fmt: skip
    return run.result(return_ranges)


__all__ = ["LocalLinearRun", "local_linear_mi", "run_local_linear"]
