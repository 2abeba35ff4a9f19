"""Shared set-up of the benchmark suites.

Every benchmark records the work it did as ``pair_samples`` (pairs x samples) and its rate
``pair_samples_per_s`` in pytest-benchmark's ``extra_info``, so that anchors measured on a
subset of the pairs compare fairly. ``CAUSALPRUNE_BENCH_SMOKE=1`` shrinks every case to a tiny
one (CI runs that with --benchmark-disable to keep the suites from rotting).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SMOKE = os.environ.get("CAUSALPRUNE_BENCH_SMOKE") == "1"


def size(full: int, smoke: int) -> int:
    return smoke if SMOKE else full


@pytest.fixture
def measure(benchmark):
    """``measure(fn, pair_samples, rounds=3)``: time fn, record the pair-sample rate."""

    def run(fn, pair_samples: int, rounds: int = 3):
        if torch.cuda.is_available():
            inner = fn

            def fn():
                out = inner()
                torch.cuda.synchronize()
                return out

        result = benchmark.pedantic(fn, rounds=1 if SMOKE else rounds, warmup_rounds=1)
        benchmark.extra_info["pair_samples"] = pair_samples
        if benchmark.stats is not None:
            benchmark.extra_info["pair_samples_per_s"] = pair_samples / benchmark.stats["min"]
        return result

    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    """Versions, GPU and code revision beside pytest-benchmark's CPU description."""
    import subprocess

    import triton

    import causalprune_fast as cf

    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["causalprune_fast"] = cf.__version__
    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["backends"] = {k: v.detail for k, v in cf.available_backends().items()}
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    machine_info["git_revision"] = rev
