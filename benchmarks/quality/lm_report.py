"""Summaries, paired statistics, tables and plots of the language-model quality study
(``lm_study.py``). Loss is held-out nats per byte: lower is better. A paired difference is
``loss(criterion) - loss(reference)`` on the same seed, model and testbed; "better" counts the
seeds where it is negative. Statistics over seeds: mean, standard deviation, a 95% t interval
of the mean difference, the paired t-test and the Wilcoxon signed-rank test (two-sided, exact
for small n)."""

from __future__ import annotations

import csv
import math
import os
import statistics

PROTOCOLS = {"loss": "no fine-tuning", "loss_ft": "after the short fine-tune"}
REFERENCES = ("l2", "random")
# pairs of criteria compared head to head in tables.md when both were run
HEAD_TO_HEAD = [
    ("causal-auto-local", "causal-in-local"),  # the default against the previous one
    ("causal-in/out/out-local", "causal-auto-local"),  # "in" for the hidden size instead
]
FIELDS = [
    "seed",
    "model",
    "testbed",
    "method",
    "ratio",
    "loss",
    "loss_ft",
    "dense_loss",
    "dense_loss_ft",
    "params",
    "dense_params",
    "prune_seconds",
]
TYPES = dict(
    seed=int,
    ratio=float,
    loss=float,
    loss_ft=float,
    dense_loss=float,
    dense_loss_ft=float,
    params=int,
    dense_params=int,
    prune_seconds=float,
)


