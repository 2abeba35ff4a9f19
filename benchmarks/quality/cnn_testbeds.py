"""Digits-CNN testbeds that separate pruning criteria (issue 21 item 2c), and their rescaled
copies.

``study.py``'s CNN (conv-BN-ReLU x 3) leaves little room: with BatchNorm re-estimated nothing
beats random there. The net here, ``nobn``, is the same CNN without BatchNorm (conv-ReLU x 3,
with biases), trained on the same data, split and schedule (``study.py``), so that channel
magnitudes are free to differ and mean something. (A BatchNorm net trained with an L1 penalty on
its scales, network slimming, was tried first: with Adam the penalty either left the scales
dense, 1e-3, or cost the net its accuracy, 1e-2; it was dropped.)

Testbeds: ``trained``, and ``rescaled``: every channel of conv1-conv3 gets ``s`` log-uniform in
[1/8, 8]; the conv's filter and bias for that channel are multiplied by ``s`` and its
consumer's input weights (the next conv, or the classifier after global average pooling)
divided by ``s``. ReLU and max pooling commute with a positive scale, so the function is the
same (checked before use).

Every criterion prunes through the same ``tp.pruner.MetaPruner`` set-up as ``study.py``
(per-layer ratio, classifier ignored). Criteria: the causal variants (cached unpruned scores,
as in ``study.py``), ``l1``, ``l2``, ``random``, and two
data-using references on 256 training images: ``taylor`` (Torch-Pruning's
``GroupTaylorImportance``) and ``act`` (mean |activation| of the channel where its consumer
reads it, Torch-Pruning's ``ActivationImportance``). Protocols: no fine-tuning, and the short
fine-tune of ``study.py`` (same batches for every criterion).

    python benchmarks/quality/cnn_testbeds.py --out DIR [--seeds 0 1 ...] [--smoke]
    python benchmarks/quality/cnn_testbeds.py --merge DIR1 DIR2 ... --out DIR
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

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lm_report as R  # noqa: E402
import study as S  # noqa: E402

import causalprune_fast as cf  # noqa: E402

NETS = ("nobn",)
TESTBEDS = ("trained", "rescaled")
RESCALE_RANGE = (1 / 8, 8.0)
CAUSAL = ("causal-in-local", "causal-out-local", "causal-both-local", "causal-in-propagated")
BASELINES = ("l1", "l2", "random", "taylor", "act")
CALIBRATION = 256  # training images for the data-using references


class NoBNCNN(nn.Module):
    """``study.DigitsCNN`` without BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def build(net: str) -> nn.Module:
    if net not in NETS:
        raise ValueError(f"unknown net {net!r}; known: {list(NETS)}")
    return NoBNCNN()


@torch.no_grad()
def rescale(model, seed: int) -> None:
    """The ``rescaled`` testbed, in place (see the module doc)."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    convs = [model.conv1, model.conv2, model.conv3]
    consumers = [model.conv2, model.conv3, model.fc]
    for conv, nxt in zip(convs, consumers, strict=True):
        u = torch.rand(conv.out_channels, generator=gen, dtype=torch.float64)
        lo, hi = math.log(RESCALE_RANGE[0]), math.log(RESCALE_RANGE[1])
        s = torch.exp(lo + u * (hi - lo)).float()
        conv.weight.mul_(s.view(-1, 1, 1, 1))
        conv.bias.mul_(s)
        shape = (1, -1, 1, 1) if isinstance(nxt, nn.Conv2d) else (1, -1)
        nxt.weight.div_(s.view(shape))


def importance(name, model, seed, scores, xcal, ycal):
    if name.startswith("causal-"):
        direction, variant = S.causal_method(name)
        return S.cached_causal_importance(model, scores[variant], direction, variant, seed)
    if name == "taylor":
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xcal), ycal).backward()
        return tp.importance.GroupTaylorImportance()
    if name == "act":
        imp = tp.importance.ActivationImportance(p=1, target_types=[nn.Conv2d, nn.Linear])
        with torch.no_grad(), imp.compute_importance(model):
            model(xcal)
        return imp
    torch.manual_seed(seed)  # RandomImportance draws from the global generator
    return S.tp_importance(name)


def causal_scores(model, variants, seed) -> dict:
    """``study.py``'s scores of ``model`` per score variant (``study.VARIANTS`` names)."""
    return {
        v: cf.score_model(
            model,
            S.INPUT_SHAPE,
            mode=S.VARIANTS[v][0],
            seed=seed,
            progress=False,
            **S.causal_settings(v),
        )
        for v in sorted(variants)
    }


