"""The C++ CPU kernels behind backend="cpu": both counting algorithms (AND + popcount bit
masks and private histograms) on both instruction-set paths (AVX-512 and portable), against
the NumPy reference, including the tile edges and counts past 2**16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from causalprune_fast.estimator import extension

import npref

_C = extension._C
ops = torch.ops.causalprune_fast

ISAS = ["native", "portable"]
ALGORITHMS = ["bitmask", "count"]


@pytest.fixture(params=[(a, i) for a in ALGORITHMS for i in ISAS], ids=lambda p: f"{p[0]}-{p[1]}")
def cpu_path(request):
    algorithm, isa = request.param
    _C.cpu_set_algorithm(algorithm)
    _C.cpu_force_portable(isa == "portable")
    yield request.param
    _C.cpu_set_algorithm("auto")
    _C.cpu_force_portable(False)


@pytest.mark.parametrize(
    "samples,cx,cy,bx,by,groups",
    [
        (513, 9, 14, 16, 16, 1),  # samples one past a 512-bit block
        (511, 65, 3, 2, 2, 1),  # 64 columns per bitmask tile at 2 bins, plus one
        (100, 5, 4, 16, 3, 1),
        (64, 4, 4, 256, 2, 1),
        (2, 3, 3, 256, 256, 1),  # histogram far larger than the samples
        (70000, 2, 3, 16, 16, 1),  # counts past 2**16
        (300, 18, 2, 4, 4, 2),
        (200, 27, 3, 8, 8, 3),  # depthwise-like: 9 inputs, 1 output per group
    ],
)
def test_cpu_paths_match_numpy(cpu_path, samples, cx, cy, bx, by, groups):
    gen = torch.Generator().manual_seed(samples + cx)
    x = torch.randint(0, bx, (samples, cx), generator=gen).to(torch.uint8)
    y = torch.randint(0, by, (samples, cy), generator=gen).to(torch.uint8)
    y[:, 0] = (x[:, 0].long() * by // bx).to(torch.uint8)
    ref = npref.pairwise_mi(x.numpy(), y.numpy(), bx, by, groups=groups)
    got = ops.pairwise_mi(x, y, bx, by, groups).double().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    per_x, per_y = ops.pairwise_mi_sums(x, y, bx, by, groups, True)
    ref_mm = npref.pairwise_mi(x.numpy(), y.numpy(), bx, by, groups=groups, miller_madow=True)
    np.testing.assert_allclose(per_x.numpy(), ref_mm.sum(axis=1), atol=1e-5 * cy, rtol=0)
    np.testing.assert_allclose(per_y.numpy(), ref_mm.sum(axis=0), atol=1e-5 * cx, rtol=0)


def test_results_do_not_depend_on_thread_count():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 16, (3000, 40), generator=gen).to(torch.uint8)
    y = torch.randint(0, 16, (3000, 30), generator=gen).to(torch.uint8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.pairwise_mi_sums(x, y, 16, 16)
        torch.set_num_threads(max(2, threads))
        many = ops.pairwise_mi_sums(x, y, 16, 16)
    finally:
        torch.set_num_threads(threads)
    # Each thread's partial sums differ, but every pair's MI is the same and each sum adds the
    # same values; only the grouping of the additions may differ.
    torch.testing.assert_close(one[0], many[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one[1], many[1], rtol=1e-12, atol=1e-12)


def test_knobs_report_and_reject():
    assert _C.cpu_isa() in ("avx512_vpopcntdq", "portable")
    assert _C.cpu_get_algorithm() == "auto"
    with pytest.raises(ValueError, match="algorithm must be"):
        _C.cpu_set_algorithm("fast")
