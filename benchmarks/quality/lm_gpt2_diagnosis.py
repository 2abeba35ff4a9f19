"""Why data-free criteria lose to random on the study's GPT-2 without fine-tuning (issue 21).

``lm_study.py`` found that pruning 20% of every kind of channel of its byte-level GPT-2 at once
costs the data-free criteria (the package default ``causal-auto-local``, L2) about +0.1
nats/byte against random, while one kind at a time they are within about 0.02 of random. This
script localises that, on the same trained models and cached causal scores (``--cache``, as
``lm_study.py`` writes them), every pruning through the plan ``cf.prune`` uses:

- ``pairs``: the kinds of channel pruned in every combination (``hidden``, ``heads``, ``mlp``,
  the three pairs and ``all``); the importance returns None for the groups of other kinds.
- ``cross``: hidden size and MLP neurons pruned, each chosen by its own criterion (every pair
  of ``--methods``; heads kept, or chosen by ``--cross-heads``).
- ``meancomp``: the removed MLP neurons' mean output folded into ``c_proj``'s bias, the mean
  taken on uniformly random bytes (``noise``, ``noise<LO>-<HI>`` for ``--score-range``), from
  the weights under a standard normal LayerNorm output (``gauss``), or on training text
  (``data``, a data-using reference).
- ``blocks``: everything pruned by the criterion except the MLP neurons, which it chooses in
  one block only (random elsewhere) or everywhere but one block.
- ``offset``: the cost of the removed neurons' mean output alone (subtracted from the bias,
  the neurons kept), in the full-width model and after pruning only the hidden size.
- ``meanratio``: per block, the norm of the constant that the MLP neurons each criterion
  removes wrote into the residual stream (their mean output on training text times their
  output weights), relative to the stream's per-token norm (GPT-2 and Llama).
- ``range``: the default on causal scores computed with noise over token ids ``--score-range``
  instead of the whole byte vocabulary (cached in ``--score-cache``).
- ``embeddings``: the input embedding's rows of bytes that occur in the training text and
  of those that never do (GPT-2 ties them to its output layer, Llama does not).
- ``lnstats``: after pruning everything, each LayerNorm's per-token input standard deviation
  on held-out text against the unpruned model's (``std``), the same were only the dims removed
  (``dims-only``), and the shift of its input mean.
- ``fixes``: fold the mean of every removed input channel (on noise, on text, or only the
  LayerNorm bias for the hidden dims) into the biases of the layers that read it.

Each row is one (model, seed, experiment, setting, criterion) value (held-out loss in nats per
byte unless the setting says otherwise); ``random`` is the mean of three draws. Tables pair
every criterion with random over seeds (mean difference, 95% t interval, seeds lower/higher,
Wilcoxon p); ``pairs`` also plots them (``pairs.png``). About 3-170 s per experiment for
8 seeds on one thread.

    python benchmarks/quality/lm_gpt2_diagnosis.py EXPERIMENT --seeds 0 1 2 3 4 5 6 7 \\
        --cache /tmp/lmcache2 --out benchmarks/quality/results/lm-gpt2-diagnosis
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lm_criteria as C  # noqa: E402
import lm_gpt2_pruning as P  # noqa: E402
import lm_gpt2_repairs as G  # noqa: E402
import lm_models as M  # noqa: E402
import lm_report as R  # noqa: E402
import lm_study as L  # noqa: E402

EXPERIMENTS = (
    "pairs",
    "cross",
    "meancomp",
    "blocks",
    "offset",
    "meanratio",
    "range",
    "embeddings",
    "lnstats",
    "fixes",
)
METHODS = ["causal-auto-local", "l2", "random"]
FIELDS = ["model", "seed", "experiment", "setting", "method", "ratio", "value"]


def run_cross(name, seed, model, scores, args, ctx, writer) -> None:
    """Hidden size chosen by one criterion, MLP neurons by another (heads: ``--cross-heads``)."""
    ids, methods = L.example_ids(), args.methods
    for a in methods:
        for b in methods:
            vals = []
            for rep in range(3 if "random" in (a, b) else 1):
                p = copy.deepcopy(model)
                by = {}
                for kind, m in (("hidden", a), ("mlp", b), ("heads", args.cross_heads)):
                    if m is not None:
                        by[kind] = C.importance_for(
                            m, p, ids, seed + 100 * rep + 7 * len(by), scores, None, M.lm_loss
                        )
                P.prune(p, P.PerKind(by, C.layer_kinds(p)), P.SUBSETS["all"], args.ratio, ids)
                vals.append(M.evaluate(p, ctx["heldout"]))
            writer(name, seed, "cross", f"mlp={b}", a, statistics.fmean(vals))


def run_meancomp(name, seed, model, scores, args, ctx, writer) -> None:
    """MLP-pruning settings with and without folding the removed neurons' mean into the bias,
    the mean taken on uniformly random bytes (``noise``) or on training text (``data``)."""
    lo, hi = args.score_range
    means = {
        "noise": G.mlp_input_means(model, G.noise_windows()),
        f"noise{lo}-{hi}": G.mlp_input_means(model, G.noise_windows(lo=lo, hi=hi)),
        "gauss": G.gaussian_mlp_means(model),
        "data": G.mlp_input_means(model, ctx["calibration"][:, :-1]),
    }
    for setting in args.meancomp_settings:
        for method in args.methods:
            vals: dict = {}
            for p, removed in ctx["copies"](method, P.SUBSETS[setting]):
                vals.setdefault("none", []).append(M.evaluate(p, ctx["heldout"]))
                for source, mu in means.items():
                    q = copy.deepcopy(p)
                    G.compensate_mlp(q, model, removed, mu)
                    vals.setdefault(source, []).append(M.evaluate(q, ctx["heldout"]))
            for comp, v in vals.items():
                writer(
                    name, seed, "meancomp", f"{setting} {comp}-mean", method, statistics.fmean(v)
                )


def run_blocks(name, seed, model, scores, args, ctx, writer) -> None:
    """Everything pruned by each criterion, except the MLP neurons: by the criterion in one
    block only (random in the others: ``crit-mlp-b<i>``) or random in one block only
    (``rnd-mlp-b<i>``)."""
    ids, n = L.example_ids(), len(model.transformer.h)
    settings = {f"crit-mlp-b{i}": ({i}, True) for i in range(n)}
    settings.update({f"rnd-mlp-b{i}": (set(range(n)) - {i}, True) for i in range(n)})
    for method in [m for m in args.methods if m != "random"]:
        for setting, (blocks, _) in settings.items():
            vals = []
            for rep in range(3):
                p = copy.deepcopy(model)
                crit = C.importance_for(method, p, ids, seed, scores, None, M.lm_loss)
                rnd = C.importance_for("random", p, ids, seed + 100 * rep, scores, None, None)
                P.prune(p, P.ByBlock(crit, rnd, blocks, p), P.SUBSETS["all"], args.ratio, ids)
                vals.append(M.evaluate(p, ctx["heldout"]))
            writer(name, seed, "blocks", setting, method, statistics.fmean(vals))


def run_range(name, seed, model, scores, args, ctx, writer) -> None:
    """The default criterion on scores computed with noise over ``--score-range`` token ids,
    every kind pruned, and one kind at a time."""
    lo, hi = args.score_range
    ranged = {"local": P.ranged_scores(model, f"{name}-s{seed}", seed, lo, hi, args.score_cache)}
    for setting in ("all", "hidden", "heads", "mlp"):
        for label, sc in ((f"range {lo}-{hi}", ranged), ("range 0-256", scores)):
            p = copy.deepcopy(model)
            imp = C.importance_for("causal-auto-local", p, L.example_ids(), seed, sc, None, None)
            P.prune(p, imp, P.SUBSETS[setting], args.ratio, L.example_ids())
            writer(name, seed, "range", setting, label, M.evaluate(p, ctx["heldout"]))
        vals = [
            M.evaluate(p, ctx["heldout"]) for p, _ in ctx["copies"]("random", P.SUBSETS[setting])
        ]
        writer(name, seed, "range", setting, "random", statistics.fmean(vals))


def run_offset(name, seed, model, scores, args, ctx, writer) -> None:
    """How much the mean output of the MLP neurons the default removes costs, alone: that
    constant (on training text) subtracted from ``c_proj``'s bias, nothing else of the MLP
    changed, in the full-width model and after pruning only the hidden size (by the default,
    by random); and the per-token standard deviation of ``ln_f``'s input (held-out text)."""
    ids, windows = L.example_ids(), ctx["heldout"][:32, :-1]
    probe = copy.deepcopy(model)
    imp = C.importance_for("causal-auto-local", probe, ids, seed, scores, None, None)
    mlp = P.prune(probe, imp, P.SUBSETS["mlp"], args.ratio, ids)["mlp"]
    means = G.mlp_input_means(model, ctx["calibration"][:, :-1])
    std0 = G.ln_inputs(model, windows)["transformer.ln_f"].std(-1).mean().item()
    for base in ("full", "causal-auto-local", "random"):
        p, removed = copy.deepcopy(model), {"mlp": mlp}
        if base != "full":
            imp = C.importance_for(base, p, ids, seed, scores, None, None)
            removed["hidden"] = P.prune(p, imp, P.SUBSETS["hidden"], args.ratio, ids)["hidden"]
        std = G.ln_inputs(p, windows)["transformer.ln_f"].std(-1).mean().item()
        writer(name, seed, "offset", "ln_f input std / unpruned", base, std / std0)
        loss = M.evaluate(p, ctx["heldout"])
        writer(name, seed, "offset", "loss", base, loss)
        q = copy.deepcopy(p)
        G.compensate_mlp(q, model, removed, [-m for m in means])  # subtract, MLP kept
        writer(
            name,
            seed,
            "offset",
            "loss, removed neurons' mean subtracted",
            base,
            M.evaluate(q, ctx["heldout"]),
        )


