"""Worker for tests/test_distributed.py, run under torchrun (gloo, CPU):

    torchrun --nproc_per_node 2 tests/distributed/worker.py MODEL OUT [--budget N] [--fail-rank R]

Scores MODEL ("cnn" or "block") with score_model(distributed=True); rank 0 writes OUT.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from distributed.models import SETTINGS, build  # noqa: E402

import causalprune_fast as cf  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--budget", type=int)
    p.add_argument("--fail-rank", type=int)
    args = p.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    model, shape = build(args.model)
    if args.fail_rank is not None and dist.get_rank() == args.fail_rank:

        def boom(module, inputs, output):
            raise RuntimeError("injected failure")

        model.get_submodule(SETTINGS[args.model]["fail_layer"]).register_forward_hook(boom)
    try:
        scores = cf.score_model(
            model, shape, distributed=True, memory_budget=args.budget, **SETTINGS[args.model]["kw"]
        )
        if dist.get_rank() == 0:
            scores.save(args.out)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
