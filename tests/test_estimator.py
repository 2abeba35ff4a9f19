"""Every backend of pairwise_mi / quantize against the independent NumPy reference
(tests/npref.py), on random data and on the edge cases of docs/method.md and issue 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import causalprune_fast as cf
from causalprune_fast.estimator.tiling import workspace_bytes

import npref

TOL = 1e-5  # bits
STATUS = cf.available_backends()


def _device(backend: str) -> str:
    return (
        "cuda"
        if backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
        else "cpu"
    )


def _backend_param(name: str):
    marks = [] if STATUS[name].available else [pytest.mark.skip(reason=STATUS[name].detail)]
    return pytest.param(name, marks=marks, id=name)


BACKENDS = [_backend_param(b) for b in ("reference", "cpu", "triton", "cuda")]


def _codes(gen: torch.Generator, samples: int, cols: int, bins: int) -> torch.Tensor:
    return torch.randint(0, bins, (samples, cols), generator=gen).to(torch.uint8)


def _mi(backend, x, y, bins, **kw):
    dev = _device(backend)
    out = cf.pairwise_mi(x.to(dev), y.to(dev), bins, backend=backend, **kw)
    if isinstance(out, cf.PairwiseMISums):
        return out.per_x.cpu().numpy(), out.per_y.cpu().numpy()
    assert out.dtype == torch.float32 and out.shape == (x.shape[1], y.shape[1])
    return out.cpu().double().numpy()


CASES = [
    # samples, cx, cy, bins_x, bins_y
    (1000, 7, 5, 16, 16),
    (500, 3, 4, 2, 2),
    (300, 2, 3, 256, 256),
    (400, 5, 6, 3, 17),
    (257, 13, 70, 16, 16),  # odd sizes that do not fill a tile
    (333, 67, 3, 2, 5),
    (1, 3, 4, 16, 16),  # one sample
    (70001, 3, 2, 4, 4),  # counts past 2**16
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("samples,cx,cy,bx,by", CASES)
def test_random_codes_match_numpy(backend, samples, cx, cy, bx, by):
    gen = torch.Generator().manual_seed(samples * 31 + cx)
    x, y = _codes(gen, samples, cx, bx), _codes(gen, samples, cy, by)
    y[:, 0] = (x[:, 0].long() % by).to(torch.uint8)  # one dependent pair
    ref = npref.pairwise_mi(x.numpy(), y.numpy(), bx, by)
    np.testing.assert_allclose(_mi(backend, x, y, (bx, by)), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sums_equal_matrix_sums(backend):
    gen = torch.Generator().manual_seed(1)
    x, y = _codes(gen, 2000, 9, 8), _codes(gen, 2000, 11, 8)
    y[:, :3] = x[:, :3]
    ref = npref.pairwise_mi(x.numpy(), y.numpy(), 8, 8)
    per_x, per_y = _mi(backend, x, y, 8, reduce="sum")
    np.testing.assert_allclose(per_x, ref.sum(axis=1), atol=TOL * 11, rtol=0)
    np.testing.assert_allclose(per_y, ref.sum(axis=0), atol=TOL * 9, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_miller_madow(backend):
    gen = torch.Generator().manual_seed(2)
    x, y = _codes(gen, 300, 4, 6), _codes(gen, 300, 5, 6)
    x[:, 1] = 2  # constant column: correction and clamp both matter
    ref = npref.pairwise_mi(x.numpy(), y.numpy(), 6, 6, miller_madow=True)
    got = _mi(backend, x, y, 6, correction="miller-madow")
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_columns_carry_no_information(backend):
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(3))
    x[:, 2] = 0.25  # constant float column: binned to 0
    y = torch.stack([x[:, 0], x[:, 2], torch.full((500,), -1.0)], dim=1)
    got = _mi(backend, x, y, 16)
    assert np.all(got[2, :] == 0) and np.all(got[:, 1] == 0) and np.all(got[:, 2] == 0)
    assert got[0, 0] > 3.0  # the same variable binned the same way


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_columns_give_their_entropy(backend):
    gen = torch.Generator().manual_seed(4)
    x = _codes(gen, 4096, 3, 16)
    x[:, 1] = torch.randint(0, 3, (4096,), generator=gen).to(torch.uint8)  # skewed, few bins
    got = _mi(backend, x, x.clone(), 16)
    for c in range(3):
        assert abs(got[c, c] - npref.entropy_bits(x[:, c].numpy(), 16)) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_independent_columns_near_zero(backend):
    gen = torch.Generator().manual_seed(5)
    x, y = _codes(gen, 60000, 3, 4), _codes(gen, 60000, 3, 4)
    got = _mi(backend, x, y, 4)
    bias = 9 / (2 * 60000 * np.log(2))  # (B-1)^2 / (2 S ln 2)
    assert got.max() < 10 * bias


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    gen = torch.Generator().manual_seed(6)
    big_x, big_y = _codes(gen, 800, 12, 16), _codes(gen, 11, 900, 16).t()
    x = big_x[::2, 1::3]  # strided rows and columns
    y = big_y[:400:, ::2]  # transposed storage
    assert not x.is_contiguous() and not y.is_contiguous()
    ref = npref.pairwise_mi(x.numpy(), y.numpy(), 16, 16)
    np.testing.assert_allclose(_mi(backend, x, y, 16), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups,cx,cy", [(2, 6, 4), (8, 72, 8), (5, 5, 10)])
def test_groups_measure_only_pairs_within_a_group(backend, groups, cx, cy):
    gen = torch.Generator().manual_seed(7)
    x, y = _codes(gen, 600, cx, 4), _codes(gen, 600, cy, 4)
    y[:, 0] = x[:, -1]  # dependent, but in different groups: must stay 0
    ref = npref.pairwise_mi(x.numpy(), y.numpy(), 4, 4, groups=groups)
    got = _mi(backend, x, y, 4, groups=groups)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    assert got[-1, 0] == 0
    per_x, per_y = _mi(backend, x, y, 4, groups=groups, reduce="sum")
    np.testing.assert_allclose(per_x, ref.sum(axis=1), atol=TOL * cy, rtol=0)
    np.testing.assert_allclose(per_y, ref.sum(axis=0), atol=TOL * cx, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_code_dtypes(backend):
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(0, 5, (300, 3), generator=gen)  # int64 codes
    y = torch.randint(0, 5, (300, 2), generator=gen).to(torch.int16)
    ref = npref.pairwise_mi(x.numpy(), y.numpy(), 5, 5)
    np.testing.assert_allclose(_mi(backend, x, y, 5), ref, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [2, 7, 16, 256])
def test_quantize_matches_numpy(backend, dtype, bins):
    gen = torch.Generator().manual_seed(bins)
    x = (torch.rand(301, 6, generator=gen, dtype=torch.float64) * 6 - 3).to(dtype)
    x[:, 1] = 1.5  # constant column
    x[:7, 2] = torch.tensor([-3.0, 3.0, 0.0, -1.0, 1.0, 2.0, -2.0], dtype=dtype)  # bin edges
    ref_codes, ref_ranges = npref.quantize(x.double().numpy(), bins)
    codes, ranges = cf.quantize(x.to(_device(backend)), bins, backend=backend)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert codes.stride() == (1, x.shape[0])  # column-major, as the pairwise kernels read it
    np.testing.assert_array_equal(codes.cpu().numpy(), ref_codes)
    np.testing.assert_array_equal(ranges.cpu().numpy(), ref_ranges)


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantize_given_ranges_clamp_into_edge_bins(backend):
    x = torch.tensor([[-5.0, 0.0], [0.0, 0.0], [0.49, 1.0], [0.5, 2.0], [9.0, 3.0]])
    ranges = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    ref_codes, _ = npref.quantize(x.numpy(), 4, ranges.numpy())
    codes, used = cf.quantize(x.to(_device(backend)), 4, ranges, backend=backend)
    np.testing.assert_array_equal(codes.cpu().numpy(), ref_codes)
    assert codes[:, 0].tolist() == [0, 0, 1, 2, 3]
    assert codes[:, 1].tolist() == [0, 0, 0, 3, 3]  # degenerate range: above hi -> last bin
    np.testing.assert_array_equal(used.cpu().numpy(), ranges.numpy())


DBL_MAX = float(np.finfo(np.float64).max)
# (lo, hi) of ranges whose width overflows a double, or nearly does (issue 11, 3.7).
WIDE_RANGES = [
    (-1.7e308, 1.7e308),
    (-DBL_MAX, DBL_MAX),
    (-DBL_MAX / 2, DBL_MAX / 2),  # hi - lo == DBL_MAX exactly: the ordinary path
    (-(2.0**1023), 2.0**1023),  # hi - lo == 2^1024 rounds to inf
    (-8.98846567431158e307, 8.98846567431158e307 * (1 + 2**-52)),  # just above DBL_MAX / 2
    (0.0, DBL_MAX),
    (-DBL_MAX, -DBL_MAX / 4),
]


# The Triton interpreter's NumPy warns where hi - lo overflows (as intended).
OVERFLOW_WARNINGS = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)


@OVERFLOW_WARNINGS
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lo, hi", WIDE_RANGES)
@pytest.mark.parametrize("bins", [2, 16, 256])
def test_quantize_ranges_near_overflow(backend, lo, hi, bins):
    # Values at every bin centre, at lo and hi, and just inside the edges; lo (1 - f) + hi f
    # cannot overflow. Bin k of [lo, hi] is [lo + k w, lo + (k + 1) w), w = (hi - lo) / bins.
    f = np.concatenate([(np.arange(bins) + 0.5) / bins, [0.0, 1.0, 1e-9, 1 - 1e-9]])
    want = np.concatenate([np.arange(bins), [0, bins - 1, 0, bins - 1]]).astype(np.uint8)
    x = torch.tensor(lo * (1 - f) + hi * f, dtype=torch.float64)[:, None]
    ranges = torch.tensor([[lo, hi]], dtype=torch.float64)
    for given in (None, ranges):
        codes, used = cf.quantize(x.to(_device(backend)), bins, given, backend=backend)
        np.testing.assert_array_equal(used.cpu().numpy(), ranges.numpy())
        np.testing.assert_array_equal(codes[:, 0].cpu().numpy(), want)
    np.testing.assert_array_equal(npref.quantize(x.numpy(), bins)[0][:, 0], want)


@OVERFLOW_WARNINGS
@pytest.mark.parametrize("backend", BACKENDS)
def test_mi_of_values_spanning_the_doubles(backend):
    # Finite values of +-1.7e308: hi - lo overflows, yet the column splits into two bins and
    # carries 1 bit about itself (issue 11, 3.7: every code was 0 and the MI 0 bits).
    x = torch.tensor([-1.7e308, 1.7e308] * 50, dtype=torch.float64)[:, None]
    y = torch.cat([x, -x, torch.full_like(x, 1.5)], dim=1)
    for bins in (2, 16):
        got = _mi(backend, x, y, bins)
        np.testing.assert_allclose(got, [[1.0, 1.0, 0.0]], rtol=0, atol=TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_inputs_are_binned_like_quantize(backend):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1000, 4, generator=gen)
    y = torch.tanh(x[:, :3] * 2) + 0.1 * torch.randn(1000, 3, generator=gen)
    xc, _ = npref.quantize(x.numpy(), 16)
    yc, _ = npref.quantize(y.numpy(), 12)
    ref = npref.pairwise_mi(xc, yc, 16, 12)
    np.testing.assert_allclose(_mi(backend, x, y, (16, 12)), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_budget_chunks_give_the_same_result(backend):
    gen = torch.Generator().manual_seed(10)
    x, y = _codes(gen, 512, 10, 8), _codes(gen, 512, 6, 8)
    whole = _mi(backend, x, y, 8)
    budget = workspace_bytes(backend, 512, 8, 8, 3, 2)  # forces several column chunks
    small = _mi(backend, x, y, 8, memory_budget=budget)
    np.testing.assert_allclose(small, whole, atol=1e-7, rtol=0)
    per_x, per_y = _mi(backend, x, y, 8, reduce="sum", memory_budget=budget)
    np.testing.assert_allclose(per_x, whole.sum(axis=1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(per_y, whole.sum(axis=0), atol=1e-5, rtol=0)
