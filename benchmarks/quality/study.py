"""Pruning quality study (issue 4, item 4): which causal score prunes best, and against what.

A small CNN with BatchNorm is trained on scikit-learn's bundled digits (8x8 images, no
download; a fixed stratified split), then 10-70% of the channels of every prunable layer are
removed by Torch-Pruning with each criterion below, and test accuracy is measured without
fine-tuning and after a short fine-tune (the same budget for every criterion). Every criterion
goes through ``tp.pruner.MetaPruner`` with the same settings (local, per-layer ratio; the
classifier ignored), so only the importance differs:

- ``causal-<direction>-<variant>``: :class:`CausalImportance`, direction in/out/both, variant
  ``propagated``, ``local`` (the package default) or ``local-mm`` (local with
  ``correction="miller-madow"``, a candidate default). The scores of the unpruned model do not
  depend on the ratio or direction (one scoring gives ``incoming`` and ``outgoing``), so they
  are computed once per (seed, variant) and handed to the importance as its cache; the script
  checks once that this prunes exactly as a fresh ``CausalImportance`` does.
- ``causal-seq-<direction>``: ``causalprune_fast.prune(..., sequential=True)``, propagated:
  each group rescored on the network as already pruned upstream.
- ``l1``, ``l2``, ``bn-scale``, ``random``: Torch-Pruning's ``MagnitudeImportance(p=1)``,
  ``MagnitudeImportance(p=2)``, ``BNScaleImportance()``, ``RandomImportance()`` (defaults).

    python benchmarks/quality/study.py --out benchmarks/quality/results
    python benchmarks/quality/study.py --smoke --out /tmp/quality-smoke   # ~30 s, for CI

Writes ``runs.csv`` (one row per seed x method x ratio), ``config.json`` (every setting,
versions, machine, per-seed dense accuracy and per-layer samples), ``summary.csv``,
``tables.md``, ``accuracy_vs_ratio.png`` (no fine-tune / fine-tuned) and
``accuracy_vs_ratio_bn_recalibrated.png`` into ``--out``. Besides the two protocols asked for,
every pruned network is also evaluated after re-estimating its BatchNorm statistics on the
training set (no weight update), which separates "which channels were kept" from "the kept
channels' stale BatchNorm statistics".
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import sklearn
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import causalprune_fast as cf
from causalprune_fast.pruning.importance import CausalImportance, model_state_key

INPUT_SHAPE = (1, 8, 8)
DIRECTIONS = ("in", "out", "both")
MODES = ("propagated", "local")
# Score variants: (mode, correction). "local-mm" is local mode with the Miller-Madow
# correction (docs/method.md section 5.2), a candidate default.
VARIANTS = {
    "propagated": ("propagated", None),
    "local": ("local", None),
    "local-mm": ("local", "miller-madow"),
}
BASELINES = ("l1", "l2", "bn-scale", "random")
# Paired (same seed) differences are reported against these: L1, random, and the current default
# of causalprune_fast (direction "in", mode "local", no correction).
REFERENCES = ("l1", "random", "causal-in-local")
PROTOCOLS = {
    "acc": "no fine-tuning",
    "acc_ft": "after fine-tuning",
    "acc_bn": "no fine-tuning, BatchNorm statistics re-estimated on the training set",
}
SHORT = {"acc": "no fine-tune", "acc_ft": "fine-tuned", "acc_bn": "BN re-estimated"}

# Causal scoring. Local mode: the package defaults, examples=64 noise examples (they only
# calibrate the per-channel noise ranges) and every layer, the classifier behind global pooling
# included, measured on exactly samples_per_layer=16384 rows of its own. Propagated mode: a
# layer gets examples x positions rows capped at samples_per_layer, so the classifier after
# global pooling gets one row per example; examples=1024 gives it >= bins^2 = 256 (its outgoing
# MI is the "out" score of conv3); conv1/conv2 (64 positions) and conv3 (16) hit the cap.
EXAMPLES = {"propagated": 1024, "local": 64}
CAUSAL = dict(
    input_range=(-1.0, 1.0),  # the data's range (pixels scaled to [-1, 1])
    bins=16,
    samples_per_layer=16384,
    taps="all",
    correction=None,
    reduction="sum",
    backend="cpu",
)


def causal_settings(variant: str) -> dict:
    """``score_model`` keywords of a score variant (see ``VARIANTS``), without mode and seed."""
    mode, correction = VARIANTS[variant]
    return {**CAUSAL, "examples": EXAMPLES[mode], "correction": correction}


CAUSAL_IMPORTANCE = dict(group_reduction="sum", normalizer=None)

TRAIN = dict(epochs=30, batch_size=64, lr=3e-3, weight_decay=0.0, optimizer="Adam")
FINETUNE = dict(epochs=3, batch_size=64, lr=1e-3, weight_decay=0.0, optimizer="Adam")
SPLIT = dict(train_size=1200, test_size=597, random_state=0, stratify=True)


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


def load_data():
    digits = load_digits()
    x = digits.images.astype(np.float32) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        x,
        y,
        train_size=SPLIT["train_size"],
        test_size=SPLIT["test_size"],
        random_state=SPLIT["random_state"],
        stratify=y,
    )
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    return t(xtr).unsqueeze(1), t(ytr), t(xte).unsqueeze(1), t(yte)


def fit(model, x, y, cfg, seed):
    """Adam on cross-entropy, shuffled by a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    model.train()
    for _ in range(cfg["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg["batch_size"]):
            idx = order[i : i + cfg["batch_size"]]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def recalibrate_bn(model, x, batch_size=64):
    """Re-estimate every BatchNorm's running statistics on ``x`` (no weight changes)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def method_names() -> list[str]:
    names = [f"causal-{d}-{v}" for v in VARIANTS for d in DIRECTIONS]
    names += [f"causal-seq-{d}" for d in DIRECTIONS]
    return names + list(BASELINES)


def causal_method(name: str) -> tuple[str, str]:
    """``(direction, variant)`` of a ``causal-<direction>-<variant>`` method name."""
    _, direction, variant = name.split("-", 2)
    if direction not in DIRECTIONS or variant not in VARIANTS:
        raise ValueError(f"not a cached causal method: {name!r}")
    return direction, variant


def uncorrected(name: str) -> str | None:
    """The same criterion without the Miller-Madow correction, for a ``-mm`` method."""
    return name.removesuffix("-mm") if name.startswith("causal-") and name.endswith("-mm") else None


def tp_importance(name: str):
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn-scale":
        return tp.importance.BNScaleImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise ValueError(name)


def cached_causal_importance(model, scores, direction, variant, seed) -> CausalImportance:
    """A CausalImportance whose cache already holds ``scores`` (computed on this very model)."""
    imp = CausalImportance(
        model,
        INPUT_SHAPE,
        direction=direction,
        mode=VARIANTS[variant][0],
        seed=seed,
        **causal_settings(variant),
        **CAUSAL_IMPORTANCE,
    )
    imp._scores, imp._key = scores, model_state_key(model)
    return imp


def meta_prune(model, importance, ratio, scope: str = "layer"):
    """The one pruner setting shared by every non-sequential criterion (``scope``: ``layer``,
    per-layer ratio; ``global``, one ranking over every layer, ``global_pruning=True``)."""
    if scope not in ("layer", "global"):
        raise ValueError(f"unknown scope {scope!r}; known: ['layer', 'global']")
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros(1, *INPUT_SHAPE),
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=scope == "global",
        ignored_layers=[model.fc],
    )
    pruner.step()
    return model


def prune_with(name, model, ratio, seed, scores):
    """Prune ``model`` (a copy) by criterion ``name``; returns (model, causal rescorings)."""
    if name.startswith("causal-seq-"):
        direction = name.removeprefix("causal-seq-")
        model, report = cf.prune(
            model,
            ratio,
            INPUT_SHAPE,
            sequential=True,
            ignored_layers=[model.fc],
            direction=direction,
            mode="propagated",
            seed=seed,
            **causal_settings("propagated"),
            **CAUSAL_IMPORTANCE,
        )
        return model, report.rescored
    if name.startswith("causal-"):
        direction, variant = causal_method(name)
        imp = cached_causal_importance(model, scores[variant], direction, variant, seed)
        meta_prune(model, imp, ratio)
        assert imp.rescored == 0
        return model, 0
    torch.manual_seed(seed)  # RandomImportance draws from the global generator
    return meta_prune(model, tp_importance(name), ratio), 0


def check_cache(model, scores, seed, configs) -> dict:
    """The cached importance prunes exactly as a fresh CausalImportance (which scores itself)."""
    out = {}
    for variant, direction in configs:
        # Each importance scores the copy it prunes; the copies have the model's weights.
        a_model, b_model = copy.deepcopy(model), copy.deepcopy(model)
        a = meta_prune(
            a_model,
            cached_causal_importance(a_model, scores[variant], direction, variant, seed),
            0.5,
        )
        fresh = CausalImportance(
            b_model,
            INPUT_SHAPE,
            direction=direction,
            mode=VARIANTS[variant][0],
            seed=seed,
            **causal_settings(variant),
            **CAUSAL_IMPORTANCE,
        )
        b = meta_prune(b_model, fresh, 0.5)
        same = fresh.rescored == 1 and all(
            torch.equal(p, q)
            for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )
        out[f"{direction}-{variant}"] = same
        if not same:
            raise RuntimeError(f"cached scores prune differently ({direction}, {variant})")
    return out


def channels(model) -> str:
    return "/".join(str(model.get_submodule(n).out_channels) for n in ("conv1", "conv2", "conv3"))


def run_seed(seed, ratios, methods, data, train_cfg, ft_cfg, writer, check=()) -> dict:
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = fit(DigitsCNN(), xtr, ytr, train_cfg, seed)
    train_s = time.perf_counter() - t0
    dense = accuracy(model, xte, yte)
    dense_ft = (
        accuracy(fit(copy.deepcopy(model), xtr, ytr, ft_cfg, 1000 + seed), xte, yte)
        if ft_cfg
        else None
    )
    scores, score_s = {}, {}
    for variant, (mode, _) in VARIANTS.items():
        t0 = time.perf_counter()
        scores[variant] = cf.score_model(
            model, INPUT_SHAPE, mode=mode, seed=seed, progress=False, **causal_settings(variant)
        )
        score_s[variant] = time.perf_counter() - t0
    samples = {v: {n: s.samples for n, s in sc.layers.items()} for v, sc in scores.items()}
    low = {(v, n): k for v in samples for n, k in samples[v].items() if k < CAUSAL["bins"] ** 2}
    if low:
        raise RuntimeError(f"layers with fewer than bins^2 samples: {low}")
    info = {
        "seed": seed,
        "train_seconds": train_s,
        "dense_accuracy": dense,
        "dense_finetuned_accuracy": dense_ft,
        "samples_per_layer": samples,
        "paths": {v: {n: s.path for n, s in sc.layers.items()} for v, sc in scores.items()},
        "score_seconds": score_s,
        "response_points": {n: s.response for n, s in scores["propagated"].layers.items()},
    }
    if check:
        info["cache_check"] = check_cache(model, scores, seed, check)
    ft = f"{dense_ft:.4f}" if dense_ft is not None else "not run"
    print(f"seed {seed}: dense {dense:.4f} (fine-tuned {ft}), trained {train_s:.1f} s")
    for ratio in ratios:
        for name in methods:
            t0 = time.perf_counter()
            pruned, rescored = prune_with(name, copy.deepcopy(model), ratio, seed, scores)
            prune_s = time.perf_counter() - t0
            acc = accuracy(pruned, xte, yte)
            acc_bn = accuracy(recalibrate_bn(copy.deepcopy(pruned), xtr), xte, yte)
            params = sum(p.numel() for p in pruned.parameters())
            chans = channels(pruned)
            acc_ft = float("nan")  # --no-finetune
            if ft_cfg:
                fit(pruned, xtr, ytr, ft_cfg, 1000 + seed)  # same batches for every criterion
                acc_ft = accuracy(pruned, xte, yte)
            writer(
                dict(
                    seed=seed,
                    method=name,
                    ratio=ratio,
                    acc=acc,
                    acc_bn=acc_bn,
                    acc_ft=acc_ft,
                    dense_acc=dense,
                    channels=chans,
                    params=params,
                    rescored=rescored,
                    prune_seconds=round(prune_s, 3),
                )
            )
        print(f"  ratio {ratio:.1f} done")
    return info


# --------------------------------------------------------------------------- summaries


def measured(rows) -> list[str]:
    """The protocols the rows measured (``acc_ft`` is NaN with ``--no-finetune``)."""
    return [k for k in PROTOCOLS if any(math.isfinite(r[k]) for r in rows)]


def summarise(rows, methods, ratios) -> list[dict]:
    by = {}
    for r in rows:
        by.setdefault((r["method"], r["ratio"]), {})[r["seed"]] = r
    out = []
    for m in methods:
        for ratio in ratios:
            runs = by.get((m, ratio), {})
            if not runs:
                continue
            rec = {"method": m, "ratio": ratio, "n": len(runs)}
            refs = [*REFERENCES, *filter(None, [uncorrected(m)])]
            for key in measured(rows):
                vals = [r[key] for r in runs.values()]
                rec[f"{key}_mean"] = statistics.fmean(vals)
                rec[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
                for ref in dict.fromkeys(refs):
                    if ref == m:
                        continue
                    ref_runs = by.get((ref, ratio), {})
                    diffs = [r[key] - ref_runs[s][key] for s, r in runs.items() if s in ref_runs]
                    if diffs:
                        rec[f"{key}_vs_{ref}_mean"] = statistics.fmean(diffs)
                        rec[f"{key}_vs_{ref}_std"] = (
                            statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                        )
                        rec[f"{key}_vs_{ref}_wins"] = sum(d > 0 for d in diffs)
                        rec[f"{key}_vs_{ref}_losses"] = sum(d < 0 for d in diffs)
            out.append(rec)
    return out


def paired_cells(v, key, ref) -> tuple[str, float | None]:
    """``"mean ± std [better/worse]"`` of a summary cell's paired difference to ``ref``."""
    if v is None or f"{key}_vs_{ref}_mean" not in v:
        return "", None
    d = v[f"{key}_vs_{ref}_mean"]
    txt = (
        f"{100 * d:+.1f} ± {100 * v[f'{key}_vs_{ref}_std']:.1f} "
        f"[{v[f'{key}_vs_{ref}_wins']}/{v[f'{key}_vs_{ref}_losses']}]"
    )
    return txt, d


def correction_table(cell, methods, ratios, keys) -> str:
    """Miller-Madow minus the same criterion uncorrected, paired by seed, per protocol."""
    pairs = [(m, uncorrected(m)) for m in methods if uncorrected(m) in methods]
    if not pairs:
        return ""
    head = "| method | protocol | " + " | ".join(f"{r:.1f}" for r in ratios) + " | mean |"
    lines = [
        "Paired difference Miller-Madow minus uncorrected (same direction and mode, same seed), "
        "accuracy points: mean ± std of the per-seed difference [seeds better/worse]",
        "",
        head,
        "|---" * (len(ratios) + 3) + "|",
    ]
    for m, base in pairs:
        for key in keys:
            txt, avg = [], []
            for r in ratios:
                t, d = paired_cells(cell.get((m, r)), key, base)
                txt.append(t)
                if d is not None:
                    avg.append(d)
            mean = f"{100 * statistics.fmean(avg):+.1f}" if avg else ""
            lines.append(f"| {m} vs {base} | {SHORT[key]} | " + " | ".join(txt) + f" | {mean} |")
    return "\n".join(lines)


def markdown_tables(summary, methods, ratios) -> str:
    cell = {(s["method"], s["ratio"]): s for s in summary}
    keys = [k for k in PROTOCOLS if all(f"{k}_mean" in s for s in summary)]
    lines = [
        "Overview: test accuracy (%) averaged over the ratios "
        f"{', '.join(f'{r:.1f}' for r in ratios)} (mean over seeds), and the paired difference "
        "to `l1` in points averaged the same way. No fine-tune: pruned as is; fine-tuned: after "
        "the fixed short fine-tune; BN re-estimated: no fine-tune, BatchNorm running statistics "
        "re-estimated on the training set (no weight update)",
        "",
        "| method | "
        + " | ".join(SHORT[k] for k in keys)
        + " | "
        + " | ".join(f"vs l1, {SHORT[k]}" for k in keys)
        + " |",
        "|---" * (1 + 2 * len(keys)) + "|",
    ]
    for m in methods:
        vals = [cell[(m, r)] for r in ratios if (m, r) in cell]
        acc = [f"{100 * statistics.fmean(v[f'{k}_mean'] for v in vals):.1f}" for k in keys]
        diff = [
            f"{100 * statistics.fmean(v[f'{k}_vs_l1_mean'] for v in vals):+.1f}"
            if all(f"{k}_vs_l1_mean" in v for v in vals)
            else ""
            for k in keys
        ]
        lines.append(f"| {m} | " + " | ".join(acc + diff) + " |")
    parts = ["\n".join(lines)]
    for key in keys:
        title = PROTOCOLS[key]
        head = "| method | " + " | ".join(f"{r:.1f}" for r in ratios) + " | mean |"
        sep = "|---" * (len(ratios) + 2) + "|"
        lines = [f"Test accuracy (%), {title}: mean ± std over seeds", "", head, sep]
        for m in methods:
            vals = [cell.get((m, r)) for r in ratios]
            txt = [
                "" if v is None else f"{100 * v[f'{key}_mean']:.1f} ± {100 * v[f'{key}_std']:.1f}"
                for v in vals
            ]
            avg = [v[f"{key}_mean"] for v in vals if v is not None]
            lines.append(f"| {m} | " + " | ".join(txt) + f" | {100 * statistics.fmean(avg):.1f} |")
        parts.append("\n".join(lines))
        for ref in REFERENCES:
            if ref not in methods:
                continue
            lines = [
                f"Paired difference to `{ref}` ({title}), accuracy points: mean ± std of the "
                "per-seed difference [seeds better/worse]",
                "",
                head,
                sep,
            ]
            for m in methods:
                if m == ref:
                    continue
                txt, avg = [], []
                for r in ratios:
                    t, d = paired_cells(cell.get((m, r)), key, ref)
                    txt.append(t)
                    if d is not None:
                        avg.append(d)
                mean = f"{100 * statistics.fmean(avg):+.1f}" if avg else ""
                lines.append(f"| {m} | " + " | ".join(txt) + f" | {mean} |")
            parts.append("\n".join(lines))
    parts.append(correction_table(cell, methods, ratios, keys))
    return "\n\n".join(p for p in parts if p) + "\n"


STYLE = {
    "in": "tab:blue",
    "out": "tab:orange",
    "both": "tab:green",
    "l1": "black",
    "l2": "dimgray",
    "bn-scale": "tab:purple",
    "random": "tab:red",
}


def plot(summary, methods, panels, path) -> None:
    """One panel per (key, title, unpruned accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(1 + 6 * len(panels), 5.2), squeeze=False)
    axes = axes[0]
    for ax, (key, title, dense) in zip(axes, panels, strict=True):
        for i, m in enumerate(methods):
            pts = [s for s in summary if s["method"] == m]
            dodge = 0.005 * (i - (len(methods) - 1) / 2)  # keep error bars apart
            x = [s["ratio"] + dodge for s in pts]
            y = [100 * s[f"{key}_mean"] for s in pts]
            e = [100 * s[f"{key}_std"] for s in pts]
            if m.startswith("causal-seq-"):
                color, ls, marker = STYLE[m.removeprefix("causal-seq-")], ":", "^"
            elif m.startswith("causal-"):
                d, variant = causal_method(m)
                ls = {"propagated": "-", "local": "--", "local-mm": "-."}[variant]
                color, marker = STYLE[d], "x" if variant.endswith("-mm") else "o"
            else:
                color, ls, marker = STYLE[m], "-", "s"
            width = 2.2 if not m.startswith("causal") else 1.3
            ax.errorbar(
                x,
                y,
                yerr=e,
                color=color,
                ls=ls,
                marker=marker,
                ms=4,
                lw=width,
                capsize=2,
                label=m,
                alpha=0.9,
            )
        if dense is not None:
            ax.axhline(100 * dense, color="gray", lw=0.8, ls="-.", label="unpruned")
        ax.set_title(f"digits CNN, {title}", fontsize=10)
        ax.set_xlabel("fraction of channels removed per layer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), mean ± std over seeds")
    axes[-1].legend(fontsize=7.5, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_reports(out, rows, config) -> None:
    """summary.csv, tables.md and the plots, from the per-run rows and config.json's content."""
    methods, ratios, seeds = config["methods"], config["ratios"], config["seeds"]
    seeds_info = config["per_seed"]
    summary = summarise(rows, methods, ratios)
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        keys = sorted({k for s in summary for k in s}, key=lambda k: (k not in ("method",), k))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(summary)
    dense = {
        "acc": statistics.fmean(i["dense_accuracy"] for i in seeds_info),
        "acc_ft": statistics.fmean(i["dense_finetuned_accuracy"] for i in seeds_info)
        if all(i.get("dense_finetuned_accuracy") is not None for i in seeds_info)
        else None,
    }
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(
            f"Unpruned: {100 * dense['acc']:.1f}% (after the same fine-tune: "
            + (f"{100 * dense['acc_ft']:.1f}%" if dense["acc_ft"] is not None else "not saved")
            + f"), mean over seeds {seeds}.\n\n"
        )
        f.write(markdown_tables(summary, methods, ratios))
    panels = [("acc", "no fine-tuning", dense["acc"]), ("acc_ft", "fine-tuned", dense["acc_ft"])]
    plot(
        summary,
        methods,
        [pn for pn in panels if pn[0] in measured(rows)],
        os.path.join(out, "accuracy_vs_ratio.png"),
    )
    plot(
        summary,
        methods,
        [("acc_bn", "no fine-tuning, BatchNorm statistics re-estimated", dense["acc"])],
        os.path.join(out, "accuracy_vs_ratio_bn_recalibrated.png"),
    )


def read_runs(path) -> list[dict]:
    types = dict(seed=int, ratio=float, acc=float, acc_bn=float, acc_ft=float, dense_acc=float)
    types.update(params=int, rescored=int, prune_seconds=float)
    with open(path, newline="") as f:
        return [{k: types.get(k, str)(v) for k, v in r.items()} for r in csv.DictReader(f)]


def stopped_run_config(folder: str, rows: list[dict]) -> tuple[dict, list[dict]]:
    """For a run stopped before it wrote config.json (run with the defaults of this script):
    its complete seeds' rows and a config rebuilt from this script's settings, with each seed's
    dense accuracy from runs.csv (its fine-tuned dense accuracy, score samples and timings were
    not saved)."""
    methods, ratios = method_names(), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    by_seed: dict[int, list[dict]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append(r)
    done = [s for s, rs in by_seed.items() if len(rs) == len(methods) * len(ratios)]
    config = {
        "command": f"python {os.path.relpath(sys.argv[0])} --out {folder} (stopped; the "
        f"complete seeds {done} of it are kept)",
        "date": None,
        "versions": versions(),
        "seeds": done,
        "ratios": ratios,
        "methods": methods,
        "split": SPLIT,
        "train": TRAIN,
        "finetune": FINETUNE,
        "causal_score_model": score_config(),
        "per_seed": [
            {"seed": s, "dense_accuracy": by_seed[s][0]["dense_acc"], "stopped_run": True}
            for s in done
        ],
        "total_seconds": None,
    }
    return config, [r for r in rows if r["seed"] in done]


def merge(dirs: list[str], out: str) -> None:
    """One run's files in ``out`` from runs over disjoint seeds with otherwise equal settings."""
    configs, rows = [], []
    for d in dirs:
        runs = read_runs(os.path.join(d, "runs.csv"))
        path = os.path.join(d, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                configs.append(json.load(f))
        else:
            config, runs = stopped_run_config(d, runs)
            configs.append(config)
        rows += runs
    same = ("ratios", "methods", "split", "train", "finetune", "causal_score_model", "versions")
    for c in configs[1:]:
        diff = [k for k in same if c[k] != configs[0][k]]
        if diff:
            raise SystemExit(f"cannot merge runs that differ in {diff}")
    seeds = [s for c in configs for s in c["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"seeds overlap between the runs: {seeds}")
    config = {
        **configs[0],
        "command": "; ".join(c["command"] for c in configs)
        + f"; python {os.path.relpath(sys.argv[0])} --merge {' '.join(dirs)} --out {out}",
        "date": [c["date"] for c in configs],
        "seeds": sorted(seeds),
        "per_seed": sorted((i for c in configs for i in c["per_seed"]), key=lambda i: i["seed"]),
        "total_seconds": [c["total_seconds"] for c in configs],
        "merged_from": len(configs),
    }
    rows.sort(key=lambda r: r["seed"])  # stable: each seed's rows keep their order
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    write_reports(out, rows, config)


# --------------------------------------------------------------------------- main


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "scikit_learn": sklearn.__version__,
        "numpy": np.__version__,
        "causalprune_fast": cf.__version__,
    }


def score_config() -> dict:
    return {
        v: {**causal_settings(v), "mode": VARIANTS[v][0], "input_shape": list(INPUT_SHAPE)}
        for v in VARIANTS
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--methods", nargs="+", default=None, help="subset of the criteria")
    p.add_argument("--ft-epochs", type=int, default=FINETUNE["epochs"])
    p.add_argument(
        "--no-finetune",
        action="store_true",
        help="skip the fine-tuned protocol (acc_ft is NaN): no fine-tune and BN re-estimated only",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: the tiny layers gain nothing from more, on a shared machine)",
    )
    p.add_argument("--smoke", action="store_true", help="1 seed, 2 ratios, 1 fine-tune epoch")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild summary.csv, tables.md and the plots from --out's runs.csv and config.json",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="merge the runs.csv and config.json of runs over disjoint seeds (e.g. run in "
        "parallel with --seeds) into --out, then write the reports there",
    )
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        return 0
    if args.report_only:
        with open(os.path.join(args.out, "config.json")) as f:
            config = json.load(f)
        write_reports(args.out, read_runs(os.path.join(args.out, "runs.csv")), config)
        return 0
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.seeds, args.ratios, args.ft_epochs = [0], [0.3, 0.6], 1
    train_cfg = {**TRAIN, "epochs": 10} if args.smoke else TRAIN
    methods = args.methods or method_names()
    unknown = set(methods) - set(method_names())
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; known: {method_names()}")
    ft_cfg = None if args.no_finetune else {**FINETUNE, "epochs": args.ft_epochs}
    os.makedirs(args.out, exist_ok=True)
    data = load_data()

    rows: list[dict] = []
    csv_path = os.path.join(args.out, "runs.csv")
    fields = [
        "seed",
        "method",
        "ratio",
        "acc",
        "acc_bn",
        "acc_ft",
        "dense_acc",
        "channels",
        "params",
        "rescored",
        "prune_seconds",
    ]
    t_start = time.perf_counter()
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()

        def writer(row):
            rows.append(row)
            w.writerow(row)
            f.flush()

        # The first seed checks the score cache: every (variant, direction), or two in a smoke
        # run (propagated and Miller-Madow local, "both").
        checks = [(v, d) for v in VARIANTS for d in DIRECTIONS]
        checks = [("propagated", "both"), ("local-mm", "both")] if args.smoke else checks
        seeds_info = [
            run_seed(
                s, args.ratios, methods, data, train_cfg, ft_cfg, writer, checks if i == 0 else ()
            )
            for i, s in enumerate(args.seeds)
        ]
    total_s = time.perf_counter() - t_start

    config = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": versions(),
        "seeds": args.seeds,
        "ratios": args.ratios,
        "methods": methods,
        "split": SPLIT,
        "train": train_cfg,
        "finetune": ft_cfg,
        "causal_score_model": score_config(),
        "causal_importance": CAUSAL_IMPORTANCE,
        "pruner": {
            "class": "tp.pruner.MetaPruner",
            "pruning_ratio": "per run",
            "global_pruning": False,
            "ignored_layers": ["fc"],
            "sequential": "causalprune_fast.prune(sequential=True, mode='propagated'), "
            "the propagated variant's settings",
        },
        "per_seed": seeds_info,
        "total_seconds": total_s,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    write_reports(args.out, rows, config)
    print(f"{len(rows)} runs in {total_s:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
