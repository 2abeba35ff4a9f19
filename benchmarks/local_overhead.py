"""Local mode's whole-model time against its MI time, before and after a change, side by side.

    python benchmarks/local_overhead.py --before /tmp/before --json local_overhead.json

(``--after``: another checkout for the code after the change; default this one;
``--parallel``: a model's before and after at the same time, under the same load on a shared
machine; ``--examples`` / ``--samples-per-layer``: other settings than score_model's defaults,
where the defaults take too long.)

For each model (random init, 3 x 224 x 224, score_model's defaults), runs score_model once
with the package of the ``--before`` checkout (a tree with its extension built) and once with
this checkout, one after the other in this one run, each in its own process, and records
what ``CausalScores`` says: total, forward (the calibration pass, recorded on its own too,
plus each layer's own noise rows and layer run), capture, binning, MI, and the rest. Only
ratios measured in one run compare.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("resnet18", "resnet50", "vit_b_16")
STAGES = ("forward", "capture", "binning", "mi")
DATE = "%Y-%m-%d %H:%M UTC"


def _model(name: str):
    """torchvision's model ``name`` (timm's where torchvision has none), random init."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if name in torchvision.models.list_models():
        return torchvision.models.get_model(name, weights=None)
    import timm

    return timm.create_model(name, pretrained=False)


def measure(name: str, settings: dict | None = None) -> dict:
    """score_model on ``name`` at the defaults, or with ``settings`` (e.g. ``examples``,
    ``samples_per_layer``) where given: the time of each stage, in seconds."""
    import warnings

    import torch

    import causalprune_fast as cf

    model = _model(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cf.score_model(model, (3, 224, 224), progress=False, **(settings or {}))
    stages = {k: sum(s.timings.get(k, 0.0) for s in scores.layers.values()) for k in STAGES}
    calibration = scores.timings.get("forward", 0.0)  # the calibration pass, hooks included
    stages["forward"] += calibration
    total = scores.timings["total"]
    samples = [s.samples for s in scores.layers.values()]
    return {
        "model": name,
        "settings": settings or {},
        "package": cf.__file__,
        "total_s": total,
        "stages_s": stages,
        "calibration_s": calibration,
        "threads": torch.get_num_threads(),
        "other_s": total - sum(stages.values()),
        "layers": len(scores.layers),
        "samples_min": min(samples),
        "samples_max": max(samples),
        "paths": sorted({str(getattr(s, "path", None)) for s in scores.layers.values()}),
    }


def _commit(tree: str) -> str:
    out = subprocess.run(
        ["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--before", help="checkout of the code before the change (extension built)")
    p.add_argument("--after", default=ROOT, help="checkout of the code after it (default: this)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--append", action="store_true", help="add to the runs already in --json")
    p.add_argument("--examples", type=int, help="score_model's examples (default: its own)")
    p.add_argument(
        "--samples-per-layer", type=int, help="score_model's samples_per_layer (default: its own)"
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run a model's before and after at the same time (the same load on a shared "
        "machine) rather than one after the other",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    settings = {
        k: v
        for k, v in (("examples", args.examples), ("samples_per_layer", args.samples_per_layer))
        if v is not None
    }
    if args.worker:
        print(json.dumps(measure(args.worker, settings)))
        return 0
    import torch

    before = [("before", os.path.abspath(args.before))] if args.before else []
    trees = [*before, ("after", os.path.abspath(args.after))]
    command = " ".join(["python benchmarks/local_overhead.py", *(argv or sys.argv[1:])])
    result = {"cpu": _cpu(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    result.update(commands=[], runs=[])
    if args.append and os.path.exists(args.json):
        with open(args.json) as f:
            result = json.load(f)
    result["commands"].append(command)
    extra = [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    for name in args.models.split(","):
        groups = [trees] if args.parallel else [[t] for t in trees]
        for group in groups:
            procs = []
            for label, tree in group:
                env = dict(os.environ, PYTHONPATH=tree)
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, *extra]
                cmd += ["--json", "-"]
                print(f"+ {label}: {name}", flush=True)
                out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # not pipes
                proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=err, text=True)
                procs.append((label, tree, proc, out, err))
            for label, tree, proc, out, err in procs:
                proc.wait()
                out.seek(0)
                err.seek(0)
                if proc.returncode != 0:
                    print(err.read()[-3000:], file=sys.stderr)
                    return 1
                run = json.loads(out.read().strip().splitlines()[-1])
                now = datetime.datetime.now(datetime.timezone.utc)
                run.update(tree=label, commit=_commit(tree), date=now.strftime(DATE))
                run["parallel"] = len(group) > 1
                run["load"] = os.getloadavg()[0]  # other jobs on the machine, after the run
                result["runs"].append(run)
                print(json.dumps(run), flush=True)
                with open(args.json, "w") as f:  # after every run: a partial run still counts
                    json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
