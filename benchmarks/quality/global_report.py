"""Tables and a plot of ``global_study.py``: per model, testbed and protocol, each criterion's
mean metric at each target fraction of parameters removed, the fraction actually removed, and
its paired difference (same seed) to the references present: the package default
(``<default>@layer``), L2 / L1 magnitude and random. Differences are signed so that negative is
better (lower loss, or higher accuracy for the CNN, whose accuracies are shown in %)."""

from __future__ import annotations

import json
import math
import os
import statistics

import lm_report as R

FIELDS = R.FIELDS + ["channel_ratio", "removed", "searches", "widths"]
TYPES = {**R.TYPES, "channel_ratio": float, "removed": float, "searches": int}
REFERENCES = (
    "causal-auto-local@layer",
    "causal-in-local@layer",
    "l2@global:mean",
    "l1@global:mean",
    "random@layer",
)


# (a, b) pairs compared head to head where both ran: what each remedy changes, and global
# against per-layer pruning
CONTRASTS = (
    [(f"causal-{d}-local@global:mean", f"causal-{d}-local@global") for d in ("auto", "in")]
    + [(f"causal-{d}-local-mm@global", f"causal-{d}-local@global") for d in ("auto", "in")]
    + [
        (f"causal-{d}-local-mm@global:mean", f"causal-{d}-local@global:mean")
        for d in ("auto", "in")
    ]
    + [
        (f"causal-{d}-local{v}@global{n}", f"causal-{d}-local@layer")
        for d in ("auto", "in")
        for v in ("", "-mm")
        for n in ("", ":mean")
    ]
    + [
        ("causal-auto-local@isomorphic:mean", "causal-auto-local@layer"),
    ]
    + [  # the best global causal criterion against every baseline and reference
        (f"causal-{d}-local-mm@global:mean", ref)
        for d, refs in (
            ("auto", ("l2@layer", "l2@global:mean", "random@layer", "random@global")),
            (
                "in",
                ("l1@layer", "l1@global:mean", "l2@global:mean", "random@layer", "random@global"),
            ),
        )
        for ref in (*refs, "taylor@global:mean", "wanda-sp@global:mean", "act@global:mean")
    ]
    + [
        ("l2@global:mean", "l2@layer"),
        ("l1@global:mean", "l1@layer"),
        ("random@global", "random@layer"),
    ]
)


def read_runs(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: TYPES.get(k, str)(v) for k, v in r.items()} for r in R.csv.DictReader(f)]


def _short(ref: str) -> str:
    if ref.startswith("causal-"):
        return "def"
    return ref.split("@")[0].upper() if ref.startswith("l") else "rnd"


