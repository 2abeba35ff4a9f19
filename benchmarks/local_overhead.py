"""Local mode's whole-model time against its MI time, before and after a change, side by side.

    python benchmarks/local_overhead.py --before /tmp/before --json local_overhead.json

(``--after``: another checkout for the code after the change; default this one.)

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("resnet18", "resnet50", "vit_b_16")
STAGES = ("forward", "capture", "binning", "mi")


def _model(name: str):
    """torchvision's model ``name`` (timm's where torchvision has none), random init."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if name in torchvision.models.list_models():
        return torchvision.models.get_model(name, weights=None)
    import timm

    return timm.create_model(name, pretrained=False)


def measure(name: str) -> dict:
    """score_model on ``name`` at the defaults: the time of each stage, in seconds."""
    import warnings

    import torch

    import causalprune_fast as cf

    model = _model(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cf.score_model(model, (3, 224, 224), progress=False)
    stages = {k: sum(s.timings.get(k, 0.0) for s in scores.layers.values()) for k in STAGES}
    calibration = scores.timings.get("forward", 0.0)  # the calibration pass, hooks included
    stages["forward"] += calibration
    total = scores.timings["total"]
    samples = [s.samples for s in scores.layers.values()]
    return {
        "model": name,
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
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker)))
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
    for name in args.models.split(","):
        for label, tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--json", "-"]
            print(f"+ {label}: {name}", flush=True)
            out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            run = json.loads(out.stdout.strip().splitlines()[-1])
            now = datetime.datetime.now(datetime.timezone.utc)
            run.update(tree=label, commit=_commit(tree), date=now.strftime("%Y-%m-%d %H:%M UTC"))
            run["load"] = os.getloadavg()[0]  # other jobs on the machine, after the run
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            with open(args.json, "w") as f:  # after every run: a partial run still counts
                json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
