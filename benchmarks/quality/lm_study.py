"""Pruning quality on language models (issue 21): causal scores against L2 magnitude, random and
data-using references, on small byte-level models trained here on Python's standard library.

For each seed and model (``lm_models.py``: a Llama-style model with grouped-query attention and
a GPT-2, trained from random init for a few hundred steps), each testbed (``lm_testbeds.py``:
the trained model, a random function-preserving rescaling of it, and a copy with a few outlier
hidden dims compensated by small weights), each ratio and each criterion (``lm_criteria.py``),
the model is pruned through the plan ``cf.prune`` uses and its held-out loss (nats per byte) is
measured without fine-tuning and after a short fine-tune (the same batches for every criterion).
The causal scores of an unpruned model do not depend on the ratio or the direction: they are
computed once per (seed, model, testbed, variant) and cached; the first seed checks that the
cache prunes exactly as ``cf.prune`` itself does, and that the study's magnitude criterion
equals Torch-Pruning's on Llama.

    python benchmarks/quality/lm_study.py --out DIR                  # the full study
    python benchmarks/quality/lm_study.py --smoke --out DIR          # seconds, for CI
    python benchmarks/quality/lm_study.py --merge DIR1 DIR2 --out DIR

Writes ``runs.csv`` (one row per seed x model x testbed x criterion x ratio), ``config.json``
(settings, versions, machine, command, times, per-seed details), ``summary.csv``, ``tables.md``
and ``loss_vs_ratio.png`` / ``loss_vs_ratio_finetuned.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch_pruning as tp
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lm_criteria as C  # noqa: E402
import lm_models as M  # noqa: E402
import lm_report as R  # noqa: E402
import lm_testbeds as T  # noqa: E402

import causalprune_fast as cf  # noqa: E402
from causalprune_fast.results import CausalScores  # noqa: E402

DEFAULT_METHODS = [
    "causal-auto-local",
    "causal-in-local",
    "causal-in/out/out-local",
    "l2",
    "random",
    "taylor",
    "wanda-sp",
]
SMOKE_METHODS = [
    "causal-auto-local",
    "causal-in/out/out-local",
    "l2",
    "random",
    "taylor",
    "wanda-sp",
]
# The criterion the package's defaults select (cf.prune with no direction/mode/correction),
# checked against cf.prune itself on the first seed; on these models "auto" is "out" for every
# kind of channel, also checked there.
PACKAGE_DEFAULT = "causal-auto-local"


def example_ids() -> torch.Tensor:
    return torch.zeros(1, M.CONTEXT, dtype=torch.long)


def settings_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trained_model(name, seed, corpus, train_cfg, cache, size) -> tuple[torch.nn.Module, dict]:
    """The model trained with ``seed`` (from the cache when there)."""
    model = M.build_model(name, seed, size)
    key = settings_hash([name, size, seed, train_cfg, corpus.info["sha256"], M.CONTEXT])
    path = os.path.join(cache, f"{name}-s{seed}-{key}.pt") if cache else None
    if path and os.path.exists(path):
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        return model.eval(), {**saved["info"], "from_cache": path}
    t0 = time.perf_counter()
    losses = M.fit(model, corpus, train_cfg, seed)
    info = {"train_seconds": time.perf_counter() - t0, "train_loss_last20": sum(losses[-20:]) / 20}
    if path:
        os.makedirs(cache, exist_ok=True)
        torch.save({"state": model.state_dict(), "info": info}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return model, info


def causal_scores(model, tag, variant, seed, cache) -> tuple[CausalScores, float]:
    """Scores of ``model`` for ``variant`` (from the cache when there) and the seconds taken."""
    mode, correction = C.VARIANTS[variant]
    kwargs = C.score_kwargs(C_ids := example_ids(), mode, correction, seed)
    key = settings_hash(
        [
            tag,
            variant,
            {k: v for k, v in kwargs.items() if k != "example_input"},
            list(C_ids.shape),
            cf.__version__,
        ]
    )
    path = os.path.join(cache, f"scores-{tag}-{variant}-{key}.safetensors") if cache else None
    if path and os.path.exists(path):
        return CausalScores.load(path), 0.0
    t0 = time.perf_counter()
    scores = cf.score_model(model, **kwargs)
    seconds = time.perf_counter() - t0
    if path:
        scores.save(path)
    return scores, seconds


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_plan(model, scores, seed, ratio) -> dict:
    """The cached default criterion prunes exactly as ``cf.prune`` with the package defaults
    (which scores the model itself), and the study's magnitude equals Torch-Pruning's on Llama."""
    ids = example_ids()
    spec, variant = C.causal_method(PACKAGE_DEFAULT)
    a = copy.deepcopy(model)
    C.prune_lm(a, C.causal_importance(a, ids, spec, variant, seed, scores[variant]), ratio, ids)
    b = copy.deepcopy(model)
    cf.prune(b, ratio, example_input=ids, input_range=C.INPUT_RANGE, seed=seed, progress=False)
    out = {"cached_default_equals_cf_prune": same_state(a, b)}
    if not out["cached_default_equals_cf_prune"]:
        raise RuntimeError("the cached default criterion prunes differently from cf.prune")
    c = copy.deepcopy(model)
    C.prune_lm(
        c,
        C.causal_importance(c, ids, C.parse_spec("out"), variant, seed, scores[variant]),
        ratio,
        ids,
    )
    out["default_equals_out_everywhere"] = same_state(a, c)
    if not hasattr(model, "transformer"):  # Llama: Linear layers only, Torch-Pruning's own
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        C.prune_lm(a, C.Magnitude(), ratio, ids)
        imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
        C.prune_lm(b, imp, ratio, ids)
        out["magnitude_equals_torch_pruning"] = same_state(a, b)
        if not out["magnitude_equals_torch_pruning"]:
            raise RuntimeError("the study's magnitude differs from Torch-Pruning's on Llama")
    return out


def run_seed(name, seed, args, corpus, cfgs, writer) -> dict:
    """Every testbed, ratio and criterion of one (model, seed)."""
    heldout = corpus.heldout_windows(M.EVAL["windows"])
    calibration = corpus.calibration()
    ids = example_ids()
    trained, info = trained_model(name, seed, corpus, cfgs["train"], args.cache, args.size)
    info = {"model": name, "seed": seed, **info, "testbeds": {}}
    variants = sorted({C.causal_method(m)[1] for m in args.methods if m.startswith("causal-")})
    for testbed in args.testbeds:
        base = copy.deepcopy(trained)
        tinfo: dict = {}
        if testbed != "trained":
            tinfo = T.rescale(base, seed, testbed)
            tinfo["max_rel_logit_error"] = T.check_same_function(trained, base, heldout[:8])
        dense = M.evaluate(base, heldout)
        dense_ft = float("nan")
        if cfgs["finetune"]:
            tuned = copy.deepcopy(base)
            M.fit(tuned, corpus, cfgs["finetune"], 1000 + seed)
            dense_ft = M.evaluate(tuned, heldout)
        key = settings_hash([corpus.info["sha256"], cfgs["train"], args.size])
        tag = f"{name}-s{seed}-{testbed}-{key}"
        scores, seconds = {}, {}
        for v in variants:
            scores[v], seconds[v] = causal_scores(base, tag, v, seed, args.cache)
        tinfo.update(dense_loss=dense, dense_loss_ft=dense_ft, score_seconds=seconds)
        if args.check and testbed == "trained" and seed == args.seeds[0]:
            if C.causal_method(PACKAGE_DEFAULT)[1] not in scores:
                v = C.causal_method(PACKAGE_DEFAULT)[1]
                scores[v], _ = causal_scores(base, tag, v, seed, args.cache)
            tinfo["checks"] = check_plan(base, scores, seed, 0.3)
        took = ", ".join(f"{v} {s:.0f} s" for v, s in seconds.items())
        print(
            f"{name} seed {seed} {testbed}: dense {dense:.4f} (fine-tuned {dense_ft:.4f}), "
            f"scores {took}",
            flush=True,
        )
        for ratio in args.ratios:
            t_ratio = time.perf_counter()
            for method in args.methods:
                model = copy.deepcopy(base)
                t0 = time.perf_counter()
                imp = C.importance_for(method, model, ids, seed, scores, calibration, M.lm_loss)
                C.prune_lm(model, imp, ratio, ids)
                model.zero_grad(set_to_none=True)
                prune_s = time.perf_counter() - t0
                loss = M.evaluate(model, heldout)
                loss_ft = float("nan")
                if cfgs["finetune"] and ratio in args.ft_ratios and method in args.ft_methods:
                    M.fit(model, corpus, cfgs["finetune"], 1000 + seed)  # same batches for all
                    loss_ft = M.evaluate(model, heldout)
                writer(
                    dict(
                        seed=seed,
                        model=name,
                        testbed=testbed,
                        method=method,
                        ratio=ratio,
                        loss=loss,
                        loss_ft=loss_ft,
                        dense_loss=dense,
                        dense_loss_ft=dense_ft,
                        params=M.param_count(model),
                        dense_params=M.param_count(base),
                        prune_seconds=round(prune_s, 3),
                    )
                )
            print(f"  ratio {ratio:.1f}: {time.perf_counter() - t_ratio:.0f} s", flush=True)
        info["testbeds"][testbed] = tinfo
    return info


def versions() -> dict:
    import numpy as np

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "causalprune_fast": cf.__version__,
    }


def revision() -> str | None:
    """The git commit of the code that runs (a frozen snapshot: its COMMIT file), if known."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        path = os.path.join(root, "COMMIT")
        return open(path).read().strip() if os.path.exists(path) else None