def table(rows, model, testbed, key, targets, methods, sign, scale, tol) -> str:
    by = R.index(rows)
    refs = [r for r in REFERENCES if any((model, testbed, r, t) in by for t in targets)]
    unit = "accuracy %" if scale == 100 else "nats/byte"
    lines = [
        f"#### {model}, {testbed}, {R.PROTOCOLS[key]} ({unit}; removed = fraction of the "
        f"parameters actually removed, † where a seed missed the target by more than {tol}; "
        "paired differences, negative = better: "
        + ", ".join(f"`{_short(r)}` = {r}" for r in refs)
        + ")",
        "",
        "| criterion | " + " | ".join(f"{t:.0%} of parameters" for t in targets) + " |",
        "|---" * (len(targets) + 1) + "|",
    ]
    for m in methods:
        cells = []
        for t in targets:
            runs = {s: r for s, r in by.get((model, testbed, m, t), {}).items()}
            runs = {s: r for s, r in runs.items() if math.isfinite(r[key])}
            if not runs:
                cells.append("")
                continue
            removed = statistics.fmean(r["removed"] for r in runs.values())
            txt = f"{scale * statistics.fmean(r[key] for r in runs.values()):.3f}"
            txt = txt if scale == 1 else f"{float(txt):.1f}"
            off = any(abs(r["removed"] - t) > tol for r in runs.values())
            txt += f" (removed {removed:.3f}{' †' if off else ''})"
            for ref in refs:
                base = by.get((model, testbed, ref, t), {})
                diffs = [
                    sign * (r[key] - base[s][key])
                    for s, r in runs.items()
                    if s in base and math.isfinite(base[s][key])
                ]
                if ref == m or not diffs:
                    continue
                st = R.paired(diffs)
                p = "" if math.isnan(st["p_w"]) or st["p_w"] > 0.1 else f", p={st['p_w']:.2g}"
                txt += (
                    f"; {_short(ref)} {scale * st['mean']:+.3f} ± {scale * st['ci']:.3f} "
                    f"({st['better']}/{st['worse']}{p})"
                )
            cells.append(txt)
        if any(cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def allocation(rows, model, testbed, targets, methods) -> str:
    """Where each criterion removed its parameters: mean kept widths over seeds."""
    by = R.index(rows)
    lines = []
    for m in methods:
        for t in targets:
            runs = by.get((model, testbed, m, t), {})
            if not runs:
                continue
            ws = [json.loads(r["widths"]) for r in runs.values()]
            parts = []
            for k in ws[0]:
                vals = [w[k] for w in ws]
                if isinstance(vals[0], list):
                    mean = [statistics.fmean(v[i] for v in vals) for i in range(len(vals[0]))]
                    parts.append(f"{k} " + "/".join(f"{x:.0f}" for x in mean))
                else:
                    parts.append(f"{k} {statistics.fmean(vals):.0f}")
            lines.append(f"| {m} | {t:.0%} | " + "; ".join(parts) + " |")
    if not lines:
        return ""
    return (
        f"#### {model}, {testbed}: kept widths (mean over seeds)\n\n| criterion | target | "
        "widths |\n|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def contrasts(rows, config, sign, scale) -> str:
    """``a - b`` on the same seed, model, testbed and target, per protocol (negative = a is
    better): mean ± 95% CI, seeds better/worse, Wilcoxon p."""
    by = R.index(rows)
    targets = config["targets"]
    lines = []
    for a, b in CONTRASTS:
        for model in config["models"]:
            for testbed in config["testbeds"]:
                cells = []
                for key in R.PROTOCOLS:
                    for t in targets:
                        ra, rb = (
                            by.get((model, testbed, a, t), {}),
                            by.get((model, testbed, b, t), {}),
                        )
                        diffs = [
                            sign * (ra[s][key] - rb[s][key])
                            for s in ra
                            if s in rb and math.isfinite(ra[s][key]) and math.isfinite(rb[s][key])
                        ]
                        if not diffs:
                            cells.append("")
                            continue
                        st = R.paired(diffs)
                        p = "" if math.isnan(st["p_w"]) else f", p={st['p_w']:.2g}"
                        cells.append(
                            f"{scale * st['mean']:+.3f} ± {scale * st['ci']:.3f} "
                            f"({st['better']}/{st['worse']}{p})"
                        )
                if any(cells):
                    lines.append(
                        f"| `{a}` − `{b}` | {model} | {testbed} | " + " | ".join(cells) + " |"
                    )
    if not lines:
        return ""
    head = [f"{t:.0%} {'no FT' if k == 'loss' else 'FT'}" for k in R.PROTOCOLS for t in targets]
    unit = "accuracy points, sign flipped" if scale == 100 else "nats/byte"
    return (
        f"### Head to head, same seed ({unit}; negative = the first is better)\n\n"
        "| contrast | model | testbed | "
        + " | ".join(head)
        + " |\n"
        + "|---" * (len(head) + 3)
        + "|\n"
        + "\n".join(lines)
        + "\n"
    )


def plot(rows, config, path) -> None:
    """Paired difference to the per-layer default, mean ± 95% CI, one panel per model and
    protocol, trained testbed, largest target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sign = -1 if config["higher_is_better"] else 1
    scale = 100 if config["higher_is_better"] else 1
    by = R.index(rows)
    target = max(config["targets"])
    ref = next((r for r in REFERENCES if any(k[1:3] == ("trained", r) for k in by)), None)
    if ref is None:  # nothing to plot against (e.g. a part run without the trained model)
        return
    panels = [(m, k) for m in config["models"] for k in R.PROTOCOLS]
    with matplotlib.rc_context():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.5), squeeze=False)
        for ax, (model, key) in zip(axes[0], panels, strict=True):
            names, means, cis = [], [], []
            base = by.get((model, "trained", ref, target), {})
            for m in config["methods"]:
                runs = by.get((model, "trained", m, target), {})
                diffs = [
                    sign * (r[key] - base[s][key])
                    for s, r in runs.items()
                    if s in base and math.isfinite(r[key]) and math.isfinite(base[s][key])
                ]
                if m == ref or len(diffs) < 2:
                    continue
                st = R.paired(diffs)
                names.append(m)
                means.append(scale * st["mean"])
                cis.append(scale * st["ci"])
            ax.barh(range(len(names)), means, xerr=cis, color="tab:blue", alpha=0.7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.axvline(0, color="black", lw=0.8)
            ax.invert_yaxis()
            unit = "accuracy points" if scale == 100 else "nats/byte"
            ax.set_title(f"{model}, {R.PROTOCOLS[key]}", fontsize=9)
            ax.set_xlabel(f"minus {ref} ({unit}; < 0 better)", fontsize=8)
        fig.suptitle(f"{target:.0%} of parameters removed, paired over seeds (mean ± 95% CI)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def write_reports(out: str) -> None:
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    rows = read_runs(os.path.join(out, "runs.csv"))
    sign = -1 if config["higher_is_better"] else 1
    scale = 100 if config["higher_is_better"] else 1
    parts = [
        f"# Global pruning at matched parameter counts ({config['family']})\n",
        f"Command: `{config['command']}`; date {config['date']}; revision "
        f"{config['revision']}; seeds {config['seeds']}.\n",
    ]
    parts.append(contrasts(rows, config, sign, scale))
    present = {(r["model"], r["testbed"]) for r in rows}
    for model in config["models"]:
        for testbed in config["testbeds"]:
            if (model, testbed) not in present:
                continue
            for key in R.PROTOCOLS:
                if any(
                    math.isfinite(r[key])
                    for r in rows
                    if r["model"] == model and r["testbed"] == testbed
                ):
                    parts.append(
                        table(
                            rows,
                            model,
                            testbed,
                            key,
                            config["targets"],
                            config["methods"],
                            sign,
                            scale,
                            config["tol"],
                        )
                    )
            parts.append(allocation(rows, model, testbed, config["targets"], config["methods"]))
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write("\n".join(parts))
    plot(rows, config, os.path.join(out, "paired_vs_default.png"))


def merge(dirs: list[str], out: str) -> None:
    """Runs over disjoint (model, seed) sets into one folder; the first config, with every
    part's command, date, revision and time."""
    rows, configs = [], []
    for d in dirs:
        rows += read_runs(os.path.join(d, "runs.csv"))
        with open(os.path.join(d, "config.json")) as f:
            configs.append(json.load(f))
    keys = [(r["model"], r["seed"], r["testbed"], r["method"], r["ratio"]) for r in rows]
    if len(keys) != len(set(keys)):
        raise SystemExit("the runs to merge overlap (same model, seed, testbed, method, target)")
    for key in ("family", "higher_is_better", "targets", "tol"):
        if any(c[key] != configs[0][key] for c in configs):
            raise SystemExit(f"the runs to merge differ in {key}: {[c[key] for c in configs]}")
    config = dict(configs[0])
    config["seeds"] = sorted({r["seed"] for r in rows})
    config["models"] = list(dict.fromkeys(m for c in configs for m in c["models"]))
    config["testbeds"] = list(dict.fromkeys(t for c in configs for t in c["testbeds"]))
    config["methods"] = list(dict.fromkeys(m for c in configs for m in c["methods"]))
    config["parts"] = [
        {k: c[k] for k in ("command", "date", "revision", "total_seconds", "seeds", "models")}
        for c in configs
    ]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = R.csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    write_reports(out)