def run_seed(net, seed, args, data, writer) -> dict:
    xtr, ytr, xte, yte = data
    xcal, ycal = xtr[:CALIBRATION], ytr[:CALIBRATION]
    torch.manual_seed(seed)
    trained = S.fit(build(net), xtr, ytr, S.TRAIN, seed)
    info = {"net": net, "seed": seed, "testbeds": {}}
    variants = sorted({S.causal_method(m)[1] for m in args.methods if m.startswith("causal-")})
    for testbed in args.testbeds:
        base = copy.deepcopy(trained)
        if testbed == "rescaled":
            rescale(base, seed)
            with torch.no_grad():
                a, b = trained(xte), base(xte)
            err = float((a - b).abs().max() / a.abs().max())
            if not err <= 1e-4:
                raise RuntimeError(f"rescaled {net} computes another function ({err:.2e})")
        dense = S.accuracy(base, xte, yte)
        dense_ft = S.accuracy(S.fit(copy.deepcopy(base), xtr, ytr, args.ft, 1000 + seed), xte, yte)
        scores = causal_scores(base, variants, seed)
        info["testbeds"][testbed] = {"dense_accuracy": dense, "dense_accuracy_ft": dense_ft}
        for ratio in args.ratios:
            for method in args.methods:
                model = copy.deepcopy(base)
                imp = importance(method, model, seed, scores, xcal, ycal)
                S.meta_prune(model, imp, ratio)
                model.zero_grad(set_to_none=True)
                acc = S.accuracy(model, xte, yte)
                S.fit(model, xtr, ytr, args.ft, 1000 + seed)  # same batches for every criterion
                writer(
                    dict(
                        seed=seed,
                        model=net,
                        testbed=testbed,
                        method=method,
                        ratio=ratio,
                        loss=acc,
                        loss_ft=S.accuracy(model, xte, yte),
                        dense_loss=dense,
                        dense_loss_ft=dense_ft,
                        params=sum(p.numel() for p in model.parameters()),
                        dense_params=sum(p.numel() for p in base.parameters()),
                        prune_seconds=0.0,
                    )
                )
        print(f"{net} seed {seed} {testbed}: dense {dense:.4f}", flush=True)
    return info