def merge(dirs: list[str], out: str, models: list[str] | None = None) -> None:
    """One run's files in ``out`` from runs with equal settings (ratios, training, fine-tune,
    corpus, versions) that do not overlap in (model, seed, testbed): e.g. the trained-model runs
    and the testbed runs of several seeds, whose criteria may differ (the union is reported).
    ``models``: keep only these models' rows (runs made on another revision for one model)."""
    configs, rows = [], []
    for d in dirs:
        with open(os.path.join(d, "config.json")) as f:
            configs.append(json.load(f))
        rows += [
            r
            for r in R.read_runs(os.path.join(d, "runs.csv"))
            if models is None or r["model"] in models
        ]
    same = ("ratios", "train", "finetune", "corpus", "versions")
    for d, c in zip(dirs[1:], configs[1:], strict=True):
        diff = [k for k in same if c[k] != configs[0][k]]
        if diff:
            raise SystemExit(f"cannot merge {d}: its settings differ in {diff}")
    cells = [(r["model"], r["seed"], r["testbed"], r["method"], r["ratio"]) for r in rows]
    if len(set(cells)) != len(cells):
        raise SystemExit("the runs overlap in (model, seed, testbed, criterion, ratio)")

    def union(key):
        return list(dict.fromkeys(x for c in configs for x in c[key]))

    kept = union("models") if models is None else [m for m in union("models") if m in models]
    config = {
        **configs[0],
        "command": [c["command"] for c in configs]
        + [
            f"python {os.path.relpath(sys.argv[0])} --merge {' '.join(dirs)}"
            + (f" --models {' '.join(models)}" if models else "")
            + f" --out {out}"
        ],
        "date": [c["date"] for c in configs],
        "seeds": sorted({r["seed"] for r in rows}),
        "models": kept,
        "testbeds": union("testbeds"),
        "methods": union("methods"),
        "ft_methods": union("ft_methods"),
        "per_seed": sorted(
            (i for c in configs for i in c["per_seed"] if i["model"] in kept),
            key=lambda i: (i["seed"], i["model"]),
        ),
        "total_seconds": [c["total_seconds"] for c in configs],
        "machine": [c["machine"] for c in configs],
        "revision": [c.get("revision") for c in configs],
        "merged_from": dirs,
    }
    rows.sort(key=lambda r: (r["model"], r["seed"]))
    os.makedirs(out, exist_ok=True)
    R.write_runs(os.path.join(out, "runs.csv"), rows)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    R.write_reports(out, rows, config)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--models", nargs="+", default=list(M.DEFAULT_MODELS))
    p.add_argument("--testbeds", nargs="+", default=None, help=f"default: {list(T.TESTBEDS)}")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--methods", nargs="+", default=None, help="criteria (default: the finalists)")
    p.add_argument("--train-steps", type=int, default=M.TRAIN["steps"])
    p.add_argument("--ft-steps", type=int, default=M.FINETUNE["steps"])
    p.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned protocol")
    p.add_argument(
        "--ft-ratios",
        type=float,
        nargs="*",
        default=None,
        help="fine-tune at these ratios only (default: every ratio)",
    )
    p.add_argument(
        "--ft-methods", nargs="*", default=None, help="fine-tune these criteria only (default: all)"
    )
    p.add_argument("--cache", default=None, help="folder for trained models and scores")
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip the first seed's check of the cache against cf.prune",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    p.add_argument("--size", choices=sorted(M.SIZES), default="small", help="model size")
    p.add_argument("--smoke", action="store_true", help="1 seed, tiny models, corpus, training")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="merge runs that do not overlap (with --models: only these models' rows)",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the reports of --out")
    args = p.parse_args(argv)
    if args.merge or args.report_only:
        return p, args
    if args.smoke:
        args.seeds, args.ratios = args.seeds[:1], [0.3]
        args.testbeds = args.testbeds or ["trained", "rescaled"]
        args.train_steps, args.ft_steps, args.size = 30, 3, "tiny"
        args.methods = args.methods or SMOKE_METHODS
    args.methods = args.methods or DEFAULT_METHODS
    args.testbeds = args.testbeds or list(T.TESTBEDS)
    args.ft_ratios = args.ratios if args.ft_ratios is None else args.ft_ratios
    args.ft_methods = args.methods if args.ft_methods is None else args.ft_methods
    if set(args.ft_methods) - set(args.methods):
        p.error(f"--ft-methods {sorted(set(args.ft_methods) - set(args.methods))} not in --methods")
    for m in args.methods:
        try:
            C.check_criterion(m)
        except ValueError as e:
            p.error(str(e))
    for m in args.models:
        if m not in M.MODELS:
            p.error(f"unknown model {m!r}; known models: {list(M.MODELS)}")
    for t in args.testbeds:
        if t not in T.TESTBEDS:
            p.error(f"unknown testbed {t!r}; known testbeds: {list(T.TESTBEDS)}")
    if not all(0.0 < r < 1.0 for r in args.ratios):
        p.error(f"ratios must be in (0, 1), got {args.ratios}")
    return p, args


