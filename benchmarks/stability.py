"""Ranking stability across seeds: per-layer Spearman rank correlation of the channel scores
of two runs that differ only in the seed (noise and subsampling), for each direction.

    python benchmarks/stability.py --model resnet18 --input-shape 3,224,224 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import causalprune_fast as cf
from causalprune_fast.cli.model_specs import build_model
from causalprune_fast.results.causal_scores import spearman
from causalprune_fast.scoring.plan import DEFAULT_SAMPLES


def stability(model: torch.nn.Module, shape, seeds=(0, 1), **kwargs) -> dict:
    runs, seconds = [], []
    for seed in seeds:
        t0 = time.perf_counter()
        runs.append(cf.score_model(model, shape, seed=seed, progress=False, **kwargs))
        seconds.append(time.perf_counter() - t0)
    table = {}
    for direction in ("in", "out", "both"):
        a, b = (r.with_direction(direction) for r in runs)
        table[direction] = {name: spearman(a[name], b[name]) for name in a}
    outputs = [n for n, s in runs[0].layers.items() if s.model_output]
    prunable = {d: min(v for n, v in t.items() if n not in outputs) for d, t in table.items()}
    return {
        "spearman": table,
        "min_over_prunable_layers": prunable,
        "model_output_layers": outputs,
        "samples_per_layer": {n: s.samples for n, s in runs[0].layers.items()},
        "seconds_per_run": seconds,
        "config": runs[0].config,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="torchvision:resnet18")
    p.add_argument("--input-shape", default="3,224,224")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(args.model)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    out = stability(model, shape, samples=args.samples)
    out["model"] = args.model
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    for d, v in out["min_over_prunable_layers"].items():
        print(f"direction={d}: min per-layer Spearman over prunable layers {v:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