def read_runs(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: TYPES.get(k, str)(v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_runs(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


class RunsWriter:
    """``runs.csv`` written row by row as the runs finish (flushed, so a stopped study keeps
    its rows), every row also kept in ``rows``; a context manager."""

    def __init__(self, path: str, fields: list[str]):
        self.path, self.fields, self.rows = path, fields, []

    def __enter__(self) -> RunsWriter:
        self._file = open(self.path, "w", newline="")  # noqa: SIM115 (closed in __exit__)
        self._writer = csv.DictWriter(self._file, fieldnames=self.fields)
        self._writer.writeheader()
        return self

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        self._writer.writerow(row)
        self._file.flush()

    def __exit__(self, *exc) -> None:
        self._file.close()


def paired(diffs: list[float]) -> dict:
    """Mean, std, 95% t interval, better/worse counts and two p-values of paired differences."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    out = {
        "n": n,
        "mean": mean,
        "std": sd,
        "better": sum(d < 0 for d in diffs),
        "worse": sum(d > 0 for d in diffs),
        "ci": float("nan"),
        "p_t": float("nan"),
        "p_w": float("nan"),
    }
    if n > 1:
        out["ci"] = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        if sd > 0:
            out["p_t"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
        if any(d != 0 for d in diffs):
            out["p_w"] = float(stats.wilcoxon(diffs).pvalue)
    return out


def index(rows: list[dict]) -> dict:
    """(model, testbed, method, ratio) -> {seed: row}."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["model"], r["testbed"], r["method"], r["ratio"]), {})[r["seed"]] = r
    return by


def summarise(rows: list[dict], references=REFERENCES) -> list[dict]:
    """One record per (model, testbed, method, ratio): mean/std per protocol and the paired
    statistics against each reference present."""
    by = index(rows)
    protocols = [k for k in PROTOCOLS if any(math.isfinite(r[k]) for r in rows)]
    out = []
    for (model, testbed, method, ratio), runs in by.items():
        rec = {"model": model, "testbed": testbed, "method": method, "ratio": ratio, "n": len(runs)}
        for key in protocols:
            runs_k = {s: r for s, r in runs.items() if math.isfinite(r[key])}
            vals = [r[key] for r in runs_k.values()]
            if not vals:  # not measured in this protocol (e.g. no fine-tune at this ratio)
                continue
            rec[f"{key}_mean"] = statistics.fmean(vals)
            rec[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            for ref in references:
                ref_runs = by.get((model, testbed, ref, ratio), {})
                if ref == method or not ref_runs:
                    continue
                diffs = [
                    r[key] - ref_runs[s][key]
                    for s, r in runs_k.items()
                    if s in ref_runs and math.isfinite(ref_runs[s][key])
                ]
                if diffs:
                    for k, v in paired(diffs).items():
                        rec[f"{key}_vs_{ref}_{k}"] = v
        out.append(rec)
    return out


def _cell(rec: dict | None, key: str, ref: str) -> str:
    if rec is None or f"{key}_mean" not in rec:
        return ""
    txt = f"{rec[f'{key}_mean']:.3f}"
    if f"{key}_vs_{ref}_mean" in rec:
        p = rec[f"{key}_vs_{ref}_p_w"]
        ptxt = "" if math.isnan(p) else f", p={p:.2g}"
        txt += (
            f" ({rec[f'{key}_vs_{ref}_mean']:+.3f} ± {rec[f'{key}_vs_{ref}_ci']:.3f}, "
            f"{rec[f'{key}_vs_{ref}_better']}/{rec[f'{key}_vs_{ref}_worse']}{ptxt})"
        )
    return txt


def tables(summary: list[dict], methods: list[str], ratios: list[float], dense: dict) -> str:
    """tables.md: per model, testbed and protocol, the mean loss per ratio with the paired
    difference to ``l2`` (then to ``random``): mean ± 95% CI [better/worse seeds, Wilcoxon p]."""
    cell = {(s["model"], s["testbed"], s["method"], s["ratio"]): s for s in summary}
    parts = []
    models = list(dict.fromkeys(s["model"] for s in summary))
    testbeds = list(dict.fromkeys(s["testbed"] for s in summary))
    protocols = [k for k in PROTOCOLS if any(f"{k}_mean" in s for s in summary)]
    for model in models:
        for testbed in testbeds:
            for key in protocols:
                d = dense.get((model, testbed, key))
                for ref in REFERENCES:
                    head = f"### {model}, {testbed}, {PROTOCOLS[key]}: vs `{ref}`"
                    lines = [
                        head,
                        "",
                        (f"Unpruned: {d:.3f} nats/byte. " if d is not None else "")
                        + "Held-out loss (nats/byte), mean over seeds (paired difference to "
                        f"`{ref}`: mean ± 95% CI, seeds better/worse, Wilcoxon p)",
                        "",
                        "| criterion | " + " | ".join(f"{r:.1f}" for r in ratios) + " |",
                        "|---" * (len(ratios) + 1) + "|",
                    ]
                    rows = 0
                    for m in methods:
                        cells = [cell.get((model, testbed, m, r)) for r in ratios]
                        if not any(cells):
                            continue
                        rows += 1
                        lines.append(
                            f"| {m} | " + " | ".join(_cell(c, key, ref) for c in cells) + " |"
                        )
                    if rows:
                        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def key_tables(summary: list[dict], methods: list[str], ratios=(0.2, 0.3)) -> str:
    """Per model and testbed, one compact table at ``ratios``, both protocols: mean loss, the
    paired difference to ``l2`` (mean ± 95% CI, seeds better/worse) and to ``random``
    (mean, seeds better/worse)."""
    cell = {(s["model"], s["testbed"], s["method"], s["ratio"]): s for s in summary}
    parts = []
    for model in dict.fromkeys(s["model"] for s in summary):
        for testbed in dict.fromkeys(s["testbed"] for s in summary):
            cols = [(k, r) for k in PROTOCOLS for r in ratios]
            head = [f"{r:.0%} {'no FT' if k == 'loss' else 'FT'}" for k, r in cols]
            lines = [
                f"#### {model}, {testbed}",
                "",
                "| criterion | " + " | ".join(head) + " |",
                "|---" * (len(cols) + 1) + "|",
            ]
            rows = 0
            for m in methods:
                txt = []
                for k, r in cols:
                    c = cell.get((model, testbed, m, r))
                    if c is None or f"{k}_mean" not in c:
                        txt.append("")
                        continue
                    t = f"{c[f'{k}_mean']:.3f}"
                    if f"{k}_vs_l2_mean" in c:
                        t += (
                            f"; L2 {c[f'{k}_vs_l2_mean']:+.3f} ± {c[f'{k}_vs_l2_ci']:.3f} "
                            f"({c[f'{k}_vs_l2_better']}/{c[f'{k}_vs_l2_worse']})"
                        )
                    if f"{k}_vs_random_mean" in c:
                        t += (
                            f"; rnd {c[f'{k}_vs_random_mean']:+.3f} "
                            f"({c[f'{k}_vs_random_better']}/{c[f'{k}_vs_random_worse']})"
                        )
                    txt.append(t)
                if any(txt):
                    rows += 1
                    lines.append(f"| {m} | " + " | ".join(txt) + " |")
            if rows:
                parts.append("\n".join(lines))
    return (
        "Key tables: held-out loss (nats/byte), mean over seeds; `L2`: paired difference to `l2` "
        "(mean ± 95% CI, seeds better/worse); `rnd`: paired difference to `random` (mean, seeds "
        "better/worse). Negative = lower loss = better.\n\n" + "\n\n".join(parts) + "\n"
    )


def invariance(rows: list[dict], testbed: str = "rescaled") -> str:
    """Per model and criterion: loss on the ``testbed`` copy minus loss on the trained model,
    same seed and ratio, no fine-tuning: mean and largest absolute difference."""
    by = index(rows)
    merged: dict = {}
    for (model, tb, method, ratio), runs in sorted(by.items()):
        base = by.get((model, "trained", method, ratio), {})
        if tb == testbed:
            diffs = [r["loss"] - base[s]["loss"] for s, r in runs.items() if s in base]
            merged.setdefault((model, method), []).extend(diffs)
    merged = {k: v for k, v in merged.items() if v}
    if not merged:
        return ""
    out = [
        f"### Same seed and ratio, `{testbed}` minus `trained` (nats/byte, no fine-tuning)",
        "",
        "| model | criterion | mean | largest abs |",
        "|---|---|---|---|",
    ]
    for (model, method), diffs in merged.items():
        out.append(
            f"| {model} | {method} | {statistics.fmean(diffs):+.4f} | "
            f"{max(abs(d) for d in diffs):.4f} |"
        )
    return "\n".join(out) + "\n"


def head_to_head(rows: list[dict], a: str, b: str, ratios=(0.2, 0.3)) -> str:
    """Per model and testbed, ``loss(a) - loss(b)`` on the same seed at ``ratios``, both
    protocols: mean ± 95% CI, seeds better/worse, Wilcoxon p (e.g. two causal rules)."""
    by = index(rows)
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for testbed in dict.fromkeys(r["testbed"] for r in rows):
            cells = []
            for key in PROTOCOLS:
                for ratio in ratios:
                    ra = by.get((model, testbed, a, ratio), {})
                    rb = by.get((model, testbed, b, ratio), {})
                    diffs = [
                        ra[s][key] - rb[s][key]
                        for s in ra
                        if s in rb and math.isfinite(ra[s][key]) and math.isfinite(rb[s][key])
                    ]
                    if not diffs:
                        cells.append("")
                        continue
                    st = paired(diffs)
                    p = "" if math.isnan(st["p_w"]) else f", p={st['p_w']:.2g}"
                    cells.append(
                        f"{st['mean']:+.3f} ± {st['ci']:.3f} ({st['better']}/{st['worse']}{p})"
                    )
            if any(cells):
                lines.append(f"| {model} | {testbed} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = [f"{r:.0%} {'no FT' if k == 'loss' else 'FT'}" for k in PROTOCOLS for r in ratios]
    return (
        f"### `{a}` minus `{b}`, same seed (nats/byte: mean ± 95% CI, seeds better/worse, "
        "Wilcoxon p)\n\n| model | testbed | "
        + " | ".join(head)
        + " |\n"
        + "|---" * (len(head) + 2)
        + "|\n"
        + "\n".join(lines)
        + "\n"
    )


STYLE = {
    "l2": ("black", "-", "s"),
    "random": ("tab:red", "-", "s"),
    "taylor": ("tab:purple", "--", "^"),
    "wanda-sp": ("tab:brown", "--", "^"),
    "flap": ("tab:pink", "--", "^"),
}


def plot(summary: list[dict], methods: list[str], dense: dict, path: str, key: str) -> None:
    """Loss vs ratio, one panel per (model, testbed), mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(s["model"] for s in summary))
    testbeds = list(dict.fromkeys(s["testbed"] for s in summary))
    fig, axes = plt.subplots(
        len(models),
        len(testbeds),
        figsize=(5.2 * len(testbeds) + 2.4, 4.2 * len(models)),
        squeeze=False,
    )
    palette = plt.get_cmap("tab10")
    causal = [m for m in methods if m not in STYLE]
    for i, model in enumerate(models):
        for j, testbed in enumerate(testbeds):
            ax = axes[i][j]
            for m in methods:
                pts = sorted(
                    (
                        s
                        for s in summary
                        if (s["model"], s["testbed"], s["method"]) == (model, testbed, m)
                        and f"{key}_mean" in s
                    ),
                    key=lambda s: s["ratio"],
                )
                if not pts:
                    continue
                if m in STYLE:
                    color, ls, marker = STYLE[m]
                else:
                    color, ls, marker = palette(causal.index(m) % 10), ":", "o"
                ax.errorbar(
                    [s["ratio"] for s in pts],
                    [s[f"{key}_mean"] for s in pts],
                    yerr=[s[f"{key}_std"] for s in pts],
                    color=color,
                    ls=ls,
                    marker=marker,
                    ms=3.5,
                    lw=1.6 if m in STYLE else 1.1,
                    capsize=2,
                    label=m,
                    alpha=0.9,
                )
            d = dense.get((model, testbed, key))
            if d is not None:
                ax.axhline(d, color="gray", lw=0.8, ls="-.", label="unpruned")
            ax.set_title(f"{model}, {testbed}, {PROTOCOLS[key]}", fontsize=9)
            ax.set_xlabel("pruning ratio")
            ax.set_ylabel("held-out loss (nats/byte)")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(0.745, 0.5))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(out: str, rows: list[dict], config: dict) -> None:
    """summary.csv, tables.md and loss_vs_ratio*.png in ``out``."""
    methods, ratios = config["methods"], config["ratios"]
    summary = summarise(rows)
    keys = sorted({k for s in summary for k in s}, key=lambda k: (k not in FIELDS, k))
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(summary)
    dense: dict = {}
    for key, dkey in (("loss", "dense_loss"), ("loss_ft", "dense_loss_ft")):
        for (model, testbed, _, _), runs in index(rows).items():
            vals = [r[dkey] for r in runs.values() if math.isfinite(r[dkey])]
            if vals:
                dense[(model, testbed, key)] = statistics.fmean(vals)
    seeds = sorted({r["seed"] for r in rows})
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(f"Seeds {seeds}; command and settings in config.json.\n\n")
        f.write(key_tables(summary, methods) + "\n")
        f.write(tables(summary, methods, ratios, dense))
        for testbed in ("rescaled", "outliers"):
            f.write("\n" + invariance(rows, testbed))
        for a, b in HEAD_TO_HEAD:
            if a in methods and b in methods:
                f.write("\n" + head_to_head(rows, a, b))
    for key in PROTOCOLS:
        if any(f"{key}_mean" in s for s in summary):
            name = "loss_vs_ratio.png" if key == "loss" else "loss_vs_ratio_finetuned.png"
            plot(summary, methods, dense, os.path.join(out, name), key)