def main(argv=None) -> int:
    p, args = parse(argv)
    if args.merge:
        merge(args.merge, args.out, None if set(args.models) == set(M.MODELS) else args.models)
        return 0
    if args.report_only:
        with open(os.path.join(args.out, "config.json")) as f:
            config = json.load(f)
        R.write_reports(args.out, R.read_runs(os.path.join(args.out, "runs.csv")), config)
        return 0
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    corpus = M.Corpus(max_files=40 if args.smoke else None)
    cfgs = {
        "train": {**M.TRAIN, "steps": args.train_steps},
        "finetune": None if args.no_finetune else {**M.FINETUNE, "steps": args.ft_steps},
    }
    for name in args.models:  # a model the plan cannot prune: named, with the reason
        try:
            C.attention_pruning(M.build_model(name, 0, args.size))
        except ValueError as e:
            p.error(f"model {name!r} cannot be pruned by cf.prune's plan: {e}")
    t_start = time.perf_counter()
    with R.RunsWriter(os.path.join(args.out, "runs.csv"), R.FIELDS) as writer:
        rows = writer.rows
        per_seed = [
            run_seed(name, seed, args, corpus, cfgs, writer)
            for seed in args.seeds
            for name in args.models
        ]
    config = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "revision": revision(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": versions(),
        "seeds": args.seeds,
        "models": args.models,
        "testbeds": args.testbeds,
        "ratios": args.ratios,
        "methods": args.methods,
        "size": args.size,
        "model_sizes": M.SIZES,
        "corpus": corpus.info,
        "context": M.CONTEXT,
        "eval": M.EVAL,
        "calibration": M.CALIBRATION,
        "train": cfgs["train"],
        "finetune": cfgs["finetune"],
        "ft_ratios": args.ft_ratios,
        "ft_methods": args.ft_methods,
        "causal": {
            v: {
                **C.score_kwargs(None, *C.VARIANTS[v], "per seed"),
                "example_input": f"zeros(1, {M.CONTEXT}) long",
            }
            for v in C.VARIANTS
        },
        "pruner": "attention_pruning(model).pruner(model, ids, ratio, pruner_class="
        "tp.pruner.BasePruner, global_pruning=False, ignored_layers=[lm_head]); "
        "step(); plan.sync (as cf.prune)",
        "testbed_settings": {
            "rescale_range": T.RESCALE_RANGE,
            "outlier_range": T.OUTLIER_RANGE,
            "outlier_dims": T.OUTLIER_DIMS,
        },
        "per_seed": per_seed,
        "total_seconds": time.perf_counter() - t_start,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    R.write_reports(args.out, rows, config)
    print(f"{len(rows)} runs in {config['total_seconds']:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
