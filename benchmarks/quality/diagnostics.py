"""Why a criterion prunes well or badly: rank agreement of channel scores with a data-driven
single-channel ablation, on the same trained digits CNNs as ``study.py`` (same seeds, same
training).

For every prunable channel (outputs of conv1, conv2, conv3) the *ablation importance* is the
increase of the training-set cross-entropy when that one channel's activation (after its ReLU)
is set to zero, which is what removing the channel does to the rest of the network (BatchNorm
statistics as trained). Each criterion's per-layer Spearman rank correlation with it is
reported: causal scores in every direction and mode, with the study's settings (`[study]`:
bins=16, taps="all", no correction, samples_per_layer=16384, examples=64 in local mode and 1024
in propagated mode) and with one setting changed at a time (Miller-Madow correction, centre tap
only, 8 bins, 4x the samples per layer and examples), Torch-Pruning's L1, L2 and BN-scale
importances (the scores MetaPruner ranks by), and, as a data-driven reference, each channel's
mean activation on the training set. A positive correlation means the criterion tends to keep
the channels that matter on data.

Two more tables answer whether Miller-Madow should be the default (``bias.py``):

- ``bias_digits.md``: per layer, the measured MI per pair next to the nominal plug-in bias
  ``(B-1)^2 / (2 S ln 2)`` and the Miller-Madow estimate of it, and the Spearman correlation of
  the uncorrected and corrected ``incoming`` scores (mean over seeds), both modes.
- ``stability.md``: Spearman of the ``in`` channel scores of two noise seeds on the same trained
  network (local mode), uncorrected and with Miller-Madow.

``--bias-resnet18`` writes the bias table for torchvision's ResNet-18 (random init, 224 x 224,
the package defaults) instead, into ``bias_resnet18.md``.

    python benchmarks/quality/diagnostics.py --out benchmarks/quality/results
    python benchmarks/quality/diagnostics.py --bias-resnet18 --out benchmarks/quality/results
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torch_pruning as tp

import causalprune_fast as cf
from causalprune_fast.results.causal_scores import spearman

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bias  # noqa: E402
import study  # noqa: E402

LAYERS = ("conv1", "conv2", "conv3")
# One setting changed at a time from the study's (per mode: study.causal_settings).
VARIANTS = {
    "study": {},
    "miller-madow": {"correction": "miller-madow"},
    "taps=center": {"taps": "center"},
    "bins=8": {"bins": 8},
    "samples x4": {"samples_per_layer": 4 * study.CAUSAL["samples_per_layer"], "examples": 4},
}
STABILITY_SEED_OFFSET = 1000  # the second noise seed of the stability table


def variant_settings(mode: str, change: dict) -> dict:
    """``score_model`` keywords of one diagnostics variant in ``mode``."""
    settings = {**study.causal_settings(mode), **change}
    if "examples" in change:  # a factor on the mode's examples
        settings["examples"] = change["examples"] * study.EXAMPLES[mode]
    return settings


@torch.no_grad()
def ablation_importance(model, x, y) -> dict[str, torch.Tensor]:
    """Training-loss increase when one channel (after its BN + ReLU) is zeroed, per layer."""
    model.eval()
    base = float(F.cross_entropy(model(x), y))
    out = {}
    for name in LAYERS:
        bn = model.get_submodule(name.replace("conv", "bn"))
        deltas = []
        for c in range(bn.num_features):
            # BN output 0 -> ReLU output 0: the next layer sees exactly what it sees once the
            # channel is pruned (its input column removed).
            def hook(mod, args, output, c=c):
                output = output.clone()
                output[:, c] = 0.0
                return output

            h = bn.register_forward_hook(hook)
            try:
                deltas.append(float(F.cross_entropy(model(x), y)) - base)
            finally:
                h.remove()
        out[name] = torch.tensor(deltas, dtype=torch.float64)
    return out


@torch.no_grad()
def mean_activation(model, x) -> dict[str, torch.Tensor]:
    """A data-driven reference: each channel's mean activation (after BN + ReLU) on ``x``."""
    acts, hooks = {}, []
    for name in LAYERS:
        bn = model.get_submodule(name.replace("conv", "bn"))
        hooks.append(
            bn.register_forward_hook(
                lambda m, a, out, n=name: acts.__setitem__(n, F.relu(out).mean((0, 2, 3)))
            )
        )
    try:
        model.eval()
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return {n: a.double() for n, a in acts.items()}