def run_meanratio(name, seed, model, scores, args, ctx, writer) -> None:
    """Per block, the norm of the constant the removed MLP neurons wrote (their mean output on
    training text times their output weights) over the mean per-token norm of the centred
    residual stream after that block: GPT-2 (GELU with biases) and Llama (SwiGLU, no biases)."""
    cal = ctx["calibration"][:, :-1]
    gpt2 = hasattr(model, "transformer")
    blocks = model.transformer.h if gpt2 else model.model.layers
    outs = [b.mlp.c_proj if gpt2 else b.mlp.down_proj for b in blocks]
    acts, hooks = {}, []
    for i, m in enumerate(outs):

        def hook(mod, a, o, i=i):
            acts[i] = a[0].reshape(-1, a[0].shape[-1]).double()

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            hs = model(cal, output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()
    for method in args.methods:
        ratios: dict = {}
        for _, removed in ctx["copies"](method, P.SUBSETS["mlp"]):
            for i, m in enumerate(outs):
                idx = next(v for k, v in removed["mlp"].items() if f".{i}." in k)
                w = m.weight.double()
                w = w[idx] if gpt2 else w[:, idx].T  # [removed neurons, hidden]
                delta = acts[i].mean(0)[idx] @ w
                x = hs[i + 1].reshape(-1, hs[i + 1].shape[-1]).double()
                scale = (x - x.mean(-1, keepdim=True)).norm(dim=-1).mean()
                ratios.setdefault(f"block {i}", []).append(float(delta.norm() / scale))
        for setting, v in ratios.items():
            writer(name, seed, "meanratio", setting, method, statistics.fmean(v))


def run_embeddings(name, seed, model, scores, args, ctx, writer) -> None:
    """The input embedding's rows for the bytes that occur in the training text and for those
    that never do: mean row norm, and the norm of the mean row (a common direction)."""
    seen = torch.bincount(ctx["train"].long(), minlength=256) > 0
    e = model.get_input_embeddings().weight.detach().double()
    for label, rows in (("seen", e[seen]), ("unseen", e[~seen])):
        writer(
            name, seed, "embeddings", f"{label} bytes: mean row norm", "-", rows.norm(dim=1).mean()
        )
        writer(
            name, seed, "embeddings", f"{label} bytes: norm of mean row", "-", rows.mean(0).norm()
        )
    writer(name, seed, "embeddings", "bytes seen in training text", "-", float(seen.sum()))


def run_pairs(name, seed, model, scores, args, ctx, writer) -> None:
    for setting, kinds in P.SUBSETS.items():
        for method in args.methods:
            vals = [M.evaluate(p, ctx["heldout"]) for p, _ in ctx["copies"](method, kinds)]
            writer(name, seed, "pairs", setting, method, statistics.fmean(vals))


def run_lnstats(name, seed, model, scores, args, ctx, writer) -> None:
    windows = ctx["heldout"][:32, :-1]
    before = G.ln_inputs(model, windows)
    for method in args.methods:
        ratios: dict = {}
        for p, removed in ctx["copies"](method, P.SUBSETS["all"]):
            kept = sorted(set(range(model.config.n_embd)) - set(G.hidden_removed(removed)))
            after = G.ln_inputs(p, windows)
            for ln, x0 in before.items():
                x1 = after[ln]
                std_ratio = (x1.std(-1) / x0.std(-1)).mean().item()
                # the same, were the residual stream unchanged: only the dims removed
                dims_only = (x0[:, kept].std(-1) / x0.std(-1)).mean().item()
                ratios.setdefault(f"{ln}/std", []).append(std_ratio)
                ratios.setdefault(f"{ln}/dims-only", []).append(dims_only)
                ratios.setdefault(f"{ln}/mean-shift", []).append(
                    ((x1.mean(-1) - x0.mean(-1)).abs() / x0.std(-1)).mean().item()
                )
        for setting, v in ratios.items():
            writer(name, seed, "lnstats", setting, method, statistics.fmean(v))


FIXES = ("none", "fold-noise-all", "fold-data-all", "fold-noise-hidden", "fold-lnbias-hidden")


def run_fixes(name, seed, model, scores, args, ctx, writer) -> None:
    sources = {"noise": G.noise_windows(), "data": ctx["calibration"][:, :-1]}
    means = {k: G.input_means(model, v) for k, v in sources.items()}
    means["lnbias"] = {}  # the LayerNorm's bias: the constant part of its output, no inputs
    for i, b in enumerate(model.transformer.h):
        means["lnbias"][f"transformer.h.{i}.attn.c_attn"] = b.ln_1.bias.double()
        means["lnbias"][f"transformer.h.{i}.mlp.c_fc"] = b.ln_2.bias.double()
    for method in args.methods:
        vals: dict = {}
        for p, removed in ctx["copies"](method, P.SUBSETS[args.fix_kinds]):
            for fix in FIXES:
                q = p
                if fix != "none":
                    _, source, layers = fix.split("-")
                    q = copy.deepcopy(p)
                    G.fold_removed_inputs(q, model, removed, means[source], layers)
                vals.setdefault(fix, []).append(M.evaluate(q, ctx["heldout"]))
        for fix, v in vals.items():
            writer(name, seed, "fixes", fix, method, statistics.fmean(v))


RUNNERS = {
    "pairs": run_pairs,
    "lnstats": run_lnstats,
    "fixes": run_fixes,
    "cross": run_cross,
    "meancomp": run_meancomp,
    "blocks": run_blocks,
    "range": run_range,
    "offset": run_offset,
    "meanratio": run_meanratio,
    "embeddings": run_embeddings,
}


def table(rows, experiment) -> str:
    """Mean per (model, setting, method) and the paired difference to random over seeds."""
    by: dict = {}
    for r in rows:
        if r["experiment"] == experiment:
            key = (r["model"], r["setting"])
            by.setdefault(key, {}).setdefault(r["method"], {})[int(r["seed"])] = float(r["value"])
    methods = sorted({m for d in by.values() for m in d}, key=lambda m: (m == "random", m))
    lines = [
        "| model | setting | " + " | ".join(methods) + " |",
        "|---" * (2 + len(methods)) + "|",
    ]
    for (model, setting), d in sorted(by.items()):
        rnd, cells = d.get("random", {}), []
        for m in methods:
            vals = d.get(m, {})
            if not vals:
                cells.append("")
                continue
            txt = f"{statistics.fmean(vals.values()):.3f}"
            diffs = [v - rnd[s] for s, v in sorted(vals.items()) if s in rnd]
            if m != "random" and len(diffs) > 1:
                st = R.paired(diffs)
                txt += (
                    f"; rnd {st['mean']:+.3f} ± {st['ci']:.3f} ({st['better']}/{st['worse']}, "
                    f"p={st['p_w']:.3f})"
                )
            cells.append(txt)
        lines.append(f"| {model} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pairs(csvs: list[str], path: str) -> None:
    """Bars: the paired difference to random (mean, 95% t interval) of every non-random
    criterion for each combination of kinds, one panel per model, from ``pairs.csv`` files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for c in csvs for r in csv.DictReader(open(c, newline=""))]
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        by: dict = {}
        for r in rows:
            if r["model"] == model:
                by.setdefault((r["setting"], r["method"]), {})[r["seed"]] = float(r["value"])
        methods = sorted({m for _, m in by if m != "random"})
        for k, m in enumerate(methods):
            means, cis = [], []
            for setting in P.SUBSETS:
                a, b = by.get((setting, m), {}), by.get((setting, "random"), {})
                st = R.paired([a[s] - b[s] for s in a if s in b])
                means.append(st["mean"])
                cis.append(st["ci"])
            x = [i + (k - (len(methods) - 1) / 2) * 0.8 / len(methods) for i in range(7)]
            ax.bar(x, means, 0.8 / len(methods), yerr=cis, capsize=2, label=m)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(P.SUBSETS)), list(P.SUBSETS), rotation=30)
        ax.set_title(f"{model}: kinds pruned at 20%, no fine-tune")
        ax.set_ylabel("loss minus random (nats/byte)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--models", nargs="+", default=["gpt2"], choices=list(M.MODELS))
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--cache", default=None)
    p.add_argument(
        "--cross-heads", default=None, help="cross: the criterion for the heads (default: kept)"
    )
    p.add_argument(
        "--score-range",
        type=int,
        nargs=2,
        default=[0, 128],
        metavar=("LO", "HI"),
        help="range, meancomp: token ids the noise is drawn from",
    )
    p.add_argument("--score-cache", default=None, help="range: where its scores are cached")
    p.add_argument(
        "--meancomp-settings",
        nargs="+",
        default=["mlp", "hidden+mlp", "all"],
        choices=list(P.SUBSETS),
        help="meancomp: what is pruned",
    )
    p.add_argument(
        "--fix-kinds", default="all", choices=list(P.SUBSETS), help="fixes: what is pruned"
    )
    args = p.parse_args(argv)
    for m in args.methods + ([args.cross_heads] if args.cross_heads else []):
        try:
            C.check_criterion(m)
        except ValueError as e:
            p.error(str(e))
    if not 0.0 < args.ratio < 1.0:
        p.error(f"--ratio must be in (0, 1), got {args.ratio}")
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    corpus, rows, t0 = M.Corpus(), [], time.perf_counter()
    path = os.path.join(args.out, f"{args.experiment}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()

        def writer(model, seed, experiment, setting, method, value):
            row = dict(
                model=model,
                seed=seed,
                experiment=experiment,
                setting=setting,
                method=method,
                ratio=args.ratio,
                value=value,
            )
            rows.append(row)
            w.writerow(row)
            f.flush()

        calibration = corpus.calibration()
        for seed in args.seeds:
            for name in args.models:
                model, scores = P.load(name, seed, corpus, args.cache)
                ctx = {
                    "heldout": corpus.heldout_windows(M.EVAL["windows"]),
                    "calibration": calibration,
                    "train": corpus.train,
                    "copies": lambda method, kinds, model=model, scores=scores, seed=seed: (
                        P.pruned_copies(model, method, kinds, args.ratio, seed, scores, calibration)
                    ),
                }
                RUNNERS[args.experiment](name, seed, model, scores, args, ctx, writer)
                print(f"{name} seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    with open(os.path.join(args.out, f"{args.experiment}.md"), "w") as f:
        f.write(
            f"{args.experiment} at {args.ratio:.0%}, mean over seeds {args.seeds}; `rnd`: "
            "paired difference to random (mean ± 95% t interval, seeds lower/higher, "
            "Wilcoxon p).\n\n" + table(rows, args.experiment)
        )
    with open(os.path.join(args.out, f"{args.experiment}.json"), "w") as f:
        json.dump(
            {
                "command": " ".join(["python", *sys.argv]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "seeds": args.seeds,
                "ratio": args.ratio,
                "methods": args.methods,
                "versions": L.versions(),
                "seconds": time.perf_counter() - t0,
            },
            f,
            indent=1,
        )
    if args.experiment == "pairs":
        png = os.path.join(args.out, "pairs.png")
        plot_pairs([path], png)
    print(f"{len(rows)} rows in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
