"""How large the plug-in bias is next to the measured MI, layer by layer (docs/method.md 5.3).

For two independent variables that fill ``B`` bins each, the plug-in MI estimate on ``S``
samples is biased upwards by about ``(B - 1)^2 / (2 S ln 2)`` bits per pair. A channel's
``incoming`` score adds that over all of its input units, so in a wide layer the bias can be a
large part of the sum. This module compares, per layer, the mean measured MI per (input unit,
output channel) pair with that nominal bias and with the Miller-Madow estimate of it (plug-in
minus corrected, which uses the bins actually filled), and says whether the correction changes
the channel ranking within the layer (Spearman of the ``incoming`` scores).

``diagnostics.py`` uses it for the digits CNN; ``diagnostics.py --bias-resnet18`` for
torchvision's ResNet-18 (random init) at 224 x 224 with the package defaults.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

import causalprune_fast as cf
from causalprune_fast.results.causal_scores import spearman

COLUMNS = (
    "layer",
    "samples",
    "units",
    "channels",
    "live",
    "mi",
    "bias",
    "bias_over_mi",
    "mi_mm",
    "mm_bias",
    "spearman_mm",
)


def nominal_bias_bits(bins: int, samples: int) -> float:
    """First-order plug-in bias of one pair of independent variables filling ``bins`` bins each."""
    return (bins - 1) ** 2 / (2 * samples * math.log(2))


def layer_rows(plugin: cf.CausalScores, corrected: cf.CausalScores, bins: int) -> list[dict]:
    """One row per measured layer of two scorings that differ only in the correction.

    ``mi`` and ``mi_mm`` are mean bits per (input unit, output channel) pair over the pairs of
    the layer's live output channels (a channel whose response was constant carries exactly 0
    bits and gathers no bias); ``bias`` the nominal bias per pair at the layer's sample count;
    ``mm_bias`` the mean per-pair plug-in minus Miller-Madow value (the bias estimated from
    the bins each pair filled; 0-clamping makes it a slight underestimate); ``spearman_mm`` the
    rank correlation of the two ``incoming`` score vectors of the layer.
    """
    rows = []
    for name, p in plugin.layers.items():
        c = corrected.layers[name]
        units = p.input_units // max(p.groups, 1)
        live = p.incoming > 0
        n_live = int(live.sum())
        pairs = units * max(n_live, 1)
        mi = float(p.incoming[live].sum()) / pairs
        mi_mm = float(c.incoming[live].sum()) / pairs
        bias = nominal_bias_bits(bins, p.samples)
        rows.append(
            dict(
                layer=name,
                samples=p.samples,
                units=units,
                channels=int(p.incoming.numel()),
                live=n_live,
                mi=mi,
                bias=bias,
                bias_over_mi=bias / mi if mi > 0 else float("nan"),
                mi_mm=mi_mm,
                mm_bias=mi - mi_mm,
                spearman_mm=spearman(p.incoming, c.incoming) if n_live > 1 else float("nan"),
            )
        )
    return rows


def mean_rows(runs: Iterable[list[dict]]) -> list[dict]:
    """Per-layer means of several runs' rows (the same layers in the same order)."""
    runs = list(runs)
    out = []
    for i, first in enumerate(runs[0]):
        rec = {"layer": first["layer"]}
        for k in COLUMNS[1:]:
            vals = [r[i][k] for r in runs if not math.isnan(r[i][k])]
            rec[k] = statistics.fmean(vals) if vals else float("nan")
        out.append(rec)
    return out


def markdown(rows: list[dict], title: str) -> str:
    """The rows as a markdown table under ``title``."""
    lines = [
        title,
        "",
        "| layer | samples S | input units per channel | live / channels | measured MI per pair "
        "(bits) | nominal bias (B-1)^2/(2 S ln 2) | bias / MI | Miller-Madow MI per pair | "
        "plug-in minus Miller-Madow | Spearman plug-in vs MM (incoming) |",
        "|---" * 10 + "|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['layer']}` | {r['samples']:.0f} | {r['units']:.0f} | "
            f"{r['live']:.0f} / {r['channels']:.0f} | {r['mi']:.5f} | {r['bias']:.5f} | "
            f"{r['bias_over_mi']:.2f} | {r['mi_mm']:.5f} | {r['mm_bias']:.5f} | "
            f"{r['spearman_mm']:+.3f} |"
        )
    return "\n".join(lines)


def score_pair(model, input_shape, **settings) -> tuple[cf.CausalScores, cf.CausalScores]:
    """The same scoring uncorrected and with ``correction="miller-madow"``."""
    settings = {**settings, "progress": False}
    plugin = cf.score_model(model, input_shape, **{**settings, "correction": None})
    corrected = cf.score_model(model, input_shape, **{**settings, "correction": "miller-madow"})
    return plugin, corrected


def stability_rows(
    model, input_shape, seeds: tuple[int, int], layers: Iterable[str], **settings
) -> dict[str, dict[str, float]]:
    """Spearman, per layer, of the ``in`` channel scores of two noise seeds, uncorrected and
    with Miller-Madow: ``{correction: {layer: rho}}``. Whether the correction makes a score
    noisier (or steadier) from one noise draw to the next."""
    out = {}
    for corr in (None, "miller-madow"):
        a, b = (
            cf.score_model(
                model, input_shape, **{**settings, "seed": s, "correction": corr, "progress": False}
            ).with_direction("in")
            for s in seeds
        )
        out[corr or "plug-in"] = {n: spearman(a[n], b[n]) for n in layers}
    return out
