"""The MI of one measured layer from its codes, and the one place its LayerScores is built.

In one process the layer's ``[rows, input units]`` and ``[rows, output channels]`` codes go to
:func:`~causalprune_fast.pairwise_mi`. Across processes the counts are exact and combined: an
all-reduce of the integer joint counts (computed by the backend on the codes' device) when they
fit the memory budget, else all-gathered codes with the pairs sharded over the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from causalprune_fast.base.distributed import DistContext
from causalprune_fast.estimator.backends import Backend
from causalprune_fast.estimator.ops import pairwise_mi_of_codes
from causalprune_fast.results.layer_scores import LayerScores
from causalprune_fast.scoring.layer_state import LayerState


@dataclass(frozen=True)
class LayerMI:
    """Per-unit MI sums of one layer (float64), its matrix if kept, and its sample rows."""

    per_x: torch.Tensor  # [input units]: what each input unit passes on
    per_y: torch.Tensor  # [output channels]: what each output channel receives
    matrix: torch.Tensor | None  # [input units, output channels] float32, or None
    rows: int
    # pairs_per_unit (scoring/pair_sampling.py): standard errors of the estimated sums of the
    # output channels and of the input channels (over their taps), and the pairs measured.
    per_y_se: torch.Tensor | None = None
    per_channel_x_se: torch.Tensor | None = None
    pairs: int | None = None


@dataclass(frozen=True)
class MISettings:
    """How one layer's MI is estimated (from the ScorePlan and the resolved backend)."""

    backend: Backend
    bins: int
    correction: str | None
    memory_budget: int
    return_matrices: bool
    pairs_per_unit: int | None = None

    def pairwise(self, xc: torch.Tensor, yc: torch.Tensor, conv_groups: int, reduce=None):
        """MI of the uint8 codes this run's binning made (valid by construction: no second
        pass over them to check)."""
        miller_madow = self.correction == "miller-madow"
        bins, budget = self.bins, self.memory_budget
        return pairwise_mi_of_codes(
            self.backend, xc, yc, bins, bins, conv_groups, miller_madow, reduce, budget
        )


def layer_mi(
    xc: torch.Tensor, yc: torch.Tensor, conv_groups: int, mi: MISettings, ctx: DistContext
) -> LayerMI:
    """MI of codes ``xc`` [rows, Cx] and ``yc`` [rows, Cy], combined over the ranks of ``ctx``;
    ``conv_groups`` splits both into blocks whose cross pairs are not measured."""
    if ctx.enabled:
        return _layer_mi_distributed(xc, yc, conv_groups, mi, ctx)
    if mi.return_matrices:
        matrix = mi.pairwise(xc, yc, conv_groups)
        return LayerMI(matrix.double().sum(dim=1), matrix.double().sum(dim=0), matrix, len(xc))
    per_x, per_y = mi.pairwise(xc, yc, conv_groups, reduce="sum")
    return LayerMI(per_x, per_y, None, len(xc))


def _layer_mi_distributed(
    xc: torch.Tensor, yc: torch.Tensor, conv_groups: int, mi: MISettings, ctx: DistContext
) -> LayerMI:
    g = conv_groups
    cx, cy = xc.shape[1], yc.shape[1]
    gx, gy = cx // g, cy // g
    rows = int(ctx.sum(torch.tensor([len(xc)], dtype=torch.float64))[0])
    counts_bytes = g * gx * gy * mi.bins * mi.bins * 8
    matrix = torch.zeros(cx, cy, dtype=torch.float64)
    if counts_bytes <= mi.memory_budget:
        for k in range(g):
            xs, ys = slice(k * gx, (k + 1) * gx), slice(k * gy, (k + 1) * gy)
            counts = mi.backend.joint_counts(xc[:, xs], yc[:, ys], mi.bins, mi.bins)
            counts = ctx.sum(counts.round().to(torch.int64))
            miller_madow = mi.correction == "miller-madow"
            matrix[xs, ys] = mi.backend.mi_from_counts(counts, miller_madow).cpu()
        return LayerMI(matrix.sum(dim=1), matrix.sum(dim=0), matrix.float(), rows)
    xa, ya = ctx.gather_rows(xc), ctx.gather_rows(yc)  # all rows, in rank order
    per_x = torch.zeros(cx, dtype=torch.float64)
    per_y = torch.zeros(cy, dtype=torch.float64)
    if g > 1:  # shard whole groups
        g0, g1 = ctx.shard(g)
        x0, x1, y0, y1, sub = g0 * gx, g1 * gx, g0 * gy, g1 * gy, g1 - g0
    else:  # shard the x columns
        (x0, x1), (y0, y1), sub = ctx.shard(cx), (0, cy), 1
    if x1 > x0:
        xa_s = xa[:, x0:x1].t().contiguous().t()
        ya_s = ya[:, y0:y1].t().contiguous().t()
        if mi.return_matrices:
            matrix[x0:x1, y0:y1] = mi.pairwise(xa_s, ya_s, sub).double().cpu()
        else:
            px, py = mi.pairwise(xa_s, ya_s, sub, reduce="sum")
            per_x[x0:x1] += px.cpu()
            per_y[y0:y1] += py.cpu()
    if mi.return_matrices:
        matrix = ctx.sum(matrix)
        return LayerMI(matrix.sum(dim=1), matrix.sum(dim=0), matrix.float(), rows)
    return LayerMI(ctx.sum(per_x), ctx.sum(per_y), None, rows)


def layer_scores(
    s: LayerState,
    result: LayerMI,
    *,
    input_units: int,
    taps: str,
    backend: str,
    response_note: str = "",
) -> LayerScores:
    """The :class:`LayerScores` of a measured layer (the only place one is built)."""
    layer = s.layer
    per_x, per_y = result.per_x.cpu().double(), result.per_y.cpu().double()
    return LayerScores(
        name=layer.name,
        kind=layer.kind,
        incoming=per_y,
        outgoing=per_x.reshape(layer.in_channels, layer.taps_per_channel(taps)).sum(dim=1),
        sensitivity=float(per_y.sum()),
        response=s.response.description + response_note,
        response_reason=s.response.reason,
        samples=result.rows,
        path=s.path,
        backend=backend,
        calls=s.calls,
        called_by=getattr(layer, "how", None),
        input_units=input_units,
        groups=layer.groups,
        taps=taps,
        timings=dict(s.timings),
        model_output=s.response.model_output,
        incoming_se=None if result.per_y_se is None else result.per_y_se.cpu().double(),
        outgoing_se=(
            None if result.per_channel_x_se is None else result.per_channel_x_se.cpu().double()
        ),
        pairs=result.pairs,
        x_ranges=s.x_ranges.cpu() if s.x_ranges is not None else None,
        y_ranges=s.y_ranges.cpu() if s.y_ranges is not None else None,
        matrix=result.matrix.cpu() if result.matrix is not None else None,
    )
