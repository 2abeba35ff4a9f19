"""The approximate mode ``pairs_per_unit=K`` against exact scores (issue 20): rank agreement,
time, and pruning quality on the language-model study's trained models.

It reuses the language-model study (issue 21: ``lm_models.py`` for the byte-level models
trained on Python's standard library, ``lm_criteria.py`` for pruning through ``cf.prune``'s
plan), from this folder or ``--study DIR``. For each seed and model: the model is trained, its
local-mode scores computed exactly and with each ``K``; per layer the Spearman correlation of
the approximate against the exact incoming sums, outgoing sums and channel scores, how often
the exact sum lies within 2 standard errors of the estimate, the scoring time, and the held-out
loss (nats per byte, no fine-tuning) after pruning at each ratio with the exact scores, the
approximate ones (each under every ``--directions``: ``in``, ``cf.prune``'s default before
``auto``, and ``out``, which ``auto`` is on these models and which the language-model study found
better for heads and MLP neurons) and random
channels. Paired over seeds: approximate minus exact loss, mean and standard error.

    python benchmarks/quality/pairs_per_unit.py --out DIR [--seeds 0 1 2] [--ks 8 32]
    python benchmarks/quality/pairs_per_unit.py --smoke --out DIR
    python benchmarks/quality/pairs_per_unit.py --merge DIR1 DIR2 --out DIR  # runs of other seeds
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _study(path: str):
    """The study's modules (lm_models, lm_criteria) from ``path``."""
    if not os.path.isfile(os.path.join(path, "lm_models.py")):
        raise SystemExit(
            f"no language-model study (lm_models.py) in {path!r}: it comes with issue 21 "
            "(benchmarks/quality/lm_study.py); give --study DIR"
        )
    sys.path.insert(0, path)
    import lm_criteria
    import lm_models

    return lm_models, lm_criteria


def _mean_se(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0] if values else math.nan), math.nan
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def run(args) -> dict:
    import causalprune_fast as cf
    from causalprune_fast.results.causal_scores import spearman

    M, C = _study(args.study)
    torch.set_num_threads(args.threads)
    corpus = M.Corpus(max_files=60 if args.smoke else None)
    size = "tiny" if args.smoke else "small"
    train = dict(M.TRAIN, steps=20) if args.smoke else M.TRAIN
    heldout = corpus.heldout_windows(8 if args.smoke else M.EVAL["windows"])
    ids = torch.zeros(1, M.CONTEXT, dtype=torch.long)
    rows = []
    for seed in args.seeds:
        for name in args.models:
            model = M.build_model(name, seed, size)
            t0 = time.perf_counter()
            M.fit(model, corpus, train, seed)
            train_s = time.perf_counter() - t0
            base_loss = M.evaluate(model, heldout)
            kw = C.score_kwargs(ids, "local", None, seed)
            scores, seconds = {}, {}
            for k in [None, *args.ks]:
                t0 = time.perf_counter()
                scores[k] = cf.score_model(model, pairs_per_unit=k, **kw)
                seconds[k] = time.perf_counter() - t0
            exact = scores[None]
            for k in args.ks:
                approx = scores[k]
                rho_in = [spearman(approx.layers[n].incoming, s.incoming)
                          for n, s in exact.layers.items()]  # fmt: skip
                rho_out = [spearman(approx.layers[n].outgoing, s.outgoing)
                           for n, s in exact.layers.items()]  # fmt: skip
                rho_ch = [spearman(approx[n], exact[n]) for n in exact.layers]
                covered = [_covered(approx.layers[n], s) for n, s in exact.layers.items()]
                pairs = sum(
                    s.pairs or s.input_units * len(s.incoming) for s in approx.layers.values()
                )
                all_pairs = sum(s.input_units * len(s.incoming) for s in exact.layers.values())
                rows.append({
                    "seed": seed, "model": name, "k": k, "what": "agreement",
                    "spearman_incoming_median": statistics.median(rho_in),
                    "spearman_incoming_min": min(rho_in),
                    "spearman_outgoing_median": statistics.median(rho_out),
                    "spearman_outgoing_min": min(rho_out),
                    "spearman_channel_median": statistics.median(rho_ch),
                    "spearman_channel_min": min(rho_ch),
                    "within_2se_incoming": sum(c[0] for c in covered) / sum(c[1] for c in covered),
                    "within_2se_outgoing": sum(c[2] for c in covered) / sum(c[3] for c in covered),
                    "pairs_fraction": pairs / all_pairs,
                    "seconds": seconds[k], "exact_seconds": seconds[None],
                })  # fmt: skip
            criteria = [("random", 0, None)] + [
                (f"{label} ({d})", k, d)
                for d in args.directions
                for label, k in [("exact", None), *[(f"K={k}", k) for k in args.ks]]
            ]
            for ratio in args.ratios:
                for label, k, direction in criteria:
                    pruned = copy.deepcopy(model)
                    if k == 0:
                        imp = C.importance_for("random", pruned, ids, seed, {}, None, None)
                    else:
                        imp = C.causal_importance(
                            pruned, ids, C.parse_spec(direction), "local", seed, scores[k]
                        )
                    C.prune_lm(pruned, imp, ratio, ids)
                    rows.append({
                        "seed": seed, "model": name, "what": "loss", "ratio": ratio,
                        "criterion": label, "loss": M.evaluate(pruned, heldout),
                        "unpruned_loss": base_loss, "train_seconds": train_s,
                    })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def _covered(approx, exact) -> tuple[int, int, int, int]:
    """Units whose exact incoming / outgoing sum lies within 2 standard errors of the
    estimate, and the units with a standard error (sides measured whole are left out)."""
    out = []
    for est, se, true in (
        (approx.incoming, approx.incoming_se, exact.incoming),
        (approx.outgoing, approx.outgoing_se, exact.outgoing),
    ):
        if se is None or not bool((se > 0).any()):
            out += [0, 0]
            continue
        sampled = se > 0
        hit = (est - true).abs() <= 2 * se
        out += [int((hit & sampled).sum()), int(sampled.sum())]
    return tuple(out)


