"""Scoring across processes on torch.distributed (``score_model(..., distributed=True)``).

Run one process per device under ``torchrun``; initialise the default process group first
(``torch.distributed.init_process_group("nccl")`` on GPUs, ``"gloo"`` on CPUs). Then:

- noise is defined per global example index (``noise.example_seed``), and so is each layer's
  subsample of positions, so the set of samples, and so the result, does not depend on the
  number of ranks: rank ``r`` of ``W`` draws examples ``[r N / W, (r + 1) N / W)``;
- every layer's bin ranges are agreed with an all-reduce of min and max before binning;
- joint counts are exact and combined across ranks: for a layer whose float64 count tensor fits
  ``memory_budget``, each rank counts its own samples and the integer counts are all-reduced
  (summed); otherwise the ranks all-gather the layer's uint8 codes and each scores its own
  slice of the pairs over all samples, and the per-channel sums are all-reduced;
- every rank returns the same :class:`~causalprune_fast.CausalScores`; write the file
  from rank 0 only (the CLI does); progress shows on rank 0 only;
- a rank that raises makes every rank raise :class:`DistributedScoringError` naming the failing
  rank and layer at the next agreement point, instead of hanging in a collective; a rank that
  dies is caught by the process group's timeout (``init_process_group(timeout=...)``) and by
  torchrun, which stops the other ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedScoringError(RuntimeError):
    """A rank failed; raised on every rank, naming the failing rank and where it failed."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the scoring job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @staticmethod
    def create(distributed: bool) -> DistContext:
        if not distributed:
            return DistContext()
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group: run "
                "under torchrun and call torch.distributed.init_process_group() first"
            )
        return DistContext(dist.get_rank(), dist.get_world_size())

    def examples(self, samples: int) -> tuple[int, int]:
        """This rank's contiguous range of global example indices."""
        return self.rank * samples // self.world, (self.rank + 1) * samples // self.world

    # ------------------------------------------------------------------ agreement
    def check(self, error: BaseException | None, where: str) -> None:
        """All ranks exchange their status; if any failed, every rank raises."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        status = None if error is None else f"{type(error).__name__}: {error}"
        statuses: list[str | None] = [None] * self.world
        dist.all_gather_object(statuses, status)
        failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
        if failed:
            r, s = failed[0]
            raise DistributedScoringError(f"rank {r} failed {where}: {s}") from error

    # ------------------------------------------------------------------ collectives
    def _comm_device(self, t: torch.Tensor) -> torch.device:
        return (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )

    def _all_reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        if not self.enabled:
            return t
        c = t.to(self._comm_device(t)).contiguous()
        dist.all_reduce(c, op=op)
        return c.to(t.device)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t, dist.ReduceOp.SUM)

    def ranges(self, r: torch.Tensor) -> torch.Tensor:
        """Global [min, max] per column from each rank's [C, 2] ranges."""
        if not self.enabled:
            return r
        both = self._all_reduce(torch.stack([-r[:, 0], r[:, 1]], dim=1), dist.ReduceOp.MAX)
        return torch.stack([-both[:, 0], both[:, 1]], dim=1)

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """All ranks' rows of ``t`` ([n_r, C]), concatenated in rank order."""
        if not self.enabled:
            return t
        dev = self._comm_device(t)
        n = torch.tensor([t.shape[0]], device=dev)
        counts = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(counts, n)
        counts = [int(c) for c in counts]
        padded = torch.zeros((max(counts), t.shape[1]), dtype=t.dtype, device=dev)
        padded[: t.shape[0]] = t.to(dev)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(t.device)

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share of ``n`` items."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world