def tp_scores(model) -> dict[str, dict[str, torch.Tensor]]:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 1, 8, 8))
    out = {}
    for crit in ("l1", "l2", "bn-scale"):
        imp = study.tp_importance(crit)
        out[crit] = {}
        for name in LAYERS:
            layer = model.get_submodule(name)
            group = dg.get_pruning_group(
                layer, tp.prune_conv_out_channels, list(range(layer.out_channels))
            )
            out[crit][name] = imp(group).double()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="1 seed, the study's settings only")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="which causal settings to correlate (study and miller-madow are always included "
        "outside --smoke: the bias table needs both)",
    )
    p.add_argument(
        "--bias-resnet18",
        action="store_true",
        help="only the bias table of torchvision's resnet18 (random init, 224 x 224, defaults)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        default=None,
        help="with --bias-resnet18: measure only these layers (score_model's layers filter)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="merge the files of runs over disjoint seeds into --out",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    if args.merge:
        merge(args.merge, args.out)
        return 0
    if args.bias_resnet18:
        return resnet18_bias(args.out, args.layers)
    chosen = ["study"] if args.smoke else ["study", "miller-madow", *args.variants]
    variants = {v: VARIANTS[v] for v in VARIANTS if v in chosen}
    seeds = [0] if args.smoke else args.seeds
    train_cfg = {**study.TRAIN, "epochs": 10} if args.smoke else study.TRAIN
    xtr, ytr, xte, yte = study.load_data()
    rows, rows_stab = [], []
    rows_bias = {mode: [] for mode in study.MODES}
    t_start = time.perf_counter()
    for seed in seeds:
        torch.manual_seed(seed)
        model = study.fit(study.DigitsCNN(), xtr, ytr, train_cfg, seed)
        oracle = ablation_importance(model, xtr, ytr)
        crit = tp_scores(model)
        crit["data: mean activation"] = mean_activation(model, xtr)
        kept = {}
        for variant, change in variants.items():
            for mode in study.MODES:
                scores = cf.score_model(
                    model,
                    study.INPUT_SHAPE,
                    mode=mode,
                    seed=seed,
                    progress=False,
                    **variant_settings(mode, change),
                )
                kept[variant, mode] = scores
                for d in study.DIRECTIONS:
                    crit[f"causal-{d}-{mode} [{variant}]"] = dict(scores.with_direction(d))
        if not args.smoke:
            for mode in study.MODES:
                rows_bias[mode].append(
                    bias.layer_rows(
                        kept["study", mode], kept["miller-madow", mode], study.CAUSAL["bins"]
                    )
                )
            second = seed + STABILITY_SEED_OFFSET
            stab = bias.stability_rows(
                model,
                study.INPUT_SHAPE,
                (seed, second),
                LAYERS,
                mode="local",
                **study.causal_settings("local"),
            )
            for corr, per_layer in stab.items():
                for layer, rho in per_layer.items():
                    rows_stab.append(dict(seed=seed, correction=corr, layer=layer, spearman=rho))
        for name, per_layer in crit.items():
            for layer in LAYERS:
                rho = spearman(per_layer[layer], oracle[layer])
                rows.append(dict(seed=seed, criterion=name, layer=layer, spearman=rho))
        print(
            f"seed {seed}: test accuracy {study.accuracy(model, xte, yte):.4f} (as in study.py's "
            f"config.json), done in {time.perf_counter() - t_start:.0f} s"
        )

        write_all(args.out, seeds[: seeds.index(seed) + 1], rows, rows_bias, rows_stab)
    print(f"{time.perf_counter() - t_start:.0f} s")
    return 0


def write_all(out, seeds, rows, rows_bias, rows_stab) -> None:
    """Every diagnostics file from the rows of the seeds done so far."""
    with open(os.path.join(out, "diagnostics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["seed", "criterion", "layer", "spearman"])
        w.writeheader()
        w.writerows(rows)
    names = list(dict.fromkeys(r["criterion"] for r in rows))
    lines = [
        "Spearman rank correlation of each criterion's channel scores with the single-channel "
        f"ablation importance (training-loss increase), mean ± std over seeds {seeds}",
        "",
        "| criterion | " + " | ".join(LAYERS) + " | mean |",
        "|---" * (len(LAYERS) + 2) + "|",
    ]
    for name in names:
        cells, means = [], []
        for layer in LAYERS:
            vals = [r["spearman"] for r in rows if r["criterion"] == name and r["layer"] == layer]
            m = statistics.fmean(vals)
            means.append(m)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{m:+.2f} ± {sd:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.fmean(means):+.2f} |")
    with open(os.path.join(out, "diagnostics.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if rows_stab:
        write_bias_and_stability(out, seeds, rows_bias, rows_stab)


def merge(dirs, out) -> None:
    """The diagnostics files of runs over disjoint seeds (e.g. run in parallel), in ``out``."""
    rows, rows_stab, rows_bias, seeds = [], [], {mode: [] for mode in study.MODES}, []
    for d in dirs:
        with open(os.path.join(d, "bias_digits.json")) as f:
            b = json.load(f)
        seeds += b["seeds"]
        for mode in study.MODES:
            rows_bias[mode] += b["per_seed"][mode]
        for name, target in (("diagnostics.csv", rows), ("stability.csv", rows_stab)):
            with open(os.path.join(d, name), newline="") as f:
                for r in csv.DictReader(f):
                    target.append({**r, "seed": int(r["seed"]), "spearman": float(r["spearman"])})
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"seeds overlap between the runs: {seeds}")
    write_all(out, seeds, rows, rows_bias, rows_stab)


def write_bias_and_stability(out, seeds, rows_bias, rows_stab) -> None:
    """``bias_digits.md`` / ``.json`` and ``stability.md`` / ``.csv``."""
    parts, means = [], {}
    for mode, runs in rows_bias.items():
        means[mode] = bias.mean_rows(runs)
        settings = study.causal_settings(mode)
        parts.append(
            bias.markdown(
                means[mode],
                f"Digits CNN, `mode={mode!r}` (examples={settings['examples']}, "
                f"samples_per_layer={settings['samples_per_layer']}, bins={settings['bins']}, "
                f"taps={settings['taps']!r}): plug-in bias against measured MI per pair, "
                f"mean over seeds {seeds}",
            )
        )
    with open(os.path.join(out, "bias_digits.md"), "w") as f:
        f.write("\n\n".join(parts) + "\n")
    with open(os.path.join(out, "bias_digits.json"), "w") as f:
        json.dump({"seeds": seeds, "per_seed": rows_bias, "mean": means}, f, indent=1)
    with open(os.path.join(out, "stability.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["seed", "correction", "layer", "spearman"])
        w.writeheader()
        w.writerows(rows_stab)
    lines = [
        "Spearman rank correlation of the `in` channel scores (local mode, the study's settings) "
        f"between noise seeds s and s + {STABILITY_SEED_OFFSET} on the same trained network, "
        f"mean ± std [min] over seeds {seeds}",
        "",
        "| correction | " + " | ".join(LAYERS) + " |",
        "|---" * (len(LAYERS) + 1) + "|",
    ]
    for corr in dict.fromkeys(r["correction"] for r in rows_stab):
        cells = []
        for layer in LAYERS:
            v = [
                r["spearman"] for r in rows_stab if r["correction"] == corr and r["layer"] == layer
            ]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):.3f} ± {sd:.3f} [{min(v):.3f}]")
        lines.append(f"| {corr} | " + " | ".join(cells) + " |")
    with open(os.path.join(out, "stability.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def resnet18_bias(out, layers=None) -> int:
    """The bias table of torchvision's ResNet-18 (random init, seed 0) at 224 x 224 with the
    package defaults, uncorrected and with Miller-Madow: ``bias_resnet18.md`` / ``.json``."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    t0 = time.perf_counter()
    plugin, corrected = bias.score_pair(model, (3, 224, 224), layers=layers)
    seconds = time.perf_counter() - t0
    cfg = plugin.config
    rows = bias.layer_rows(plugin, corrected, cfg["bins"])
    title = (
        "torchvision `resnet18` (random init, `torch.manual_seed(0)`), 224 x 224, package "
        f"defaults (mode={cfg['mode']!r}, examples={cfg.get('examples')}, "
        f"samples_per_layer={cfg.get('samples_per_layer')}, bins={cfg['bins']}, "
        f"taps={cfg['taps']!r}{', layers ' + ', '.join(layers) if layers else ''}): plug-in "
        "bias against measured MI per pair; both scorings "
        f"took {seconds:.0f} s on {torch.get_num_threads()} thread(s)"
    )
    with open(os.path.join(out, "bias_resnet18.md"), "w") as f:
        f.write(bias.markdown(rows, title) + "\n")
    with open(os.path.join(out, "bias_resnet18.json"), "w") as f:
        json.dump({"title": title, "seconds": seconds, "rows": rows}, f, indent=1)
    print(bias.markdown(rows, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
