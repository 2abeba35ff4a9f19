"""Worker for tests/test_checkpoint_scoring.py, run under torchrun (gloo, CPU):

    torchrun --nproc_per_node 2 tests/distributed/checkpoint_worker.py CHECKPOINT OUT

Scores the checkpoint directory block by block with score_checkpoint(distributed=True), the
ranks sharing the blocks' measurements; rank 0 writes OUT.
"""

from __future__ import annotations

import datetime
import json
import sys

import torch
import torch.distributed as dist

from causalprune_fast.scoring.score_checkpoint import score_checkpoint


def main() -> int:
    path, out, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        scores = score_checkpoint(path, distributed=True, progress=False, **kw)
        if dist.get_rank() == 0:
            scores.save(out)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
