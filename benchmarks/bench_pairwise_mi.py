"""pairwise_mi per backend beside the anchors, on the same codes: S = 16384 samples,
256 x 256 pairs, 16 bins (issue 2). Anchors too slow for all pairs run on a subset and are
compared by pair-samples per second.

    pytest benchmarks/bench_pairwise_mi.py --benchmark-json=out.json
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anchors import deep_ei_module, numpy_sklearn_loop, torch_bincount, torch_onehot_matmul
from conftest import size

import causalprune_fast as cf
from causalprune_fast.estimator import extension as _extension

S = size(16384, 512)
C = size(256, 16)
B = 16
GROUP = f"pairwise_mi S={S} {C}x{C} B={B}"
STATUS = cf.available_backends()
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


def _data(device: str = "cpu"):
    """Float activations like a layer's (uniform input, ReLU'd output) and their codes."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(S, C, generator=gen) * 2 - 1
    y = torch.relu(x @ (torch.randn(C, C, generator=gen) / C**0.5))
    x, y = x.to(device), y.to(device)
    xc, _ = cf.quantize(x, B)
    yc, _ = cf.quantize(y, B)
    return x, y, xc, yc


def _skip_unless(backend: str):
    if not STATUS[backend].available:
        pytest.skip(STATUS[backend].detail)


@pytest.mark.benchmark(group=GROUP)
def test_cpu_cpp_from_floats(measure):
    """The headline CPU figure: binning + joint counts + MI epilogue, all pairs."""
    _skip_unless("cpu")
    x, y, _, _ = _data()
    measure(lambda: cf.pairwise_mi(x, y, B, reduce="sum", backend="cpu"), S * C * C)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("isa", ["native", "portable"])
def test_cpu_cpp_codes(measure, isa):
    _skip_unless("cpu")
    _, _, xc, yc = _data()
    c = _extension.extension()
    c.cpu_force_portable(isa == "portable")
    try:
        measure(lambda: cf.pairwise_mi(xc, yc, B, reduce="sum", backend="cpu"), S * C * C)
    finally:
        c.cpu_force_portable(False)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backend_codes(measure, backend):
    _skip_unless(backend)
    if not GPU:
        pytest.skip("GPU backends are timed on a GPU only (the interpreter is not a timing)")
    _, _, xc, yc = _data("cuda")
    measure(lambda: cf.pairwise_mi(xc, yc, B, reduce="sum", backend=backend), S * C * C)


@pytest.mark.benchmark(group=GROUP)
def test_reference_float64(measure):
    n = size(64, 8)
    _, _, xc, yc = _data(DEVICE)
    xs, ys = xc[:, :n], yc[:, :n]
    measure(lambda: cf.pairwise_mi(xs, ys, B, backend="reference"), S * n * n, rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_anchor_torch_onehot_matmul(measure):
    """Counts as one one-hot matrix product (float32 on CPU, bf16 on GPU) + unfused MI."""
    n = C if GPU else size(128, 8)
    _, _, xc, yc = _data(DEVICE)
    xs, ys = xc[:, :n], yc[:, :n]
    dtype = torch.bfloat16 if GPU else torch.float32
    want = cf.pairwise_mi(xs.cpu(), ys.cpu(), B, backend="cpu").double()
    got = measure(lambda: torch_onehot_matmul(xs, ys, B, dtype), S * n * n, rounds=1)
    if not GPU:  # bf16 counts round past 256; the float32 product is exact here
        torch.testing.assert_close(got.cpu().float(), want.float(), atol=1e-5, rtol=0)


@pytest.mark.benchmark(group=GROUP)
def test_anchor_torch_bincount(measure):
    n = size(32, 4)
    _, _, xc, yc = _data(DEVICE)
    xs, ys = xc[:, :n], yc[:, :n]
    measure(lambda: torch_bincount(xs, ys, B), S * n * n, rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_anchor_numpy_sklearn_loop(measure):
    n = size(8, 2)
    _, _, xc, yc = _data()
    xs, ys = xc[:, :n].numpy(), yc[:, :n].numpy()
    got = measure(lambda: numpy_sklearn_loop(xs, ys, B), S * n * n, rounds=1)
    want = cf.pairwise_mi(xc[:, :n], yc[:, :n], B).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.benchmark(group=GROUP)
def test_anchor_deep_ei_parts(measure):
    """deep-ei's ei_parts on an equivalent Linear layer: it draws its own uniform noise, runs
    the layer and bins with its own ranges, so only its speed is compared, not its values."""
    deep_ei = deep_ei_module()
    if deep_ei is None:
        pytest.skip("deep-ei is not installed (pip install deep-ei)")
    n = size(64, 4)
    net = torch.nn.Sequential(torch.nn.Linear(n, n), torch.nn.Sigmoid())
    topology = deep_ei.topology_of(net, input=torch.zeros((1, n)))
    measure(
        lambda: deep_ei.ei_parts(net[0], topology, samples=S, in_bins=B, out_bins=B),
        S * n * n,
        rounds=1,
    )