def summarize(result: dict, args) -> str:
    rows = result["rows"]
    lines = [
        "| model | K | pairs measured | Spearman incoming (median / min) | Spearman outgoing "
        "(median / min) | Spearman channel scores, in (median / min) | exact within 2 SE "
        "(incoming / outgoing) | time approx / exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        for k in args.ks:
            a = [r for r in rows if r["what"] == "agreement" and r["model"] == name and r["k"] == k]
            if not a:
                continue
            med = statistics.fmean
            lines.append(
                f"| {name} | {k} | {med(r['pairs_fraction'] for r in a):.1%} | "
                f"{med(r['spearman_incoming_median'] for r in a):.3f} / "
                f"{min(r['spearman_incoming_min'] for r in a):.3f} | "
                f"{med(r['spearman_outgoing_median'] for r in a):.3f} / "
                f"{min(r['spearman_outgoing_min'] for r in a):.3f} | "
                f"{med(r['spearman_channel_median'] for r in a):.3f} / "
                f"{min(r['spearman_channel_min'] for r in a):.3f} | "
                f"{med(r['within_2se_incoming'] for r in a):.0%} / "
                f"{med(r['within_2se_outgoing'] for r in a):.0%} | "
                f"{med(r['seconds'] for r in a):.1f} s / "
                f"{med(r['exact_seconds'] for r in a):.1f} s |"
            )
    lines += ["", "| model | ratio | criterion | held-out loss (mean over seeds) | minus exact "
              "(paired mean +- SE) |", "|---|---|---|---|---|"]  # fmt: skip
    losses = [r for r in rows if r["what"] == "loss"]
    for name in args.models:
        for ratio in args.ratios:
            here = [r for r in losses if r["model"] == name and r["ratio"] == ratio]
            for d in args.directions:
                exact = {r["seed"]: r["loss"] for r in here if r["criterion"] == f"exact ({d})"}
                labels = [f"{x} ({d})" for x in ["exact", *[f"K={k}" for k in args.ks]]]
                for label in [*labels, "random"]:
                    mine = {r["seed"]: r["loss"] for r in here if r["criterion"] == label}
                    if not mine:
                        continue
                    diff = [mine[s] - exact[s] for s in mine if s in exact]
                    m, se = _mean_se(diff)
                    lines.append(
                        f"| {name} | {ratio:g} | {label} | "
                        f"{statistics.fmean(mine.values()):.4f} | "
                        + (
                            "-"
                            if label.startswith("exact")
                            else f"{m:+.4f} +- {se:.4f} vs exact ({d})"
                        )
                        + " |"
                    )
    return "\n".join(lines)


def _revision() -> str:
    try:
        out = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def merge(dirs: list[str]) -> dict:
    """The rows of several runs' results.json (other seeds, the same settings) as one result;
    a (seed, model) found in two runs is an error."""
    rows, configs, seen = [], [], {}
    for d in dirs:
        with open(os.path.join(d, "results.json"), encoding="utf-8") as f:
            result = json.load(f)
        for key in {(r["seed"], r["model"]) for r in result["rows"]}:
            if key in seen:
                raise SystemExit(f"seed {key[0]} of {key[1]} is in both {seen[key]} and {d}")
            seen[key] = d
        rows += result["rows"]
        configs.append(result["config"])
    return {"rows": rows, "config": configs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (results.json, tables.md)")
    p.add_argument("--study", default=HERE, help="folder of the language-model study")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=["llama", "gpt2"])
    p.add_argument("--ks", type=int, nargs="+", default=[8, 32])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--directions", nargs="+", default=["in", "out"], help="pruning directions")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny models, 20 training steps")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="only merge these runs' results")
    args = p.parse_args(argv)
    if args.merge:
        result = merge(args.merge)
        args.seeds = sorted({r["seed"] for r in result["rows"]})
        os.makedirs(args.out, exist_ok=True)
    else:
        result = None
    if args.smoke:
        args.seeds, args.ks, args.ratios = args.seeds[:1], [4], [0.3]
    if result is None:
        result = _run(args, argv)
    table = summarize(result, args)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "tables.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    return 0


def _run(args, argv) -> dict:
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    result = run(args)
    result["config"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {args.threads}",
        "command": " ".join(["benchmarks/quality/pairs_per_unit.py", *(argv or sys.argv[1:])]),
        "seconds": time.perf_counter() - t0,
        "study": os.path.abspath(args.study),
        "revision": _revision(),
    }
    return result


if __name__ == "__main__":
    raise SystemExit(main())
