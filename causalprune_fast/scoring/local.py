"""Local mode (docs/method.md section 2.2): calibrate, then measure every layer on its own.

1. **Calibration.** Propagated forward passes over the ``examples`` noise examples (in passes
   of ``batch_size``; the same examples on every rank) record each layer's per-input-channel
   min and max.
2. **Measurement.** Each layer gets exactly ``samples_per_layer`` sample rows of fresh uniform
   noise on those ranges, made by a :class:`~causalprune_fast.scoring.sampling.RowSource`
   (``patches`` or ``full-tensor``), or the backend's fused kernel (``fused-triton``). The rows
   are split over the ranks and, within ``memory_budget``, into tiles. One tile: the float
   rows give the bin ranges and are binned. Several tiles: a first pass over the tiles finds
   the ranges, a second regenerates the same rows and bins them, so the codes (and the scores)
   equal those of one tile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from causalprune_fast.base.conv_geometry import ConvGeometry
from causalprune_fast.base.distributed import DistContext
from causalprune_fast.base.noise import LOCAL, example_seed, stream
from causalprune_fast.base.validation import check_layer_finite
from causalprune_fast.estimator.backends import capability
from causalprune_fast.scoring.driver import Driver
from causalprune_fast.scoring.fused_local import FusedResponse, fused_capability, fused_response
from causalprune_fast.scoring.layer_mi import LayerMI
from causalprune_fast.scoring.layer_state import LayerState, clock
from causalprune_fast.scoring.sampling import RowSource, row_source


def calibration_hook(s: LayerState) -> Callable:
    """The calibration pass's forward hook on layer ``s``: the min and max of each input
    channel (over the examples and all positions), merged into ``s.channel_lo/hi``."""

    def hook(module, args, output):
        x = args[0]
        dims = [d for d in range(x.dim()) if d != (1 if s.layer.is_conv else x.dim() - 1)]
        lo, hi = x.amin(dim=dims), x.amax(dim=dims)  # exact in any dtype
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            check_layer_finite(x, s.layer.name, "input")  # min and max keep a NaN
        check_layer_finite(output, s.layer.name, "output")
        lo, hi = lo.double(), hi.double()
        if s.channel_lo is not None:
            lo, hi = torch.minimum(lo, s.channel_lo), torch.maximum(hi, s.channel_hi)
        s.channel_lo, s.channel_hi = lo, hi

    return hook


def _calls(s: LayerState) -> list[tuple[tuple[int, ...], int, int]]:
    """``(input shape, batch rows, positions)`` of each call of a layer called several times
    per forward pass (see :func:`~causalprune_fast.scoring.sampling.row_source`)."""
    if s.calls < 2:
        return []
    return list(zip(s.call_shapes, s.call_batches, s.call_positions, strict=True))


class LocalMode:
    """Runs local mode on a :class:`~causalprune_fast.scoring.driver.Driver`."""

    def __init__(self, driver: Driver):
        self.d = driver
        self.plan, self.ctx, self.device = driver.plan, driver.ctx, driver.device
        self._kernels: dict[str, Callable | None] = {}

    def run(self) -> None:
        """Calibrate, then measure every layer alone (fused where the backend can)."""
        self.calibrate()
        for s in self.d.states:
            self.measure_layer(s)

    def measure_layer(self, s: LayerState) -> None:
        """Measure one calibrated layer alone: the backend's fused kernel where it applies,
        else the unfused rows (also the block walk's entry, scoring/score_checkpoint.py)."""
        fused = self._fused(s)
        if fused is not None:
            self._measure_fused(s, *fused)
        else:
            self.measure(s)

    def calibrate(self) -> None:
        """Per-input-channel min and max of every layer over all ``examples`` noise
        examples (stream INPUT), in passes of ``batch_size``."""
        n, step = self.plan.examples, self.plan.batch_size
        passes = [(b, min(step, n - b)) for b in range(0, n, step)]
        self.d.forward_all(calibration_hook, self.d.states, passes)

    # ---------------------------------------------------------------- unfused
    def source(self, s: LayerState) -> RowSource:
        """How the rows of layer ``s`` are made: noise in the dtype the layer's input had in the
        probe pass, or in its parameters' where that input is integer (token ids)."""
        dtype = s.input_dtype
        if dtype is None or not dtype.is_floating_point:
            dtype = next(s.layer.module.parameters()).dtype
        return row_source(
            s.layer,
            s.response,
            index=s.index,
            rows=s.rows,
            input_shape=s.input_shape,
            positions=s.call_positions[0] if s.calls > 1 else s.positions,
            lo=s.channel_lo.to(dtype),
            hi=s.channel_hi.to(dtype),
            taps=self.plan.taps,
            seed=self.plan.seed,
            device=self.device,
            dtype=dtype,
            calls=_calls(s),
        )

    def tiles(self, s: LayerState, source: RowSource, a: int, b: int) -> list[tuple[int, int]]:
        """Units ``[a, b)`` split into tiles whose float rows fit ``memory_budget`` beside
        the layer's codes; ValueError naming the layer and the budget where one cannot."""
        budget = self.plan.memory_budget
        codes = source.rows_in(a, b) * (s.layer.input_units(self.plan.taps) + s.layer.out_channels)
        smallest = source.min_units * source.unit_bytes
        if codes + smallest > budget:
            what = "sample rows" if source.path == "patches" else "noise examples"
            raise ValueError(
                f"layer '{s.layer.name}': memory_budget={budget} bytes cannot hold its "
                f"{source.rows_in(a, b)} rows of uint8 codes ({codes} bytes) and one tile of "
                f"{source.min_units} {what} ({smallest} bytes); raise memory_budget or lower "
                "samples_per_layer"
            )
        step = (budget - codes) // source.unit_bytes
        step = max(source.min_units, step - step % source.min_units)
        return [(t, min(t + step, b)) for t in range(a, b, step)]

    def _make(self, s: LayerState, source: RowSource, tile: tuple[int, int]):
        t0 = clock(self.device)
        xr, yr = source.make(*tile)
        s.add_time("forward", clock(self.device) - t0)
        return xr, yr

    def _bin(self, s: LayerState, xr: torch.Tensor, yr: torch.Tensor):
        """Codes of the rows, on the layer's ranges or, where it has none yet, on their own
        min and max; a non-finite response (its range is then non-finite) names the layer.
        The input rows are noise on finite calibrated ranges, finite by construction."""
        try:
            return self.d.bin(s, xr, yr)
        except ValueError as e:
            if "finite" not in str(e):
                raise
            check_layer_finite(yr, s.layer.name, f"response ({s.response.description})")
            raise ValueError(f"layer '{s.layer.name}': {e}") from e

    def measure(self, s: LayerState) -> None:
        """Local mode of one layer without the fused kernel (module docstring)."""
        error, kept, tiles = None, None, []
        ctx = self.ctx  # a layer with fewer units than ranks is measured whole on each
        try:
            source = self.source(s)
            if source.units < self.ctx.world:
                ctx = DistContext()
            a, b = ctx.shard(source.units)
            tiles = self.tiles(s, source, a, b)
            if len(tiles) == 1:
                kept = self._make(s, source, tiles[0])
            if len(tiles) > 1 or ctx.enabled:  # ranges over all tiles and ranks first
                for tile in tiles:
                    xr, yr = kept or self._make(s, source, tile)
                    self.d.update_ranges(s, xr, yr)
                if not bool(torch.isfinite(s.y_ranges).all()):  # min and max keep a NaN
                    raise ValueError(
                        f"layer '{s.layer.name}' produced non-finite value(s) (NaN/Inf) in its "
                        f"response ({s.response.description}) under the noise input; check "
                        "the model (or input_range) for overflow"
                    )
        except Exception as e:
            error = e
        self.ctx.check(error, f"at layer '{s.layer.name}'")
        if ctx.enabled:
            self.d.agree_ranges([s])
        x_codes, y_codes = [], []
        for tile in tiles:
            xr, yr = kept or self._make(s, source, tile)
            kept = None
            xc, yc = self._bin(s, xr, yr)
            del xr, yr
            x_codes.append(xc)
            y_codes.append(yc)
        xc = x_codes[0] if len(x_codes) == 1 else torch.cat(x_codes).t().contiguous().t()
        yc = y_codes[0] if len(y_codes) == 1 else torch.cat(y_codes).t().contiguous().t()
        s.path = source.path
        self.d.finish(s, xc, yc, ctx)

    # ---------------------------------------------------------------- fused
    def _fused(self, s: LayerState) -> tuple[Callable, FusedResponse] | None:
        """The backend's fused local measurement and the layer's response as the kernel applies
        it, where both apply:
        one process, ``fused_local`` not False, a CUDA device (any device with True)."""
        wanted = self.plan.fused_local
        if self.ctx.enabled or wanted is False or self.plan.pairs_per_unit is not None:
            return None
        if self.device.type != "cuda" and not wanted:
            return None
        response = fused_response(s.layer, s.response)
        if response is None:
            return None
        if s.layer.is_conv and len(set(s.call_shapes)) > 1:
            return None  # one geometry per fused run: the patches path pools the calls
        kernel = self._fused_kernel(fused_capability(s.layer))
        return None if kernel is None else (kernel, response)

    def _fused_kernel(self, name: str) -> Callable | None:
        """The backend's fused local measurement ``name`` on this device, looked up once per
        run."""
        if name not in self._kernels:
            self._kernels[name] = capability(self.plan.backend, self.device, name)
        return self._kernels[name]

    def _measure_fused(self, s: LayerState, kernel: Callable, response: FusedResponse) -> None:
        """Local mode of a Linear layer or convolution in the fused kernels: noise regenerated
        in registers in each pass (never stored), the layer and its response computed for
        the ranges and once more for the output codes (the only thing stored: ``C_out x
        rows`` bytes, in slabs of output channels within ``memory_budget``), binning and
        joint counts, reduced to MI, on ``samples_per_layer`` rows like the unfused path (its
        own counter-based noise; for a convolution, patch rows as on the ``patches`` path;
        docs/method.md section 2.2)."""
        t0 = clock(self.device)
        module = s.layer.module
        conv = {}
        if fused_capability(s.layer) == "local_conv_mi":
            geometry = ConvGeometry.of(module, s.input_shape)
            conv = dict(geometry=geometry, taps=self.plan.taps)
        try:
            result, xr, yr = kernel(
                module.weight.detach(),
                None if module.bias is None else module.bias.detach(),
                s.channel_lo,
                s.channel_hi,
                samples=s.rows,
                seed=example_seed(self.plan.seed, stream(LOCAL, s.index), 0),
                bins=self.plan.bins,
                scale=response.scale,
                shift=response.shift,
                activation=response.activation,
                miller_madow=self.plan.miller_madow,
                reduce=None if self.plan.return_matrices else "sum",
                return_ranges=True,
                memory_budget=self.plan.memory_budget,
                **conv,
            )
        except ValueError as e:
            raise ValueError(f"layer '{s.layer.name}': {e}") from e
        if self.plan.return_matrices:
            matrix = result.cpu()
            mi = LayerMI(matrix.double().sum(dim=1), matrix.double().sum(dim=0), matrix, s.rows)
        else:
            per_x, per_y = result
            mi = LayerMI(per_x, per_y, None, s.rows)
        s.add_time("mi", clock(self.device) - t0)
        s.x_ranges, s.y_ranges = xr, yr
        s.path = "fused-triton"
        units = s.layer.input_units(self.plan.taps) if conv else s.layer.in_channels
        self.d.done(s, mi, input_units=units, note=" [fused Triton local kernel]")
