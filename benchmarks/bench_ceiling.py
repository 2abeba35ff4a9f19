"""The machine's ceiling for the chosen formulation, and each kernel's fraction of it.

CPU: the AND + popcount micro-kernel on L1-resident masks with every thread (bit pairs per
second; a pair-sample at B bins costs (B - 1)^2 bit pairs), against the bitmask algorithm
forced (``auto`` may pick counting instead, e.g. on the portable path at 16 bins).
GPU: int8 tensor-core throughput (torch._int_mm on large matrices) and device memory
bandwidth (a device-to-device copy); the fused kernels cost B_pad^2 int8 multiply-adds per
pair-sample (bins padded to the tile).

    pytest benchmarks/bench_ceiling.py --benchmark-json=ceiling.json
"""

from __future__ import annotations

import pytest
import torch
from conftest import SMOKE

import causalprune_fast as cf
from causalprune_fast.estimator import extension as _extension

S, C, B = (16384, 256, 16) if not SMOKE else (1024, 16, 16)
GROUP = "ceilings"


def test_cpu_popcount_ceiling_and_fraction(benchmark):
    c = _extension._C
    if c is None:
        pytest.skip("C++ extension not built")
    seconds = 0.2 if SMOKE else 2.0
    info = {}
    for isa in ("native", "portable"):
        c.cpu_force_portable(isa == "portable")
        c.cpu_set_algorithm("bitmask")  # the formulation the ceiling measures
        try:
            ceiling = c.cpu_popcount_ceiling(seconds)
            gen = torch.Generator().manual_seed(0)
            x = torch.randint(0, B, (C, S), generator=gen, dtype=torch.uint8).t()
            y = torch.randint(0, B, (C, S), generator=gen, dtype=torch.uint8).t()
            cf.pairwise_mi(x, y, B, reduce="sum", backend="cpu")  # warm up
            import time

            t0 = time.perf_counter()
            cf.pairwise_mi(x, y, B, reduce="sum", backend="cpu")
            rate = S * C * C / (time.perf_counter() - t0)
        finally:
            c.cpu_force_portable(False)
            c.cpu_set_algorithm("auto")
        info[isa] = {
            "isa": c.cpu_isa() if isa == "native" else "portable",
            "ceiling_bit_pairs_per_s": ceiling,
            "kernel_pair_samples_per_s": rate,
            "kernel_bit_pairs_per_s": rate * (B - 1) ** 2,
            "fraction_of_ceiling": rate * (B - 1) ** 2 / ceiling,
            "ceiling_pair_samples_per_s_at_B": ceiling / (B - 1) ** 2,
        }
    benchmark.extra_info.update(kind="cpu", bins=B, samples=S, pairs=C * C, paths=info)
    benchmark.pedantic(lambda: None, rounds=1)


def test_gpu_ceilings_and_fractions(benchmark):
    if not torch.cuda.is_available():
        pytest.skip("no GPU: the GPU ceilings are measured on a GPU only")
    dev = "cuda"
    n = 8192
    a = torch.randint(-8, 8, (n, n), dtype=torch.int8, device=dev)
    b = torch.randint(-8, 8, (n, n), dtype=torch.int8, device=dev)
    torch._int_mm(a, b)
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    for _ in range(10):
        torch._int_mm(a, b)
    ev1.record()
    torch.cuda.synchronize()
    int8_ops = 10 * 2 * n**3 / (ev0.elapsed_time(ev1) / 1e3)
    big = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    out = torch.empty_like(big)
    out.copy_(big)
    ev0.record()
    for _ in range(10):
        out.copy_(big)
    ev1.record()
    torch.cuda.synchronize()
    bandwidth = 10 * 2 * big.numel() / (ev0.elapsed_time(ev1) / 1e3)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, B, (C, S), generator=gen, dtype=torch.uint8, device=dev).t()
    y = torch.randint(0, B, (C, S), generator=gen, dtype=torch.uint8, device=dev).t()
    info = {"int8_ops_per_s": int8_ops, "copy_bytes_per_s": bandwidth, "kernels": {}}
    for backend in ("triton", "cuda"):
        if not cf.available_backends()[backend].available:
            continue
        fn = lambda b=backend: cf.pairwise_mi(x, y, B, reduce="sum", backend=b)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        ev0.record()
        for _ in range(5):
            fn()
        ev1.record()
        torch.cuda.synchronize()
        rate = 5 * S * C * C / (ev0.elapsed_time(ev1) / 1e3)
        info["kernels"][backend] = {
            "pair_samples_per_s": rate,
            "fraction_of_int8_peak": rate * 2 * 16 * 16 / int8_ops,
        }
    benchmark.extra_info.update(kind="gpu", bins=B, samples=S, pairs=C * C, **info)
    benchmark.pedantic(lambda: None, rounds=1)
