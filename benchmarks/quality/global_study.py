"""Global pruning at matched parameter counts: bias correction and normalisation across groups
(issue 21 item 3).

Per-layer pruning (``cf.prune``'s default) never compares the scores of two layers. Global
pruning ranks every channel of the network in one list, so it needs scores that are comparable
across layers and kinds of channel: a channel's causal score is a sum of MI over its partner
units, and the plug-in estimate carries a bias of about ``(B - 1)^2 / (2 S ln 2)`` bits per pair
(docs/method.md 5.3), so wide layers collect more bias than narrow ones. Two remedies within the
method are measured here against per-layer pruning, magnitude, random and data-using
references: Miller-Madow (``correction="miller-madow"``, the ``-mm`` score variant, which
removes the first-order bias per pair) and Torch-Pruning's per-group normalizers (``mean``,
``max``, ``sum``, ``standarization``), and, between per-layer and global, Torch-Pruning's
isomorphic scope (one ranking per set of groups of the same structure, e.g. all MLP groups).

A criterion is ``<criterion>@<scope>[:<normalizer>]``: ``<criterion>`` one of the family's
(``lm_criteria`` for the language models, ``cnn_testbeds`` for the no-BN digits CNN),
``<scope>`` ``layer``, ``global`` or (language models) ``isomorphic``, ``<normalizer>``
applied to every group's importance before ranking (none by default; the criterion's own
normalizer is switched off). Global rankings remove different parameter counts at one channel
ratio (a hidden dim of a language model costs many more parameters than an MLP neuron), so
every criterion is compared at the same fraction of the model's parameters removed (``--targets``):
its channel ratio is found by bisection (``--tol``; a row whose criterion cannot reach the
target says so in ``removed``). Protocols as in ``lm_study.py`` / ``cnn_testbeds.py``: no
fine-tuning and the same short fine-tune for every criterion.

    python benchmarks/quality/global_study.py --family lm --cache /tmp/lmcache2 --out DIR \\
        [--models llama gpt2] [--seeds 0 1 ...] [--testbeds trained ...] [--methods ...]
    python benchmarks/quality/global_study.py --family cnn --out DIR
    python benchmarks/quality/global_study.py --merge DIR1 DIR2 ... --out DIR
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time

import torch
import torch_pruning as tp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import global_families as G  # noqa: E402
import global_report as GR  # noqa: E402
import lm_report as R  # noqa: E402

NORMALIZERS = ("mean", "max", "sum", "standarization")
SEARCH = dict(hi=0.95, steps=12)


def parse_method(name: str, family) -> tuple[str, str, str | None]:
    """``(criterion, scope, normalizer)`` of ``<criterion>@<scope>[:<normalizer>]``."""
    crit, _, rest = name.partition("@")
    scope, _, norm = rest.partition(":")
    if not rest or scope not in family.scopes or (norm and norm not in NORMALIZERS):
        raise ValueError(
            f"not a criterion of this study: {name!r}; the form is <criterion>@<scope>"
            f"[:<normalizer>] with <scope> one of {list(family.scopes)} and <normalizer> one "
            f"of {list(NORMALIZERS)}"
        )
    family.check(crit)
    return crit, scope, norm or None


class Normalised:
    """A Torch-Pruning importance whose group scores are normalised by Torch-Pruning's own
    normalizer ``normalizer`` (the inner importance's normalizer, if any, switched off)."""

    def __init__(self, inner, normalizer: str | None):
        if hasattr(inner, "normalizer"):
            inner.normalizer = None
        self.inner, self.normalizer = inner, normalizer
        self._tp = tp.importance.GroupMagnitudeImportance()

    def __call__(self, group):
        imp = self.inner(group)
        if imp is None or self.normalizer is None or not bool(imp.abs().sum() > 0):
            return imp  # an all-zero group stays zero (every normalizer would divide by 0)
        return self._tp._normalize(imp, self.normalizer)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def matched(family, base, method, seed, scores, target, tol):
    """The model pruned by ``method`` with the channel ratio (bisection) whose removed fraction
    of ``base``'s parameters is nearest ``target``: ``(model, ratio, removed, prunings)``."""
    crit, scope, norm = parse_method(method, family)
    dense = params(base)
    lo, hi, best = 0.0, SEARCH["hi"], None
    for step in range(1, SEARCH["steps"] + 1):
        ratio = (lo + hi) / 2
        model = copy.deepcopy(base)
        imp = Normalised(family.importance(crit, model, seed, scores), norm)
        family.prune(model, imp, ratio, scope)
        removed = 1 - params(model) / dense
        if best is None or abs(removed - target) < abs(best[2] - target):
            best = (model, ratio, removed, step)
        if abs(removed - target) <= tol:
            break
        lo, hi = (ratio, hi) if removed < target else (lo, ratio)
    model, ratio, removed, _ = best
    model.zero_grad(set_to_none=True)
    return model, ratio, removed, step


def run_seed(family, name, seed, args, writer) -> dict:
    info = {"model": name, "seed": seed, "testbeds": {}}
    crits = [parse_method(m, family)[0] for m in args.methods]
    for testbed, base, tinfo in family.bases(name, seed, args.testbeds):
        scores = family.scores(base, name, seed, testbed, crits)
        dense, dense_ft = family.evaluate(base), float("nan")
        if not args.no_finetune:
            dense_ft = family.evaluate(family.finetune(copy.deepcopy(base), seed))
        info["testbeds"][testbed] = {**tinfo, "dense": dense, "dense_ft": dense_ft}
        print(f"{name} seed {seed} {testbed}: dense {dense:.4f}", flush=True)
        for target in args.targets:
            t_target = time.perf_counter()
            for method in args.methods:
                t0 = time.perf_counter()
                model, ratio, removed, steps = matched(
                    family, base, method, seed, scores, target, args.tol
                )
                prune_s = time.perf_counter() - t0
                widths = family.widths(model)
                loss = family.evaluate(model)
                loss_ft = float("nan")
                if not args.no_finetune and method in args.ft_methods:
                    loss_ft = family.evaluate(family.finetune(model, seed))
                writer(
                    dict(
                        seed=seed,
                        model=name,
                        testbed=testbed,
                        method=method,
                        ratio=target,
                        loss=loss,
                        loss_ft=loss_ft,
                        dense_loss=dense,
                        dense_loss_ft=dense_ft,
                        params=params(model),
                        dense_params=params(base),
                        prune_seconds=round(prune_s, 3),
                        channel_ratio=round(ratio, 5),
                        removed=round(removed, 5),
                        searches=steps,
                        widths=json.dumps(widths),
                    )
                )
            print(f"  target {target:.2f}: {time.perf_counter() - t_target:.0f} s", flush=True)
    return info


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--family", choices=sorted(G.FAMILIES), default="lm")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--models", nargs="+", default=None, help="default: the family's models")
    p.add_argument("--testbeds", nargs="+", default=None, help="default: the family's testbeds")
    p.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=[0.2, 0.4],
        help="fractions of the parameters to remove",
    )
    p.add_argument("--tol", type=float, default=0.005, help="accepted |removed - target|")
    p.add_argument("--methods", nargs="+", default=None, help="default: the family's list")
    p.add_argument("--ft-methods", nargs="*", default=None, help="fine-tune only these")
    p.add_argument("--no-finetune", action="store_true")
    p.add_argument("--cache", default=None, help="lm: folder of trained models and scores")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="1 seed, tiny models, few criteria")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="merge runs over disjoint seeds")
    p.add_argument("--report-only", action="store_true", help="rebuild the reports of --out")
    args = p.parse_args(argv)
    if args.merge or args.report_only:
        return p, args, None
    family = G.FAMILIES[args.family](args)
    if args.smoke:
        args.seeds, args.targets = args.seeds[:1], [0.3]
        args.methods = args.methods or family.smoke_methods
        args.models = args.models or list(family.smoke_models)
    args.models = args.models or list(family.default_models)
    args.testbeds = args.testbeds or list(family.testbeds)
    args.methods = args.methods or family.default_methods
    args.ft_methods = args.methods if args.ft_methods is None else args.ft_methods
    for m in args.methods:
        try:
            parse_method(m, family)
        except ValueError as e:
            p.error(str(e))
    for name, known, what in (
        (args.models, family.models, "model"),
        (args.testbeds, family.testbeds, "testbed"),
        (args.ft_methods, args.methods, "--ft-methods entry (not in --methods)"),
    ):
        for x in name:
            if x not in known:
                p.error(f"unknown {what} {x!r}; known: {list(known)}")
    if not all(0.0 < t < 1.0 for t in args.targets):
        p.error(f"targets must be in (0, 1), got {args.targets}")
    for what, values in (("--seeds", args.seeds), ("--targets", args.targets)):
        if len(set(values)) != len(values):
            p.error(f"{what} repeats a value: {values}")
    try:
        family.check_models(args.models, args.methods)
    except ValueError as e:
        p.error(str(e))
    return p, args, family


def main(argv=None) -> int:
    p, args, family = parse(argv)
    if args.merge:
        GR.merge(args.merge, args.out)
        return 0
    if args.report_only:
        GR.write_reports(args.out)
        return 0
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    family.setup()
    t_start = time.perf_counter()
    with R.RunsWriter(os.path.join(args.out, "runs.csv"), GR.FIELDS) as writer:
        rows = writer.rows
        per_seed = [
            run_seed(family, name, seed, args, writer)
            for seed in args.seeds
            for name in args.models
        ]
    config = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "revision": G.revision(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "family": args.family,
        "higher_is_better": family.higher_is_better,
        "seeds": args.seeds,
        "models": args.models,
        "testbeds": args.testbeds,
        "targets": args.targets,
        "tol": args.tol,
        "search": SEARCH,
        "methods": args.methods,
        "ft_methods": [] if args.no_finetune else args.ft_methods,
        "settings": family.settings(),
        "per_seed": per_seed,
        "total_seconds": time.perf_counter() - t_start,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    GR.write_reports(args.out)
    print(f"{len(rows)} runs in {config['total_seconds']:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
