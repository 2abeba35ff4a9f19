"""Throughput of pairwise_mi as the work grows, per backend: sweeps over samples S
(1e3..1e6), pairs (1e2..1e7) and bins (4..64). Plot with `python benchmarks/plot_scaling.py`.

    pytest benchmarks/bench_scaling.py --benchmark-json=scaling.json
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SMOKE

import causalprune_fast as cf
from causalprune_fast.estimator import extension as _extension

STATUS = cf.available_backends()
GPU = torch.cuda.is_available()
BACKENDS = ["cpu", "cpu-portable"] + (["triton", "cuda"] if GPU else [])

S_SWEEP = [1_000, 10_000, 100_000, 1_000_000] if not SMOKE else [1_000]
PAIR_SWEEP = [100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000] if not SMOKE else [100]
BIN_SWEEP = [4, 8, 16, 32, 64] if not SMOKE else [4]


def _codes(samples: int, cols: int, bins: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(samples + cols + bins)
    return torch.randint(0, bins, (cols, samples), generator=gen, dtype=torch.uint8).t().to(device)


def _run(measure, backend: str, samples: int, cx: int, cy: int, bins: int):
    name = "cpu" if backend.startswith("cpu") else backend
    if not STATUS[name].available:
        pytest.skip(STATUS[name].detail)
    device = "cuda" if name in ("cuda", "triton") else "cpu"
    x, y = _codes(samples, cx, bins, device), _codes(samples, cy, bins, device)
    c = _extension._C
    if c is not None:
        c.cpu_force_portable(backend == "cpu-portable")
    try:
        rounds = 3 if samples * cx * cy < 2e10 else 1
        measure(
            lambda: cf.pairwise_mi(x, y, bins, reduce="sum", backend=name),
            samples * cx * cy,
            rounds=rounds,
        )
    finally:
        if c is not None:
            c.cpu_force_portable(False)


@pytest.mark.benchmark(group="scaling: samples (64 x 64 pairs, 16 bins)")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("samples", S_SWEEP)
def test_samples(measure, benchmark, backend, samples):
    benchmark.extra_info.update(sweep="samples", size=samples, backend=backend)
    _run(measure, backend, samples, 64, 64, 16)


@pytest.mark.benchmark(group="scaling: pairs (4096 samples, 16 bins)")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pairs", PAIR_SWEEP)
def test_pairs(measure, benchmark, backend, pairs):
    side = round(math.sqrt(pairs))
    benchmark.extra_info.update(sweep="pairs", size=side * side, backend=backend)
    _run(measure, backend, 4096, side, side, 16)


@pytest.mark.benchmark(group="scaling: bins (16384 samples, 128 x 128 pairs)")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bins", BIN_SWEEP)
def test_bins(measure, benchmark, backend, bins):
    benchmark.extra_info.update(sweep="bins", size=bins, backend=backend)
    _run(measure, backend, 16384, 128, 128, bins)
