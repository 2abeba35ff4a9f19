"""What both modes of one score_model call share: the forward passes with hooks on the
measured layers, binning on a layer's bin ranges (combined over the ranks), and each layer's MI
and LayerScores once its codes are made.

:class:`Driver` holds the run. Propagated mode (``propagated.py``) and local mode
(``local.py``) drive it through its public methods; ``score.py`` picks the mode. In local mode
every layer is measured on exactly ``rows_per_layer`` sample rows, in propagated mode on its
(example, position) rows, at most ``rows_per_layer``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from causalprune_fast.base.distributed import DistContext
from causalprune_fast.base.noise import PAIRS, example_seed, stream
from causalprune_fast.estimator.backends import resolve
from causalprune_fast.estimator.ops import quantize
from causalprune_fast.scoring.hooks import BEFORE_FIRST, LayerHooks
from causalprune_fast.scoring.layer_mi import LayerMI, MISettings, layer_mi, layer_scores
from causalprune_fast.scoring.layer_state import LayerState, clock
from causalprune_fast.scoring.pair_sampling import sampled_layer_mi
from causalprune_fast.scoring.plan import ScorePlan

Batch = tuple[int, int]  # (first example, count) of one forward pass


class Driver:
    """Drives the forward passes, hooks and per-layer MI of one score_model call; propagated
    and local mode (``propagated.py``, ``local.py``) run through its public methods."""

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
        cap = plan.rows_per_layer
        for s in states:
            if plan.mode == "local":  # every layer on exactly this many rows (sampling.py)
                s.rows = cap
            else:
                total = plan.examples * s.positions
                s.rows = min(total, cap) if cap else total
        self.backend = resolve(plan.backend, plan.device)
        self.mi = MISettings(
            self.backend,
            plan.bins,
            plan.correction,
            plan.memory_budget,
            plan.return_matrices,
            plan.pairs_per_unit,
        )
        self.timings.setdefault("forward", 0.0)
        self.where = BEFORE_FIRST  # where the last forward pass was, for errors
        self.batch: Batch = (0, 0)  # the examples of the forward pass under way

    # ---------------------------------------------------------------- binning
    def bin(self, s: LayerState, xr: torch.Tensor, yr: torch.Tensor):
        """Codes of the layer's input units ``xr`` and response ``yr`` on its bin ranges, or on
        their own min and max where it has none yet (which then become its ranges)."""
        t0 = clock(self.device)
        bins, backend = self.plan.bins, self.backend.name
        xc, xrng = quantize(xr, bins, s.x_ranges, backend=backend)
        yc, yrng = quantize(yr, bins, s.y_ranges, backend=backend)
        if s.x_ranges is None:
            s.x_ranges, s.y_ranges = xrng, yrng
        s.add_time("binning", clock(self.device) - t0)
        return xc, yc

    @staticmethod
    def update_ranges(s: LayerState, xr: torch.Tensor, yr: torch.Tensor) -> None:
        """Widen the layer's bin ranges to the min and max of ``xr`` and ``yr``."""
        for attr, t in (("x_ranges", xr), ("y_ranges", yr)):
            # min and max are exact in any dtype: no float64 copy of the rows
            lo, hi = t.amin(dim=0).double(), t.amax(dim=0).double()
            cur = getattr(s, attr)
            if cur is not None:
                lo, hi = torch.minimum(lo, cur[:, 0]), torch.maximum(hi, cur[:, 1])
            setattr(s, attr, torch.stack([lo, hi], dim=1))

    def agree_ranges(self, states: list[LayerState]) -> None:
        """The layers' bin ranges made the same on every rank (all-reduced min and max)."""
        for s in states:
            s.x_ranges, s.y_ranges = self.ctx.ranges(s.x_ranges), self.ctx.ranges(s.y_ranges)

    # ---------------------------------------------------------------- layer results
    def done(self, s: LayerState, result: LayerMI, input_units: int, note: str = "") -> None:
        """The layer's LayerScores from its MI (``note`` is added to its response)."""
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

    def finish(
        self, s: LayerState, xc: torch.Tensor, yc: torch.Tensor, ctx: DistContext | None = None
    ) -> None:
        """MI of the layer from its codes (combined over the ranks of ``ctx``, default the
        run's), and its LayerScores."""
        t0 = clock(self.device)
        ctx = ctx or self.ctx
        k = self.plan.pairs_per_unit
        try:
            if k is not None and s.layer.groups == 1 and (k < xc.shape[1] or k < yc.shape[1]):
                seed = example_seed(self.plan.seed, stream(PAIRS, s.index), 0)
                taps = s.layer.taps_per_channel(self.plan.taps)
                result = sampled_layer_mi(xc, yc, self.mi, ctx, seed, taps)
            else:
                result = layer_mi(xc, yc, s.layer.groups, self.mi, ctx)
        except ValueError as e:
            raise ValueError(f"layer '{s.layer.name}': {e}") from e
        s.add_time("mi", clock(self.device) - t0)
        self.done(s, result, input_units=int(xc.shape[1]))
        s.x_codes, s.y_codes = [], []

    # ---------------------------------------------------------------- forward passes
    def forward_all(
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
                    x = self.plan.input_noise(start, count)
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
