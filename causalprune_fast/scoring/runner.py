"""The forward passes of one score_model call: propagated mode here, local mode in local.py.

In propagated mode sample rows are defined per global noise example: example ``e``
contributes ``k_e`` of its ``positions`` output positions to a layer, chosen by a permutation
seeded from ``(seed, layer, e)``, with ``sum_e k_e = min(examples * positions,
rows_per_layer)`` (the first examples take one more when it does not divide;
sampling.example_rows). So the rows of a layer do not depend on how the examples are batched,
or split over processes. In local mode every layer gets exactly ``rows_per_layer`` rows.

With one forward pass each layer's codes are reduced to MI inside its hook. With several
(``batch_size``, or several ranks), each layer's uint8 codes are kept across passes (far
smaller than its joint counts, which are ``P * B * B``) and its MI computed after the last
one; the layers are split into budget batches whose codes fit ``memory_budget``, and the noise
is regenerated identically for each budget batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from causalprune_fast.base.distributed import DistContext
from causalprune_fast.base.noise import ROWS, stream
from causalprune_fast.estimator.backends import resolve
from causalprune_fast.estimator.ops import quantize
from causalprune_fast.model.layers import input_rows, output_rows
from causalprune_fast.scoring.hooks import BEFORE_FIRST, LayerHooks
from causalprune_fast.scoring.layer_mi import LayerMI, MISettings, layer_mi, layer_scores
from causalprune_fast.scoring.layer_state import LayerState, check_finite, clock
from causalprune_fast.scoring.local import LocalMode
from causalprune_fast.scoring.plan import ScorePlan
from causalprune_fast.scoring.probe import input_noise
from causalprune_fast.scoring.sampling import example_rows

Batch = tuple[int, int]  # (first example, count) of one forward pass


class Runner:
    """Drives the forward passes, hooks and per-layer MI of one score_model call."""

    def __init__(
        self,
        model: nn.Module,
        states: list[LayerState],
        plan: ScorePlan,
        ctx: DistContext,
        timings: dict[str, float],
        on_layer_done: Callable[[], None] | None = None,
    ):
        self.model, self.states, self.plan, self.ctx = model, states, plan, ctx
        self.timings = timings
        self.on_layer_done = on_layer_done
        self.device = plan.device
        first, last = ctx.examples(plan.examples)
        step = plan.batch_size
        self.batches: list[Batch] = [(b, min(step, last - b)) for b in range(first, last, step)]
        cap = plan.rows_per_layer
        for s in states:
            if plan.mode == "local":  # every layer on exactly this many rows (sampling.py)
                s.rows = cap
            else:
                total = plan.examples * s.positions
                s.rows = min(total, cap) if cap else total
        self.backend = resolve(plan.backend, plan.device)
        self.mi = MISettings(
            self.backend, plan.bins, plan.correction, plan.memory_budget, plan.return_matrices
        )
        self.timings.setdefault("forward", 0.0)
        self.where = BEFORE_FIRST
        self.batch: Batch = (0, 0)

    def run(self) -> None:
        if self.plan.mode == "propagated":
            self.propagated()
        else:
            LocalMode(self).run()

    # ---------------------------------------------------------------- sample rows
    def _rows(self, s: LayerState, start: int, count: int) -> torch.Tensor:
        """Flat (example, position) rows of examples ``start .. start + count - 1``."""
        rows = example_rows(
            self.plan.seed,
            stream(ROWS, s.index),
            s.rows,
            self.plan.examples,
            s.positions,
            start,
            count,
        )
        return rows.to(self.device)

    def _capture(self, s: LayerState, start: int, x: torch.Tensor, out: torch.Tensor):
        """The layer's input units and response at its sample rows of this batch."""
        t0 = clock(self.device)
        name = s.layer.name
        response = s.response.apply(out)
        check_finite(x, name, "input")
        check_finite(response, name, f"response ({s.response.description})")
        rows = self._rows(s, start, x.shape[0])
        xr = input_rows(s.layer, x, rows, self.plan.taps)
        yr = output_rows(s.layer, response, rows)
        s.add_time("capture", clock(self.device) - t0)
        return xr, yr

    def _bin(self, s: LayerState, xr: torch.Tensor, yr: torch.Tensor):
        t0 = clock(self.device)
        bins, backend = self.plan.bins, self.backend.name
        xc, xrng = quantize(xr, bins, s.x_ranges, backend=backend)
        yc, yrng = quantize(yr, bins, s.y_ranges, backend=backend)
        if s.x_ranges is None:
            s.x_ranges, s.y_ranges = xrng, yrng
        s.add_time("binning", clock(self.device) - t0)
        return xc, yc

    @staticmethod
    def _update_ranges(s: LayerState, xr: torch.Tensor, yr: torch.Tensor) -> None:
        for attr, t in (("x_ranges", xr), ("y_ranges", yr)):
            # min and max are exact in any dtype: no float64 copy of the rows
            lo, hi = t.amin(dim=0).double(), t.amax(dim=0).double()
            cur = getattr(s, attr)
            if cur is not None:
                lo, hi = torch.minimum(lo, cur[:, 0]), torch.maximum(hi, cur[:, 1])
            setattr(s, attr, torch.stack([lo, hi], dim=1))

    def _agree_ranges(self, states: list[LayerState]) -> None:
        for s in states:
            s.x_ranges, s.y_ranges = self.ctx.ranges(s.x_ranges), self.ctx.ranges(s.y_ranges)

    # ---------------------------------------------------------------- layer results
    def _done(self, s: LayerState, result: LayerMI, input_units: int, note: str = "") -> None:
        backend = "triton" if s.path == "fused-triton" else self.backend.name
        s.result = layer_scores(
            s,
            result,
            input_units=input_units,
            taps=self.plan.taps,
            backend=backend,
            response_note=note,
        )
        if self.on_layer_done is not None:
            self.on_layer_done()

    def _finish(
        self, s: LayerState, xc: torch.Tensor, yc: torch.Tensor, ctx: DistContext | None = None
    ) -> None:
        """MI of the layer from its codes (combined over the ranks of ``ctx``, default the
        run's), and its LayerScores."""
        t0 = clock(self.device)
        try:
            result = layer_mi(xc, yc, s.layer.groups, self.mi, ctx or self.ctx)
        except ValueError as e:
            raise ValueError(f"layer '{s.layer.name}': {e}") from e
        s.add_time("mi", clock(self.device) - t0)
        self._done(s, result, input_units=int(xc.shape[1]))
        s.x_codes, s.y_codes = [], []

    def _finish_kept(self, states: list[LayerState]) -> None:
        """MI of every layer of ``states`` from the codes kept across passes (in layer order,
        the same on every rank)."""
        for s in states:
            error, codes = None, None
            try:
                xc = torch.cat(s.x_codes).t().contiguous().t()
                yc = torch.cat(s.y_codes).t().contiguous().t()
                codes = (xc, yc)
            except Exception as e:
                error = e
            self.ctx.check(error, f"at layer '{s.layer.name}'")
            self._finish(s, *codes)

    # ---------------------------------------------------------------- forward passes
    def _forward_all(
        self, hook_for: Callable[[LayerState], Callable], states: list[LayerState], batches
    ) -> None:
        """One forward pass per batch with ``hook_for(state)`` on every layer of ``states``.
        With several ranks, a failure on any rank is raised on all of them, naming the rank
        and the layer, before anyone enters a collective."""
        error = None
        for start, count in batches:
            self.batch = (start, count)
            with LayerHooks(states, hook_for) as hooks:
                try:
                    x = input_noise(self.plan, start, count)
                    before = sum(sum(s.timings.values()) for s in states)
                    t0 = clock(self.device)
                    with torch.no_grad():
                        self.model(x)
                    spent = clock(self.device) - t0
                    inside = sum(sum(s.timings.values()) for s in states) - before
                    self.timings["forward"] += max(0.0, spent - inside)
                except Exception as e:
                    if not self.ctx.enabled:
                        raise
                    error = e
                finally:
                    if hooks.where != BEFORE_FIRST:
                        self.where = hooks.where
            if error is not None:
                break
        self.ctx.check(error, f"{self.where} (examples {self.batch[0]}..)")

    def _budget_batches(self, keep_codes: bool) -> list[list[LayerState]]:
        """The layers split into budget batches, each of whose codes kept across forward
        passes on this rank fits ``memory_budget``."""
        if not keep_codes:
            return [self.states]
        budget, examples = self.plan.memory_budget, self.plan.examples
        share = sum(c for _, c in self.batches) / examples  # this rank's examples
        batches, current, used = [], [], 0
        for s in self.states:
            units = s.layer.input_units(self.plan.taps) + s.layer.out_channels
            need = math.ceil(s.rows * share + examples) * units
            if need > budget:
                raise ValueError(
                    f"layer '{s.layer.name}': memory_budget={budget} is too small for its "
                    f"codes across forward passes ({need} bytes); raise it or use one pass"
                )
            if current and used + need > budget:
                batches.append(current)
                current, used = [], 0
            current.append(s)
            used += need
        if current:
            batches.append(current)
        return batches

    def propagated(self) -> None:
        """One perturbation at the input flows through the network (docs/method.md section 2)."""
        for s in self.states:
            s.path = "propagated"
        # One pass per rank and ranges from its data: MI right inside the hook. Otherwise
        # codes are kept across passes (several batches, or several ranks whose ranges and
        # counts must be combined).
        single = len(self.batches) == 1 and not self.ctx.enabled

        def minmax_hook(s: LayerState) -> Callable:
            def hook(module, args, output):
                xr, yr = self._capture(s, self.batch[0], args[0], output)
                self._update_ranges(s, xr, yr)

            return hook

        def codes_hook(s: LayerState) -> Callable:
            def hook(module, args, output):
                xr, yr = self._capture(s, self.batch[0], args[0], output)
                xc, yc = self._bin(s, xr, yr)
                if single:
                    self._finish(s, xc, yc)
                    return
                s.x_codes.append(xc)
                s.y_codes.append(yc)

            return hook

        exact = self.plan.range_mode == "exact" or self.ctx.enabled
        for states in self._budget_batches(keep_codes=not single):
            if not single and exact:
                self._forward_all(minmax_hook, states, self.batches)
                self._agree_ranges(states)
            self._forward_all(codes_hook, states, self.batches)
            if not single:
                self._finish_kept(states)
