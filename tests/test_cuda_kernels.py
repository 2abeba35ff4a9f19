"""The CUDA kernels of causalprune_fast (csrc/causalprune_fast/cuda/) against the CPU kernels.

Every GPU test runs an op on CUDA tensors and the same op on ``.cpu()`` copies (the CPU kernels
are the semantic ground truth) and asks for agreement to 1e-5 bits (METHOD.md section 5), and
for bit-identical codes from ``quantize``. They are skipped where no GPU is visible. One test
runs everywhere: with ``CAUSALPRUNE_EXPECT_CUDA=1`` (set by CI builds with CUDA) it checks that
the extension was compiled with its CUDA kernels. Another needs only a host C++ compiler: it
replays the pairwise kernel's tiling and index arithmetic on the CPU (native/tiling_replay.cpp).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import causalprune_fast  # noqa: F401  (loads the extension, registering the ops)

ops = torch.ops.causalprune_fast

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible: the CUDA kernels cannot run"
)

ATOL = 1e-5  # bits, per pair


def test_extension_compiled_with_cuda():
    if os.environ.get("CAUSALPRUNE_EXPECT_CUDA") != "1":
        pytest.skip("CAUSALPRUNE_EXPECT_CUDA=1 is not set (only CUDA builds expect the kernels)")
    from causalprune_fast import _C

    assert _C.cuda_compiled() is True


CSRC = Path(__file__).resolve().parents[1] / "csrc"
REPLAY_SRC = Path(__file__).resolve().parent / "native" / "tiling_replay.cpp"


def test_tiling_replay(tmp_path):
    """The pairwise kernel's index arithmetic (csrc/.../cuda/pairwise_mi_tiling.h), replayed
    block by block on the host against brute-force MI; needs no GPU, only a C++ compiler."""
    if not (CSRC / "causalprune_fast" / "cuda" / "pairwise_mi_tiling.h").exists():
        pytest.skip(f"{CSRC} not found (tests run outside the source tree)")
    cxx = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if cxx is None:
        pytest.skip("no host C++ compiler (c++, g++ or clang++) found")
    exe = tmp_path / "tiling_replay"
    cmd = [cxx, "-O1", "-std=c++17", "-I", str(CSRC), str(REPLAY_SRC), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("ALL OK"), run.stdout[-3000:]


# --------------------------------------------------------------------------- helpers
def _codes(samples, cols, bins, gen):
    return torch.randint(0, bins, (samples, cols), generator=gen).to(torch.uint8)


def _make_pair(samples, cx, cy, bx, by, seed):
    """Random codes with structure: a dependent column, a constant column, identical columns."""
    gen = torch.Generator().manual_seed(seed)
    x = _codes(samples, cx, bx, gen)
    y = _codes(samples, cy, by, gen)
    y[:, 0] = (x[:, 0].long() * by // bx).to(torch.uint8)  # y0 depends on x0
    if cx > 1:
        x[:, 1] = bx - 1  # constant column
    if cy > 1:
        y[:, 1] = 0  # constant column
    if cx > 2 and cy > 2 and bx == by:
        y[:, 2] = x[:, 2]  # identical columns
    return x, y


def _assert_matches_cpu(x, y, bx, by, groups=1, miller_madow=False):
    """x, y: CUDA codes (any strides). Matrix and sums of the CUDA ops against the CPU ops."""
    assert x.is_cuda and y.is_cuda
    got = ops.pairwise_mi(x, y, bx, by, groups, miller_madow)
    ref = ops.pairwise_mi(x.cpu(), y.cpu(), bx, by, groups, miller_madow)
    assert got.is_cuda and got.dtype == torch.float32 and got.shape == ref.shape
    torch.testing.assert_close(got.cpu(), ref, atol=ATOL, rtol=0)
    # Pairs outside their group are exactly 0.
    cxg, cyg = x.shape[1] // groups, y.shape[1] // groups
    gi = torch.arange(x.shape[1]) // cxg
    gj = torch.arange(y.shape[1]) // cyg
    outside = gi[:, None] != gj[None, :]
    assert torch.all(got.cpu()[outside] == 0)

    per_x, per_y = ops.pairwise_mi_sums(x, y, bx, by, groups, miller_madow)
    ref_x, ref_y = ops.pairwise_mi_sums(x.cpu(), y.cpu(), bx, by, groups, miller_madow)
    assert per_x.dtype == torch.float64 and per_y.dtype == torch.float64
    assert per_x.is_cuda and per_y.is_cuda
    torch.testing.assert_close(per_x.cpu(), ref_x, atol=ATOL * y.shape[1], rtol=0)
    torch.testing.assert_close(per_y.cpu(), ref_y, atol=ATOL * x.shape[1], rtol=0)
    # Sums against the (float32) matrix of the same op.
    torch.testing.assert_close(per_x, got.double().sum(1), atol=ATOL * y.shape[1], rtol=0)
    torch.testing.assert_close(per_y, got.double().sum(0), atol=ATOL * x.shape[1], rtol=0)
    return got


# --------------------------------------------------------------------------- pairwise_mi
PAIRWISE_CASES = [
    # samples, cx, cy, bins_x, bins_y, groups
    (1000, 6, 5, 2, 2, 1),
    (1000, 6, 5, 3, 3, 1),
    (2000, 9, 7, 16, 16, 1),
    (2000, 9, 7, 17, 17, 1),
    (3000, 5, 4, 64, 64, 1),
    (3000, 3, 3, 256, 256, 1),
    (500, 7, 6, 16, 3, 1),  # bins_x != bins_y
    (500, 6, 7, 2, 256, 1),
    (500, 6, 7, 256, 2, 1),
    (777, 5, 9, 17, 64, 1),
    (1, 3, 4, 16, 16, 1),  # a single sample
    (1, 1, 1, 2, 2, 1),
    (63, 67, 35, 16, 16, 1),  # odd shapes: partial tiles, samples below one chunk
    (65, 13, 11, 5, 7, 1),  # one sample past a chunk
    (129, 33, 17, 48, 80, 1),  # bins padded to 48 and 80
    (70000, 3, 4, 16, 16, 1),  # counts past 2**16
    (300, 18, 8, 4, 4, 2),  # grouped
    (400, 36, 16, 16, 16, 4),
    (300, 9 * 32, 32, 16, 16, 32),  # depthwise 3x3: 9 inputs, 1 output per group
    (200, 9 * 5, 5, 256, 256, 5),  # depthwise with large bins
    (300, 24, 24, 16, 16, 24),  # depthwise, centre tap: one pair per group
    (300, 8, 64, 3, 17, 8),  # 1 input, 8 outputs per group
]


@needs_gpu
@pytest.mark.parametrize("miller_madow", [False, True], ids=["plugin", "mm"])
@pytest.mark.parametrize("samples,cx,cy,bx,by,groups", PAIRWISE_CASES)
def test_pairwise_matches_cpu(samples, cx, cy, bx, by, groups, miller_madow):
    x, y = _make_pair(samples, cx, cy, bx, by, seed=samples * 7 + cx * 3 + cy + bx)
    _assert_matches_cpu(x.cuda(), y.cuda(), bx, by, groups, miller_madow)


@needs_gpu
def test_pairwise_known_values():
    # Identical uniform columns over 4 bins carry 2 bits; independent ones about 0.
    s = 4096
    x = (torch.arange(s) % 4).to(torch.uint8)[:, None]
    y = torch.cat([x, ((torch.arange(s) // 4) % 4).to(torch.uint8)[:, None]], 1)
    got = ops.pairwise_mi(x.cuda(), y.cuda(), 4, 4).cpu()
    assert abs(got[0, 0].item() - 2.0) < ATOL
    assert abs(got[0, 1].item()) < ATOL


@needs_gpu
@pytest.mark.parametrize("layout", ["row_major", "col_major", "strided", "misaligned", "padded"])
def test_pairwise_non_contiguous_inputs(layout):
    samples, cx, cy, bx, by = 640, 10, 6, 16, 12
    x, y = _make_pair(samples, cx, cy, bx, by, seed=3)
    if layout == "row_major":
        xc, yc = x.cuda(), y.cuda()
    elif layout == "col_major":  # quantize's layout: strides (1, samples)
        xc, yc = x.t().contiguous().cuda().t(), y.t().contiguous().cuda().t()
    elif layout == "strided":  # every other column and row of bigger tensors
        bigx = torch.zeros(2 * samples, 2 * cx, dtype=torch.uint8)
        bigx[::2, ::2] = x
        bigy = torch.zeros(2 * samples, 2 * cy, dtype=torch.uint8)
        bigy[::2, 1::2] = y
        xc, yc = bigx.cuda()[::2, ::2], bigy.cuda()[::2, 1::2]
    elif layout == "misaligned":  # column-major with a storage offset of one byte
        bx_ = torch.zeros(cx * samples + 1, dtype=torch.uint8, device="cuda")
        bx_[1:] = x.t().contiguous().flatten().cuda()
        xc = bx_[1:].view(cx, samples).t()
        by_ = torch.zeros(cy * samples + 3, dtype=torch.uint8, device="cuda")
        by_[3:] = y.t().contiguous().flatten().cuda()
        yc = by_[3:].view(cy, samples).t()
    else:  # column-major views of longer columns
        xl = torch.zeros(cx, samples + 5, dtype=torch.uint8)
        xl[:, :samples] = x.t()
        yl = torch.zeros(cy, samples + 5, dtype=torch.uint8)
        yl[:, 2 : samples + 2] = y.t()
        xc, yc = xl.cuda()[:, :samples].t(), yl.cuda()[:, 2 : samples + 2].t()
    assert torch.equal(xc.cpu(), x) and torch.equal(yc.cpu(), y)
    got = _assert_matches_cpu(xc, yc, bx, by)
    ref = ops.pairwise_mi(x.cuda(), y.cuda(), bx, by)
    assert torch.equal(got, ref)


@needs_gpu
def test_pairwise_sums_match_matrix_large():
    x, y = _make_pair(5000, 70, 45, 16, 16, seed=11)
    xc, yc = x.cuda(), y.cuda()
    m = ops.pairwise_mi(xc, yc, 16, 16, 1, True).double()
    per_x, per_y = ops.pairwise_mi_sums(xc, yc, 16, 16, 1, True)
    torch.testing.assert_close(per_x, m.sum(1), atol=ATOL * 45, rtol=0)
    torch.testing.assert_close(per_y, m.sum(0), atol=ATOL * 70, rtol=0)


@needs_gpu
@pytest.mark.parametrize("side", ["x", "y"])
@pytest.mark.parametrize("op", ["pairwise_mi", "pairwise_mi_sums"])
def test_codes_out_of_range_raise(side, op):
    x, y = _make_pair(100, 4, 3, 16, 8, seed=5)
    if side == "x":
        x[17, 2] = 16
    else:
        y[50, 1] = 200
    with pytest.raises(ValueError, match=f"{side} holds code .*bins_{side}"):
        getattr(ops, op)(x.cuda(), y.cuda(), 16, 8)
    with pytest.raises(ValueError, match=f"{side} holds code .*bins_{side}"):
        getattr(ops, op)(x, y, 16, 8)  # same error on the CPU


@needs_gpu
def test_pairwise_argument_errors():
    x = torch.zeros(10, 4, dtype=torch.uint8, device="cuda")
    y = torch.zeros(10, 3, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="groups"):
        ops.pairwise_mi(x, y, 4, 4, 2)
    with pytest.raises(ValueError, match="bins_x"):
        ops.pairwise_mi(x, y, 1, 4)
    with pytest.raises(ValueError, match="same device"):
        ops.pairwise_mi(x, y.cpu(), 4, 4)
    with pytest.raises(ValueError, match="same number of samples"):
        ops.pairwise_mi(x, y[:5], 4, 4)


# --------------------------------------------------------------------------- quantize
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _assert_quantize_matches_cpu(x, bins, ranges=None):
    codes, r = ops.quantize(x, bins, ranges)
    ref_codes, ref_r = ops.quantize(x.cpu(), bins, None if ranges is None else ranges.cpu())
    assert codes.is_cuda and codes.dtype == torch.uint8 and codes.shape == x.shape
    assert codes.stride() == (1, x.shape[0])  # column-major
    assert r.dtype == torch.float64 and r.shape == (x.shape[1], 2)
    assert torch.equal(codes.cpu(), ref_codes)
    torch.testing.assert_close(r.cpu(), ref_r, rtol=0, atol=0, equal_nan=True)
    return codes, r


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("bins", [2, 3, 16, 17, 256])
def test_quantize_bit_identical(dtype, bins):
    gen = torch.Generator().manual_seed(bins)
    x = (torch.randn(3001, 7, generator=gen, dtype=torch.float64) * 3).to(dtype)
    x[:, 1] = 0.5  # constant column
    x[::3, 2] = x[1, 2]  # many ties
    x[:, 3] = torch.linspace(-1, 1, 3001, dtype=torch.float64).to(dtype)  # bin edges
    _assert_quantize_matches_cpu(x.cuda(), bins)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_quantize_given_ranges(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 5, generator=gen, dtype=torch.float64).to(dtype)
    ranges = torch.tensor(
        [[-1.0, 1.0], [0.0, 0.0], [2.0, -2.0], [-0.25, 3.0], [-10.0, 10.0]], dtype=torch.float64
    )
    codes, r = _assert_quantize_matches_cpu(x.cuda(), 16, ranges.cuda())
    assert torch.equal(r.cpu(), ranges)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_quantize_nan_and_inf_columns(dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(700, 5, generator=gen, dtype=torch.float64).to(dtype)
    x[13, 1] = float("nan")
    x[699, 2] = float("nan")
    x[5, 3] = float("inf")
    x[6, 4] = float("-inf")
    codes, r = _assert_quantize_matches_cpu(x.cuda(), 16)
    r = r.cpu()
    assert torch.isnan(r[1]).all() and torch.isnan(r[2]).all()
    assert not torch.isnan(r[0]).any()


@needs_gpu
@pytest.mark.parametrize(
    "samples,cols", [(1, 1), (1, 9), (5, 1), (70001, 3), (64, 300), (20000, 70)]
)
def test_quantize_shapes(samples, cols):
    gen = torch.Generator().manual_seed(samples + cols)
    x = torch.rand(samples, cols, generator=gen)
    _assert_quantize_matches_cpu(x.cuda(), 16)


@needs_gpu
def test_quantize_many_columns():
    # More columns than one grid dimension holds (65535): the kernels stride over columns.
    x = torch.rand(3, 70000, generator=torch.Generator().manual_seed(0))
    _assert_quantize_matches_cpu(x.cuda(), 8)


@needs_gpu
def test_quantize_non_contiguous():
    gen = torch.Generator().manual_seed(4)
    big = torch.randn(800, 12, generator=gen).cuda()
    _assert_quantize_matches_cpu(big[::2, 1::3], 16)  # strided
    _assert_quantize_matches_cpu(big.t().contiguous().t(), 16)  # column-major
    _assert_quantize_matches_cpu(big[:, 5:6], 4)  # one column


@needs_gpu
def test_quantize_argument_errors():
    x = torch.rand(10, 3, device="cuda")
    with pytest.raises(ValueError, match="bins"):
        ops.quantize(x, 1)
    with pytest.raises(ValueError, match="ranges must have shape"):
        ops.quantize(x, 4, torch.zeros(2, 2, dtype=torch.float64, device="cuda"))
    with pytest.raises(ValueError, match="float64"):
        ops.quantize(x, 4, torch.zeros(3, 2, device="cuda"))
    with pytest.raises(ValueError, match="device"):
        ops.quantize(x, 4, torch.zeros(3, 2, dtype=torch.float64))


@needs_gpu
@pytest.mark.parametrize("bins", [2, 16, 256])
def test_quantize_then_pairwise(bins):
    gen = torch.Generator().manual_seed(bins)
    a = torch.randn(4000, 6, generator=gen)
    b = torch.cat([a[:, :2] ** 2, torch.randn(4000, 3, generator=gen)], 1)
    xc, _ = ops.quantize(a.cuda(), bins)
    yc, _ = ops.quantize(b.cuda(), bins)
    _assert_matches_cpu(xc, yc, bins, bins, 1, False)