def table(rows, net, testbed, key, ref, methods, ratios) -> str:
    """Accuracy (%) per ratio with the paired difference to ``ref`` (higher is better here)."""
    by = R.index(rows)
    lines = [
        f"### {net}, {testbed}, {R.PROTOCOLS[key]}: test accuracy (%), paired difference to "
        f"`{ref}` (mean ± 95% CI, seeds better/worse, Wilcoxon p)",
        "",
        "| criterion | " + " | ".join(f"{r:.1f}" for r in ratios) + " |",
        "|---" * (len(ratios) + 1) + "|",
    ]
    for m in methods:
        cells = []
        for r in ratios:
            runs, base = by.get((net, testbed, m, r), {}), by.get((net, testbed, ref, r), {})
            if not runs:
                cells.append("")
                continue
            txt = f"{100 * statistics.fmean(x[key] for x in runs.values()):.1f}"
            diffs = [-(x[key] - base[s][key]) for s, x in runs.items() if s in base]
            if m != ref and diffs:
                st = R.paired(diffs)  # on minus accuracy: "better" = higher accuracy
                p = "" if math.isnan(st["p_w"]) else f", p={st['p_w']:.2g}"
                txt += (
                    f" ({-100 * st['mean']:+.1f} ± {100 * st['ci']:.1f}, "
                    f"{st['better']}/{st['worse']}{p})"
                )
            cells.append(txt)
        if any(cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--nets", nargs="+", default=list(NETS))
    p.add_argument("--testbeds", nargs="+", default=list(TESTBEDS))
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--smoke", action="store_true", help="1 seed, 1 ratio, 1 fine-tune epoch")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="merge runs over disjoint seeds")
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        return 0
    args.methods = args.methods or [*CAUSAL, *BASELINES]
    cached = [m for m in S.method_names() if m.startswith("causal-") and "-seq-" not in m]
    known = {"nets": NETS, "testbeds": TESTBEDS, "methods": [*cached, *BASELINES]}
    for arg, allowed in known.items():
        bad = [x for x in getattr(args, arg) if x not in allowed]
        if bad:
            p.error(f"unknown {arg} {bad}; known: {list(allowed)}")
    path = os.path.join(args.out, "runs.csv")
    if not args.report_only:
        torch.set_num_threads(1)
        os.makedirs(args.out, exist_ok=True)
        args.ft = {**S.FINETUNE, "epochs": 1 if args.smoke else S.FINETUNE["epochs"]}
        if args.smoke:
            args.seeds, args.ratios = args.seeds[:1], [0.3]
        data, rows, t0 = S.load_data(), [], time.perf_counter()
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=R.FIELDS)
            w.writeheader()

            def writer(row):
                rows.append(row)
                w.writerow(row)
                f.flush()

            info = [run_seed(n, s, args, data, writer) for s in args.seeds for n in args.nets]
        config = {
            "command": " ".join(["python", os.path.relpath(sys.argv[0]), *(argv or sys.argv[1:])]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
            },
            "versions": S.versions(),
            "seeds": args.seeds,
            "nets": args.nets,
            "testbeds": args.testbeds,
            "ratios": args.ratios,
            "methods": args.methods,
            "train": S.TRAIN,
            "finetune": args.ft,
            "split": S.SPLIT,
            "causal_score_model": S.score_config(),
            "rescale_range": RESCALE_RANGE,
            "per_seed": info,
            "total_seconds": time.perf_counter() - t0,
            "note": "runs.csv columns loss / loss_ft / dense_loss hold test ACCURACY here",
        }
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
    write_report(args.out)
    return 0


def write_report(out: str) -> None:
    """tables.md of the run in ``out`` (its runs.csv and config.json)."""
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    rows = R.read_runs(os.path.join(out, "runs.csv"))
    parts = [f"Seeds {config['seeds']}; settings in config.json.\n"]
    for net in config["nets"]:
        for testbed in config["testbeds"]:
            for key in R.PROTOCOLS:
                for ref in ("l1", "random"):
                    parts.append(
                        table(rows, net, testbed, key, ref, config["methods"], config["ratios"])
                    )
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write("\n\n".join(parts) + "\n")
    print(f"{len(rows)} runs; results in {out}")


def merge(dirs: list[str], out: str) -> None:
    """One run's files in ``out`` from runs over disjoint seeds with otherwise equal settings."""
    configs, rows = [], []
    for d in dirs:
        with open(os.path.join(d, "config.json")) as f:
            configs.append(json.load(f))
        rows += R.read_runs(os.path.join(d, "runs.csv"))
    same = ("nets", "testbeds", "ratios", "methods", "train", "finetune", "split", "versions")
    for d, c in zip(dirs[1:], configs[1:], strict=True):
        diff = [k for k in same if c[k] != configs[0][k]]
        if diff:
            raise SystemExit(f"cannot merge {d}: its settings differ in {diff}")
    seeds = [s for c in configs for s in c["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"seeds overlap between the runs: {seeds}")
    config = {
        **configs[0],
        "command": [c["command"] for c in configs]
        + [f"python {os.path.relpath(sys.argv[0])} --merge {' '.join(dirs)} --out {out}"],
        "date": [c["date"] for c in configs],
        "seeds": sorted(seeds),
        "per_seed": [i for c in configs for i in c["per_seed"]],
        "total_seconds": [c["total_seconds"] for c in configs],
        "merged_from": dirs,
    }
    os.makedirs(out, exist_ok=True)
    R.write_runs(os.path.join(out, "runs.csv"), sorted(rows, key=lambda r: r["seed"]))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    write_report(out)


if __name__ == "__main__":
    sys.exit(main())
