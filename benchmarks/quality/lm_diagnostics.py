"""Where the language-model criteria win or lose (issue 21): one kind of channel pruned at a
time, and the mean-compensation test.

For each (model, seed) of ``lm_study.py`` (the same trained models, from its cache or trained
again with the same settings) and each kind of channel (``hidden``, ``heads``, ``mlp``), only
that kind's groups are pruned at ``--ratio`` (the importance returns None for the others, so
Torch-Pruning leaves them alone), with every criterion of ``--methods``; held-out loss without
fine-tuning. ``random`` is the mean of three draws.

Mean compensation (GPT-2 only: its MLP output projection has a bias): after pruning only the MLP
neurons, each removed neuron's mean activation times its column of ``c_proj`` is added to
``c_proj``'s bias, the mean taken on the calibration windows of the training split (``data``)
or on 64 x 128 uniformly random bytes (``noise``, data-free). An information score ignores a
channel's mean (a nearly constant neuron carries no information but shifts its consumers);
this shows how much of a criterion's loss is that offset.

    python benchmarks/quality/lm_diagnostics.py --seeds 0 1 --cache /tmp/lmcache --out DIR
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import time

import torch
import torch_pruning as tp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lm_criteria as C  # noqa: E402
import lm_models as M  # noqa: E402
import lm_study as L  # noqa: E402

KINDS = ("hidden", "heads", "mlp")
METHODS = ["causal-auto-local", "causal-in-local", "l2", "random", "taylor", "wanda-sp"]


class Only:
    """An importance that scores only the groups of one kind of channel."""

    def __init__(self, importance, kind: str, kinds: dict):
        self.importance, self.kind, self.kinds = importance, kind, kinds

    def __call__(self, group):
        if C.group_kind(group, self.kinds) != self.kind:
            return None
        return self.importance(group)


def prune_kind(model, importance, kind, ratio, ids) -> dict:
    """``C.prune_lm`` restricted to one kind; returns {root layer's name: removed indices}."""
    names = {m: n for n, m in model.named_modules()}
    plan = C.attention_pruning(model)
    pruner = plan.pruner(
        model,
        ids,
        ratio,
        pruner_class=tp.pruner.BasePruner,
        importance=Only(importance, kind, C.layer_kinds(model)),
        global_pruning=False,
        ignored_layers=[model.lm_head],
    )
    removed = {}
    for group in pruner.step(interactive=True):
        removed[names.get(group[0].dep.target.module)] = sorted(int(i) for i in group[0].idxs)
        group.prune()
    plan.sync(model, pruner)
    return removed


@torch.no_grad()
def mlp_input_means(model, windows) -> dict:
    """Per GPT-2 block, the mean of ``mlp.c_proj``'s input channels over ``windows``."""
    means, hooks = {}, []
    for i, block in enumerate(model.transformer.h):

        def hook(mod, args, out, i=i):
            means[i] = args[0].reshape(-1, args[0].shape[-1]).double().mean(0)

        hooks.append(block.mlp.c_proj.register_forward_hook(hook))
    try:
        model(windows)
    finally:
        for h in hooks:
            h.remove()
    return means


@torch.no_grad()
def compensate(pruned, original, removed: dict, means: dict) -> None:
    """Add each removed neuron's mean times its ``c_proj`` row to ``c_proj``'s bias."""
    blocks = zip(original.transformer.h, pruned.transformer.h, strict=True)
    for i, (b0, b1) in enumerate(blocks):
        idx = removed.get(f"transformer.h.{i}.mlp.c_fc", [])
        if idx:
            w = b0.mlp.c_proj.weight.double()[idx]  # Conv1D: [in = neurons, out]
            b1.mlp.c_proj.bias.add_((means[i][idx] @ w).float())


def run(name, seed, args, corpus, writer) -> None:
    heldout = corpus.heldout_windows(M.EVAL["windows"])
    calibration = corpus.calibration()
    ids = L.example_ids()
    model, _ = L.trained_model(name, seed, corpus, M.TRAIN, args.cache, "small")
    key = L.settings_hash([corpus.info["sha256"], M.TRAIN, "small"])
    scores = {}
    for v in sorted({C.causal_method(m)[1] for m in args.methods if m.startswith("causal-")}):
        scores[v], _ = L.causal_scores(model, f"{name}-s{seed}-trained-{key}", v, seed, args.cache)
    means = None
    if hasattr(model, "transformer"):
        noise = torch.randint(0, 256, (64, M.CONTEXT), generator=torch.Generator().manual_seed(0))
        means = {
            "data": mlp_input_means(model, calibration[:, :-1]),
            "noise": mlp_input_means(model, noise),
        }
    for kind in KINDS:
        for method in args.methods:
            losses: dict[str, list[float]] = {}
            for rep in range(3 if method == "random" else 1):
                pruned = copy.deepcopy(model)
                imp = C.importance_for(
                    method, pruned, ids, seed + 100 * rep, scores, calibration, M.lm_loss
                )
                removed = prune_kind(pruned, imp, kind, args.ratio, ids)
                pruned.zero_grad(set_to_none=True)
                losses.setdefault("none", []).append(M.evaluate(pruned, heldout))
                if kind == "mlp" and means is not None:
                    for source, mu in means.items():
                        comp = copy.deepcopy(pruned)
                        compensate(comp, model, removed, mu)
                        losses.setdefault(f"{source}-mean", []).append(M.evaluate(comp, heldout))
            for comp, vals in losses.items():
                writer(
                    dict(
                        model=name,
                        seed=seed,
                        kind=kind,
                        method=method,
                        ratio=args.ratio,
                        compensation=comp,
                        loss=statistics.fmean(vals),
                    )
                )
        print(f"{name} seed {seed} {kind} done", flush=True)


def table(rows) -> str:
    """Mean loss over seeds per (model, kind, method, compensation), and vs random."""
    cells: dict = {}
    for r in rows:
        k = (r["model"], r["kind"], r["compensation"])
        cells.setdefault(k, {}).setdefault(r["method"], {})[int(r["seed"])] = float(r["loss"])
    lines = [
        "| model | kind | compensation | " + " | ".join(METHODS) + " |",
        "|---" * (3 + len(METHODS)) + "|",
    ]
    for (model, kind, comp), by in sorted(cells.items()):
        rnd = cells.get((model, kind, "none"), {}).get("random", {})
        txt = []
        for m in METHODS:
            vals = by.get(m)
            if not vals:
                txt.append("")
                continue
            diffs = [v - rnd[s] for s, v in vals.items() if s in rnd]
            d = f" ({statistics.fmean(diffs):+.3f})" if diffs and m != "random" else ""
            txt.append(f"{statistics.fmean(vals.values()):.3f}{d}")
        lines.append(f"| {model} | {kind} | {comp} | " + " | ".join(txt) + " |")
    return "\n".join(lines) + "\n"


def write(out, rows, seeds, ratio, info) -> None:
    """diagnostics.md and diagnostics.json (and diagnostics.csv when merging)."""
    path = os.path.join(out, "diagnostics.csv")
    if not os.path.exists(path):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    with open(os.path.join(out, "diagnostics.md"), "w") as f:
        f.write(
            f"One kind of channel pruned at {ratio:.0%}, held-out loss (nats/byte), mean over "
            f"seeds {seeds} (difference to random in brackets).\n\n" + table(rows)
        )
    with open(os.path.join(out, "diagnostics.json"), "w") as f:
        json.dump(info, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--models", nargs="+", default=list(M.DEFAULT_MODELS))
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--cache", default=None)
    p.add_argument("--merge", nargs="+", metavar="DIR", help="merge runs over disjoint seeds")
    args = p.parse_args(argv)
    if args.merge:
        rows, infos = [], []
        for d in args.merge:
            with open(os.path.join(d, "diagnostics.csv"), newline="") as f:
                rows += list(csv.DictReader(f))
            with open(os.path.join(d, "diagnostics.json")) as f:
                infos.append(json.load(f))
        os.makedirs(args.out, exist_ok=True)
        write(args.out, rows, sorted({int(r["seed"]) for r in rows}), infos[0]["ratio"], infos)
        return 0
    for m in args.methods:
        try:
            C.check_criterion(m)
        except ValueError as e:
            p.error(str(e))
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    corpus, rows, t0 = M.Corpus(), [], time.perf_counter()
    fields = ["model", "seed", "kind", "method", "ratio", "compensation", "loss"]
    with open(os.path.join(args.out, "diagnostics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()

        def writer(row):
            rows.append(row)
            w.writerow(row)
            f.flush()

        for seed in args.seeds:
            for name in args.models:
                run(name, seed, args, corpus, writer)
    with open(os.path.join(args.out, "diagnostics.md"), "w") as f:
        f.write(
            f"One kind of channel pruned at {args.ratio:.0%}, held-out loss (nats/byte), mean "
            f"over seeds {args.seeds} (difference to random in brackets).\n\n" + table(rows)
        )
    with open(os.path.join(args.out, "diagnostics.json"), "w") as f:
        json.dump(
            {
                "command": " ".join(["python", *sys.argv]),
                "seeds": args.seeds,
                "ratio": args.ratio,
                "methods": args.methods,
                "versions": L.versions(),
                "seconds": time.perf_counter() - t0,
            },
            f,
            indent=1,
        )
    print(f"{len(rows)} rows in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
