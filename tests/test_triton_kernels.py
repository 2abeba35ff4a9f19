"""Tests of the Triton kernels (causalprune_fast.estimator.triton).

Without a GPU they run on CPU tensors under Triton's interpreter: TRITON_INTERPRET must be set
before the kernels are first imported, hence the environment set-up above the imports. With a
GPU they run on CUDA tensors. References: an independent float64 NumPy implementation
(``np.add.at`` joint counts per pair) and, where the extension is built, the C++ ops.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sm90_build import compile_check  # noqa: E402

from causalprune_fast.estimator import triton as tk  # noqa: E402

_OK, _WHY = tk.is_available()
pytestmark = pytest.mark.skipif(not _OK, reason=_WHY)
DEVICE = "cpu" if tk.INTERPRET else "cuda"
TOL = 1e-5  # bits (docs/method.md section 5)

try:
    from causalprune_fast.estimator import extension as _extension

    HAVE_CPP = _extension._C is not None
except ImportError:  # pragma: no cover
    HAVE_CPP = False
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")


# ----------------------------------------------------------------------------- references
def _xlogx_sum(n: np.ndarray) -> float:
    n = n[n > 0].astype(np.float64)
    return float((n * np.log(n)).sum())


def ref_mi_from_counts(n: np.ndarray, samples: int, miller_madow: bool) -> float:
    na, nb = n.sum(axis=1), n.sum(axis=0)
    mi = (_xlogx_sum(n) - _xlogx_sum(na) - _xlogx_sum(nb) + samples * math.log(samples)) / (
        samples * math.log(2)
    )
    if miller_madow:
        m = (na > 0).sum() + (nb > 0).sum() - (n > 0).sum() - 1
        mi += m / (2 * samples * math.log(2))
    return max(mi, 0.0)


def ref_pairwise_mi(x, y, bins_x, bins_y, groups=1, miller_madow=False) -> np.ndarray:
    """Float64 MI matrix from per-pair joint counts (np.add.at), 0 outside the groups."""
    x = x.cpu().numpy().astype(np.int64)
    y = y.cpu().numpy().astype(np.int64)
    samples, cx = x.shape
    cy = y.shape[1]
    cxg, cyg = cx // groups, cy // groups
    out = np.zeros((cx, cy))
    for i in range(cx):
        g = i // cxg
        for j in range(g * cyg, (g + 1) * cyg):
            n = np.zeros((bins_x, bins_y), dtype=np.int64)
            np.add.at(n, (x[:, i], y[:, j]), 1)
            out[i, j] = ref_mi_from_counts(n, samples, miller_madow)
    return out


def ref_codes(x: torch.Tensor, bins: int, ranges: torch.Tensor) -> np.ndarray:
    """quantize_value of mi_math.h, vectorised in float64 NumPy."""
    v = x.cpu().double().numpy()
    lo, hi = ranges.cpu().numpy()[:, 0], ranges.cpu().numpy()[:, 1]
    with np.errstate(all="ignore"):
        h = np.where(np.isfinite(hi - lo), 1.0, 0.5)  # halved where hi - lo overflows
        t = (v * h - lo * h) / (hi * h - lo * h) * bins
        code = np.where(t >= bins - 1, bins - 1, np.floor(np.where(t >= 1, t, 0)))
        code = np.where(hi > lo, code, np.where(v > hi, bins - 1, 0))
    return code.astype(np.uint8)


def codes(samples, cols, bins, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, bins, (samples, cols), generator=g, dtype=torch.uint8).to(device)


def check_mi(x, y, bins_x, bins_y, groups=1, miller_madow=False, config=None):
    """Triton matrix and sums against NumPy and (if built) the C++ op; returns the matrix."""
    got = tk.pairwise_mi(x, y, bins_x, bins_y, groups, miller_madow, config=config)
    assert got.shape == (x.shape[1], y.shape[1]) and got.dtype == torch.float32
    assert got.device == x.device
    want = ref_pairwise_mi(x, y, bins_x, bins_y, groups, miller_madow)
    np.testing.assert_allclose(got.cpu().double().numpy(), want, rtol=0, atol=TOL)
    if HAVE_CPP:
        cpp = torch.ops.causalprune_fast.pairwise_mi(
            x.cpu(), y.cpu(), bins_x, bins_y, groups, miller_madow
        )
        torch.testing.assert_close(got.cpu(), cpp, rtol=0, atol=TOL)
    per_x, per_y = tk.pairwise_mi_sums(x, y, bins_x, bins_y, groups, miller_madow, config=config)
    assert per_x.dtype == per_y.dtype == torch.float64
    np.testing.assert_allclose(per_x.cpu().numpy(), want.sum(axis=1), rtol=0, atol=TOL)
    np.testing.assert_allclose(per_y.cpu().numpy(), want.sum(axis=0), rtol=0, atol=TOL)
    return got


# ----------------------------------------------------------------------------- pairwise MI
@pytest.mark.parametrize(
    "samples, cx, cy, bins_x, bins_y",
    [
        (700, 13, 11, 16, 16),  # odd sizes: partial tiles on both sides
        (500, 20, 7, 2, 2),
        (333, 9, 10, 3, 3),  # non power of two bins
        (600, 5, 9, 16, 3),  # bins_x != bins_y, Cx != Cy
        (300, 2, 3, 256, 256),  # 2 x 2 sub-blocks per pair
        (300, 3, 5, 200, 7),  # split x bins only
        (257, 4, 2, 5, 130),  # split y bins only
    ],
)
def test_random(samples, cx, cy, bins_x, bins_y):
    x = codes(samples, cx, bins_x, seed=1)
    y = codes(samples, cy, bins_y, seed=2)
    check_mi(x, y, bins_x, bins_y)


def test_correlated_miller_madow():
    x = codes(900, 6, 8, seed=3)
    noise = codes(900, 6, 2, seed=4)
    y = ((x.long() + noise.long()) % 8).to(torch.uint8)  # strongly dependent pairs on the diagonal
    got = check_mi(x, y, 8, 8, miller_madow=True)
    assert got.diagonal().min() > 1.0
    check_mi(x, y, 8, 8, miller_madow=False)


@pytest.mark.parametrize(
    "config, bins_x, bins_y",
    [
        # The GPU defaults' sample step (64) and hand-made small tiles, under the interpreter.
        (dict(px=2, sbx=16, kx=1, py=4, sby=4, ky=1, block_s=64), 16, 4),
        (dict(px=1, sbx=16, kx=1, py=8, sby=2, ky=1, block_s=32), 11, 2),
        (dict(px=8, sbx=2, kx=2, py=2, sby=8, ky=1, block_s=32), 3, 8),  # x bins in 2 sub-blocks
        (dict(px=4, sbx=4, kx=1, py=1, sby=16, ky=2, block_s=64), 4, 20),  # y bins in 2
    ],
)
def test_tile_configs(config, bins_x, bins_y):
    cfg = tk.TileConfig(**config, num_warps=4, num_stages=1)
    x = codes(203, 5, bins_x, seed=5)
    y = codes(203, 7, bins_y, seed=6)
    check_mi(x, y, bins_x, bins_y, config=cfg)
    check_mi(x, y, bins_x, bins_y, miller_madow=True, config=cfg)


def test_single_sample():
    x = codes(1, 3, 16, seed=7)
    y = codes(1, 4, 5, seed=8)
    got = check_mi(x, y, 16, 5)
    assert torch.all(got == 0)
    got = check_mi(x, y, 16, 5, miller_madow=True)
    assert torch.all(got == 0)


def test_constant_column():
    x = codes(400, 4, 16, seed=9)
    x[:, 1] = 7
    y = codes(400, 3, 16, seed=10)
    y[:, 2] = 0
    got = check_mi(x, y, 16, 16)
    assert torch.all(got[1] == 0) and torch.all(got[:, 2] == 0)


def test_identical_columns_give_entropy():
    x = codes(1000, 5, 16, seed=11)
    x[:, 4] = x[:, 4] // 4  # a column with only 4 of its 16 bins used
    got = check_mi(x, x, 16, 16)
    for k in range(5):
        p = np.bincount(x[:, k].cpu().numpy(), minlength=16) / 1000
        p = p[p > 0]
        entropy = float(-(p * np.log2(p)).sum())
        assert abs(float(got[k, k]) - entropy) < TOL


def test_independent_columns():
    # Every (a, b) combination equally often: exactly independent, MI = 0 up to rounding.
    s = torch.arange(4 * 5 * 30)
    x = (s % 4).to(torch.uint8)[:, None].repeat(1, 2).to(DEVICE)
    y = ((s // 4) % 5).to(torch.uint8)[:, None].to(DEVICE)
    got = check_mi(x, y, 4, 5)
    assert float(got.max()) < 1e-9


def test_non_contiguous_inputs():
    base_x = codes(800, 9, 6, seed=12)
    base_y = codes(800, 12, 6, seed=13)
    x = base_x[::2, ::2]  # strided both ways
    y = base_y[1::2].t().contiguous().t()  # column-major, as quantize makes it
    assert not x.is_contiguous() and y.stride(0) == 1
    check_mi(x, y, 6, 6)
    check_mi(base_x, base_y, 6, 6)  # row-major


@pytest.mark.parametrize(
    "cx, cy, groups, bins_x, bins_y",
    [
        (6, 9, 3, 16, 16),
        (12, 8, 4, 3, 5),
        (45, 5, 5, 16, 16),  # depthwise 3x3: 9 x columns and 1 y column per group
        (18, 2, 2, 256, 2),
    ],
)
def test_groups(cx, cy, groups, bins_x, bins_y):
    x = codes(300, cx, bins_x, seed=14)
    y = codes(300, cy, bins_y, seed=15)
    got = check_mi(x, y, bins_x, bins_y, groups=groups)
    got = check_mi(x, y, bins_x, bins_y, groups=groups, miller_madow=True)
    mask = torch.block_diag(*[torch.ones(cx // groups, cy // groups)] * groups).bool()
    assert torch.all(got.cpu()[~mask] == 0)


def test_many_samples():
    # S > 65536 (more than a 16-bit count, many sample steps).
    x = codes(70_001, 2, 4, seed=16)
    y = codes(70_001, 3, 7, seed=17)
    y[:, 0] = (x[:, 0] + y[:, 0] % 2) % 7
    got = check_mi(x, y, 4, 7)
    assert float(got[0, 0]) > 0.5


# ----------------------------------------------------------------------------- quantize
def check_quantize(x, bins, ranges=None):
    got_codes, got_ranges = tk.quantize(x, bins, ranges)
    S, C = x.shape
    assert got_codes.shape == (S, C) and got_codes.dtype == torch.uint8
    assert got_codes.stride() == (1, S)
    assert got_ranges.shape == (C, 2) and got_ranges.dtype == torch.float64
    if ranges is not None:
        assert torch.equal(got_ranges, ranges)
    else:
        xd = x.cpu().double()
        torch.testing.assert_close(
            got_ranges.cpu(), torch.stack([xd.amin(0), xd.amax(0)], 1), rtol=0, atol=0,
            equal_nan=True,
        )  # fmt: skip
    np.testing.assert_array_equal(got_codes.cpu().numpy(), ref_codes(x, bins, got_ranges))
    if HAVE_CPP:
        cpp_codes, cpp_ranges = torch.ops.causalprune_fast.quantize(
            x.cpu(), bins, None if ranges is None else ranges.cpu()
        )
        assert torch.equal(got_codes.cpu(), cpp_codes)
        torch.testing.assert_close(got_ranges.cpu(), cpp_ranges, rtol=0, atol=0, equal_nan=True)
    return got_codes, got_ranges


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [2, 3, 16, 256])
def test_quantize_dtypes(dtype, bins):
    g = torch.Generator().manual_seed(bins)
    x = (torch.randn(777, 9, generator=g) * 3 + 1).to(dtype)
    x[:, 2] = torch.linspace(-1, 1, 777)  # values on bin edges
    x[:, 3] = 2.5  # constant column: all codes 0
    x = x.to(DEVICE)
    got, ranges = check_quantize(x, bins)
    assert torch.all(got[:, 3] == 0) and float(ranges[3, 0]) == float(ranges[3, 1]) == 2.5
    # Rows-major and strided inputs give the same codes.
    got_t, _ = check_quantize(x.t().contiguous().t(), bins)
    assert torch.equal(got_t, got)
    check_quantize(x[::3, ::2], bins)


def test_quantize_given_ranges_clamp():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:10, 0] = 100.0  # above hi: last bin
    x[10:20, 0] = -100.0  # below lo: bin 0
    ranges = torch.tensor([[-1.0, 1.0], [0.0, 0.5], [2.0, 2.0], [-3.0, 3.0]], dtype=torch.float64)
    x = x.to(DEVICE)
    ranges = ranges.to(DEVICE)
    got, _ = check_quantize(x, 8, ranges)
    assert torch.all(got[:10, 0] == 7) and torch.all(got[10:20, 0] == 0)
    # Degenerate given range [2, 2]: values above 2 in the last bin, the others in bin 0.
    col = x[:, 2].cpu()
    assert torch.equal(got[:, 2].cpu(), torch.where(col > 2.0, 7, 0).to(torch.uint8))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy, interpreter only
def test_quantize_nan_and_inf():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    x[17, 1] = float("nan")
    x[5, 2] = float("inf")
    x[9, 3] = float("-inf")
    x = x.to(DEVICE)
    _, ranges = check_quantize(x, 16)
    assert torch.isnan(ranges[1]).all() and not torch.isnan(ranges[[0, 2, 3]]).any()
    assert float(ranges[2, 1]) == math.inf and float(ranges[3, 0]) == -math.inf


def test_quantize_long_columns():
    # Long columns are reduced in several partial passes; one NaN deep inside a column.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20_000, 3, generator=g, dtype=torch.float32)
    x[12_345, 0] = float("nan")
    x[19_999, 2] = 50.0
    x = x.to(DEVICE)
    _, ranges = check_quantize(x, 16)
    assert torch.isnan(ranges[0]).all() and float(ranges[2, 1]) == 50.0


def test_quantize_then_mi():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(1000, 6, generator=g)
    b = a[:, :4] * 2 + 0.3 * torch.randn(1000, 4, generator=g)
    cx, _ = tk.quantize(a.to(DEVICE), 16)
    cy, _ = tk.quantize(b.to(DEVICE), 16)
    got = check_mi(cx, cy, 16, 16)
    assert got.diagonal().min() > 1.0


# ----------------------------------------------------------------------------- sm_90 build
def _nvidia_backend() -> bool:
    try:
        import triton.backends

        return "nvidia" in triton.backends.backends
    except Exception:  # pragma: no cover
        return False


@pytest.mark.skipif(not _nvidia_backend(), reason="triton has no NVIDIA backend")
def test_kernels_compile_for_sm90():
    # The real configurations, compiled for an H100 (sm_90) ahead of time (tests/sm90_build.py).
    assert "wgmma" in compile_check("--smoke")  # int8 tensor-core products on Hopper
