"""Why a criterion prunes well or badly: rank agreement of channel scores with a data-driven
single-channel ablation, on the same trained digits CNNs as ``study.py`` (same seeds, same
training).

For every prunable channel (outputs of conv1, conv2, conv3) the *ablation importance* is the
increase of the training-set cross-entropy when that one channel's activation (after its ReLU)
is set to zero, which is what removing the channel does to the rest of the network (BatchNorm
statistics as trained). Each criterion's per-layer Spearman rank correlation with it is
reported: causal scores in every direction and mode, with the study's settings (`[study]`:
samples=1024, bins=16, taps="all", no correction) and with one
setting changed at a time (Miller-Madow correction, centre tap only, 8 bins, 4x the noise
samples), Torch-Pruning's L1, L2 and BN-scale importances (the scores MetaPruner ranks by), and,
as a data-driven reference, each channel's mean activation on the training set.
A positive correlation means the criterion tends to keep the channels that matter on data.

    python benchmarks/quality/diagnostics.py --out benchmarks/quality/results
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torch_pruning as tp

import causalprune_fast as cf
from causalprune_fast.results import spearman

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study  # noqa: E402

LAYERS = ("conv1", "conv2", "conv3")
VARIANTS = {
    "study": {},
    "miller-madow": {"correction": "miller-madow"},
    "taps=center": {"taps": "center"},
    "bins=8": {"bins": 8},
    "samples=4096": {"samples": 4096, "max_samples_per_layer": 65536},
}


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
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {"study": {}} if args.smoke else VARIANTS
    seeds = [0] if args.smoke else args.seeds
    train_cfg = {**study.TRAIN, "epochs": 10} if args.smoke else study.TRAIN
    xtr, ytr, xte, yte = study.load_data()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    t_start = time.perf_counter()
    for seed in seeds:
        torch.manual_seed(seed)
        model = study.fit(study.DigitsCNN(), xtr, ytr, train_cfg, seed)
        oracle = ablation_importance(model, xtr, ytr)
        crit = tp_scores(model)
        crit["data: mean activation"] = mean_activation(model, xtr)
        for variant, change in variants.items():
            settings = {**study.CAUSAL, **change}
            for mode in study.MODES:
                scores = cf.score_model(
                    model, study.INPUT_SHAPE, mode=mode, seed=seed, progress=False, **settings
                )
                for d in study.DIRECTIONS:
                    crit[f"causal-{d}-{mode} [{variant}]"] = dict(scores.with_direction(d))
        for name, per_layer in crit.items():
            for layer in LAYERS:
                rho = spearman(per_layer[layer], oracle[layer])
                rows.append(dict(seed=seed, criterion=name, layer=layer, spearman=rho))
        print(
            f"seed {seed}: test accuracy {study.accuracy(model, xte, yte):.4f} (as in study.py's "
            f"config.json), done in {time.perf_counter() - t_start:.0f} s"
        )

    with open(os.path.join(args.out, "diagnostics.csv"), "w", newline="") as f:
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
    with open(os.path.join(args.out, "diagnostics.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
