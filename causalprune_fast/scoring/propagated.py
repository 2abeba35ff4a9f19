"""Propagated mode (docs/method.md section 2): one perturbation at the model's input flows
through the network, and every layer is measured on what reaches it.

Sample rows are defined per global noise example: example ``e`` contributes ``k_e`` of its
``positions`` output positions to a layer, chosen by a permutation seeded from ``(seed, layer,
e)``, with ``sum_e k_e = min(examples * positions, rows_per_layer)`` (the first examples take one
more when it does not divide; sampling.example_rows). So the rows of a layer do not depend on
how the examples are batched, or split over processes. A layer called several times per
forward pass (``state.calls``) pools its calls: the candidate rows of one example are the
(batch row, position) pairs of every call, one call after the other (``state.positions`` in
all), and each call's hook keeps the rows that fall in its part (:class:`CallPool` joins them
after the last call).

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

from causalprune_fast.base.noise import ROWS, stream
from causalprune_fast.base.validation import check_layer_finite
from causalprune_fast.model.layers import input_rows, output_rows
from causalprune_fast.scoring.driver import Batch, Driver
from causalprune_fast.scoring.layer_state import LayerState, clock
from causalprune_fast.scoring.sampling import example_rows


class CallPool:
    """The rows of one layer in one forward pass, pooled over its ``state.calls`` calls:
    :meth:`call` numbers each call (an error past the count of the probe pass), :meth:`add`
    takes its ``(input rows, output rows)`` and returns all of them (joined) after the last
    call, None before."""

    def __init__(self, s: LayerState):
        self.s = s
        self.calls = 0
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def call(self) -> int:
        """The index of this call; a ValueError naming the layer past its calls per pass."""
        if self.calls >= self.s.calls:
            raise ValueError(
                f"layer '{self.s.layer.name}' is called more often in this forward pass than "
                f"the {self.s.calls} time(s) of the probe pass: its calls depend on the input"
            )
        self.calls += 1
        return self.calls - 1

    def add(self, rows: tuple[torch.Tensor, torch.Tensor]):
        if self.s.calls == 1:
            return rows
        self.parts.append(rows)
        if self.calls < self.s.calls:
            return None
        xr = torch.cat([x for x, _ in self.parts])
        yr = torch.cat([y for _, y in self.parts])
        self.parts = []
        return xr, yr

    def problem(self) -> str | None:
        """After the pass: why a layer called fewer times than in the probe pass fails."""
        if self.calls in (0, self.s.calls):
            return None
        return (
            f"layer '{self.s.layer.name}' is called {self.calls} time(s) in a forward pass, "
            f"{self.s.calls} in the probe pass: its calls depend on the input"
        )


class PropagatedMode:
    """Runs propagated mode on a :class:`~causalprune_fast.scoring.driver.Driver`."""

    def __init__(self, driver: Driver):
        self.d = driver
        self.plan, self.ctx, self.device = driver.plan, driver.ctx, driver.device
        first, last = self.ctx.examples(self.plan.examples)  # this rank's examples
        step = self.plan.batch_size
        self.batches: list[Batch] = [(b, min(step, last - b)) for b in range(first, last, step)]
        self.pools: list[CallPool] = []  # of the forward passes under way

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

    def _call_rows(self, s: LayerState, start: int, call: int, x: torch.Tensor) -> torch.Tensor:
        """The sample rows of call ``call`` of a layer called several times per pass: the
        layer's rows of each example index ``[calls x batch rows x positions]`` (the
        example's rows pooled over the calls); those of this call, as flat indices into its
        own ``[batch rows, positions]``."""
        count = self.d.batch[1]
        b, p = s.call_batches[call], s.call_positions[call]
        if x.shape[0] != b * count:
            raise ValueError(
                f"layer '{s.layer.name}': its call {call + 1} of {s.calls} has {x.shape[0]} "
                f"batch rows for {count} examples, {b} per example in the probe pass: its "
                "calls cannot be pooled"
            )
        rows = self._rows(s, start, count)
        sizes = [bb * pp for bb, pp in zip(s.call_batches, s.call_positions, strict=True)]
        offset = sum(sizes[:call])
        example, q = rows // s.positions, rows % s.positions - offset
        mine = (q >= 0) & (q < b * p)
        return example[mine] * (b * p) + q[mine]

    def _capture(
        self, s: LayerState, start: int, x: torch.Tensor, out: torch.Tensor, call: int = 0
    ):
        """The layer's input units and response at its sample rows of this batch (of its
        call ``call`` where it is called several times per pass)."""
        t0 = clock(self.device)
        name = s.layer.name
        response = s.response.apply(out)
        check_layer_finite(x, name, "input")
        check_layer_finite(response, name, f"response ({s.response.description})")
        if s.calls > 1:
            rows = self._call_rows(s, start, call, x)
        else:
            rows = self._rows(s, start, x.shape[0])
        xr = input_rows(s.layer, x, rows, self.plan.taps)
        yr = output_rows(s.layer, response, rows)
        s.add_time("capture", clock(self.device) - t0)
        return xr, yr

    def _pool(self, s: LayerState) -> CallPool:
        """A pool for the rows of ``s`` in one forward pass (checked after the passes)."""
        pool = CallPool(s)
        self.pools.append(pool)
        return pool

    def _passes(self, hook_for: Callable[[LayerState], Callable], states: list[LayerState]):
        """The forward passes of every batch with ``hook_for`` on ``states``; then a layer
        called fewer times in a pass than in the probe pass is an error (on every rank)."""
        self.pools = []
        self.d.forward_all(hook_for, states, self.batches)
        problems = [p for p in (pool.problem() for pool in self.pools) if p]
        self.ctx.check(ValueError(problems[0]) if problems else None, "in a forward pass")

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
            self.d.finish(s, *codes)

    def _budget_batches(self, keep_codes: bool) -> list[list[LayerState]]:
        """The layers split into budget batches, each of whose codes kept across forward
        passes on this rank fits ``memory_budget``."""
        if not keep_codes:
            return [self.d.states]
        budget, examples = self.plan.memory_budget, self.plan.examples
        share = sum(c for _, c in self.batches) / examples  # this rank's examples
        batches, current, used = [], [], 0
        for s in self.d.states:
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

    def run(self) -> None:
        """Measure every layer on the noise examples propagated from the model's input."""
        d = self.d
        for s in d.states:
            s.path = "propagated"
        # One pass per rank and ranges from its data: MI right inside the hook. Otherwise
        # codes are kept across passes (several batches, or several ranks whose ranges and
        # counts must be combined).
        single = len(self.batches) == 1 and not self.ctx.enabled

        def minmax_hook(s: LayerState) -> Callable:
            pool = self._pool(s)

            def hook(module, args, output):
                got = pool.add(self._capture(s, d.batch[0], args[0], output, pool.call()))
                if got is not None:
                    d.update_ranges(s, *got)

            return hook

        def codes_hook(s: LayerState) -> Callable:
            pool = self._pool(s)

            def hook(module, args, output):
                got = pool.add(self._capture(s, d.batch[0], args[0], output, pool.call()))
                if got is None:
                    return
                xc, yc = d.bin(s, *got)
                if single:
                    d.finish(s, xc, yc)
                    return
                s.x_codes.append(xc)
                s.y_codes.append(yc)

            return hook

        exact = self.plan.range_mode == "exact" or self.ctx.enabled
        for states in self._budget_batches(keep_codes=not single):
            if not single and exact:
                self._passes(minmax_hook, states)
                d.agree_ranges(states)
            self._passes(codes_hook, states)
            if not single:
                self._finish_kept(states)
