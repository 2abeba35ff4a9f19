"""Tests of the fused local-mode Linear kernels (causalprune_fast.estimator.triton.local_linear).

Without a GPU they run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 before the
kernels are imported); with one, on CUDA tensors. The reference is the unfused path on the same
noise: ``u = materialize_noise(...)``, ``y = act(scale * (u @ W.T + b) + shift)`` in torch
float32, then ``causalprune_fast.pairwise_mi(u, y, backend="cpu")`` (tests/fused_debug.py).

Float32 matrix products differ in their last bits with the summation order, which depends on
the platform: on the GPU on the lowering, under the interpreter on the BLAS kernel NumPy picks
at run time (and on a channel's row in the product). So no response is compared bit for bit
across two computations: the fused response (as passes 1 and 1b compute it, from
``local_linear_debug``) is bounded against torch's by a few ulp of the magnitudes involved;
the MI is checked exactly (1e-5 bits) against the unfused estimator on the very y codes pass 2
counted (kept by the run); those codes are the debug response's codes on pass 1's ranges
except (at most) within that rounding bound of a bin edge; and against torch's own response
the MI is checked exactly wherever all codes agree, the fraction of flipped codes bounded.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from fused_debug import (  # noqa: E402
    assert_codes_agree_off_edges,
    local_linear_debug,
    materialize_noise,
    reference_response,
)
from sm90_build import compile_check, nvidia_tooling  # noqa: E402

import causalprune_fast as cf  # noqa: E402
from causalprune_fast.estimator import triton as tk  # noqa: E402
from causalprune_fast.estimator.triton import local_linear as ll  # noqa: E402
from causalprune_fast.estimator.triton import local_plan  # noqa: E402

_OK, _WHY = tk.is_available()
pytestmark = [pytest.mark.skipif(not _OK, reason=_WHY), pytest.mark.usefixtures("no_tf32")]
DEVICE = "cpu" if tk.INTERPRET else "cuda"
TOL = 1e-5  # bits (docs/method.md section 5)
EPS = torch.finfo(torch.float32).eps
# |y_triton - y_torch| <= ULPS * eps * (magnitude of the sum + |y|); at most 1.7 was seen under
# the interpreter (all activations, Cin <= 40); a GPU's FMA chain may round a little differently.
ULPS = 16
MAX_FLIP_FRACTION = 2e-3


def make_layer(cin, cout, bias=True, affine=False, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    p = dict(weight=torch.randn(cout, cin, generator=g) / cin**0.5)
    p["bias"] = torch.randn(cout, generator=g) * 0.5 if bias else None
    if affine:
        p["scale"] = torch.rand(cout, generator=g) * 1.5 + 0.25
        p["shift"] = torch.randn(cout, generator=g) * 0.5
    # Per-unit ranges of different widths and centres, as a calibration pass would give.
    p["lo"] = -torch.rand(cin, generator=g) * 2.0
    p["hi"] = p["lo"] + torch.rand(cin, generator=g) * 3.0 + 0.1
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in p.items()}


def unfused_mi(u, y, bins, miller_madow, reduce, x_ranges=None, y_ranges=None, y_codes=None):
    """MI of the CPU estimator on u and y, binned on the given ranges (default: their own), or
    on u and the given y codes."""
    corr = "miller-madow" if miller_madow else None
    xc, _ = cf.quantize(u.cpu(), bins, None if x_ranges is None else x_ranges.cpu(), backend="cpu")
    if y_codes is not None:
        yc = y_codes.cpu()
    else:
        yc, _ = cf.quantize(y.cpu(), bins, None if y_ranges is None else y_ranges.cpu(),
                            backend="cpu")  # fmt: skip
    return cf.pairwise_mi(xc, yc, bins, correction=corr, backend="cpu", reduce=reduce)


def assert_mi_equal(got, want, reduce):
    if reduce is None:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=TOL)
    else:
        per_x, per_y = got
        assert per_x.dtype == per_y.dtype == torch.float64
        # Sums of up to 40 entries each within TOL of the reference.
        torch.testing.assert_close(per_x.cpu(), want.per_x, rtol=0, atol=TOL * 40)
        torch.testing.assert_close(per_y.cpu(), want.per_y, rtol=0, atol=TOL * 40)


def rounding_bound(u, p, y):
    """ULPS ulp of the magnitudes that make up y (|u| @ |W|^T, |b|, scale, shift, |y|)."""
    mag = u.abs() @ p["weight"].abs().t()
    if p["bias"] is not None:
        mag = mag + p["bias"].abs()
    if p.get("scale") is not None:
        mag = mag * p["scale"].abs() + p["shift"].abs()
    return ULPS * EPS * (mag + y.abs())


def check_fused(cin, cout, samples, bins, act, bias=True, affine=False, miller_madow=False,
                reduce=None, seed=7, config=None, layer_seed=0, memory_budget=None):  # fmt: skip
    """Every check of one fused run against the unfused path; returns (run, flip fraction)."""
    p = make_layer(cin, cout, bias, affine, layer_seed)
    lo, hi = p.pop("lo"), p.pop("hi")
    kw = dict(samples=samples, seed=seed, bins=bins, activation=act, miller_madow=miller_madow,
              reduce=reduce)  # fmt: skip
    dbg = local_linear_debug(p["weight"], p["bias"], lo, hi, **kw, scale=p.get("scale"),
                             shift=p.get("shift"), config=config,
                             memory_budget=memory_budget)  # fmt: skip
    run, y = dbg.run, dbg.y
    assert run.y_codes.shape == (samples, cout) and run.y_codes.dtype == torch.uint8
    u = materialize_noise(samples, lo, hi, seed)
    y_torch = reference_response(u, p["weight"], p["bias"], p.get("scale"), p.get("shift"), act)

    # The noise ranges are the exact minima and maxima of the materialized noise (elementwise
    # float32 arithmetic, no reduction order involved).
    u64 = u.double()
    assert torch.equal(run.x_ranges, torch.stack([u64.amin(0), u64.amax(0)], 1))

    # The response of passes 1 and 1b is torch's up to rounding: a few ulp of |u| @ |W|^T ...
    bound = rounding_bound(u, p, y_torch)
    assert torch.isfinite(y).all()
    err = (y - y_torch).abs()
    assert bool((err <= bound).all()), f"max |dy| {float(err.max()):.3g}"
    # The y ranges are its minima and maxima, and the stored codes its codes on them (the
    # debug kernel recomputes y with the same helper and shapes; rounding could differ only
    # where its BLAS were not deterministic per shape).
    y64 = y.double()
    want = torch.stack([y64.amin(0), y64.amax(0)], 1)
    torch.testing.assert_close(run.y_ranges, want, rtol=ULPS * EPS, atol=0)
    assert_codes_agree_off_edges(y, run.y_codes, run.y_ranges, bins, 2 * bound)

    # MI: exact against the unfused estimator on the codes pass 2 counted ...
    got = run.matrix if reduce is None else (run.per_x, run.per_y)
    want = unfused_mi(u, None, bins, miller_madow, reduce, run.x_ranges, y_codes=run.y_codes)
    assert_mi_equal(got, want, reduce)
    # ... and against the unfused path on torch's response wherever no code flipped.
    codes_t, _ = cf.quantize(y_torch.cpu(), bins, backend="cpu")
    flips = float((run.y_codes.cpu() != codes_t).double().mean())
    assert flips <= MAX_FLIP_FRACTION, f"{flips:.2e} of the y codes flipped"
    if flips == 0.0:
        assert_mi_equal(got, unfused_mi(u, y_torch, bins, miller_madow, reduce), reduce)
    return run, flips


# ----------------------------------------------------------------------------- fused vs unfused
# (Cin, Cout, S, bins, activation, bias, affine, miller_madow, reduce)
CASES = [
    (3, 5, 100, 16, "identity", True, False, False, None),
    (5, 3, 1000, 16, "relu", False, True, False, "sum"),
    (17, 5, 1000, 16, "gelu", True, True, False, None),
    (5, 17, 1000, 2, "silu", True, False, True, None),
    (40, 3, 3000, 16, "sigmoid", True, True, True, "sum"),
    (3, 40, 3000, 2, "tanh", False, False, False, None),
    (17, 5, 1000, 64, "hardswish", True, True, False, None),
    (40, 40, 1000, 2, "relu6", True, True, False, "sum"),
    (40, 17, 1000, 16, "identity", False, True, True, None),
    (5, 5, 3000, 64, "gelu", True, False, True, "sum"),
    (17, 3, 100, 64, "silu", True, True, False, "sum"),
    (3, 3, 1, 16, "relu", True, False, False, None),  # one sample: every MI is 0
    (3, 3, 1, 16, "relu", True, False, True, "sum"),
    (40, 5, 3000, 2, "tanh", True, True, False, "sum"),
    (5, 40, 100, 16, "sigmoid", False, True, True, None),
]


@pytest.mark.parametrize(
    "cin, cout, samples, bins, act, bias, affine, miller_madow, reduce", CASES
)  # fmt: skip
def test_fused_equals_unfused(cin, cout, samples, bins, act, bias, affine, miller_madow, reduce):
    run, _ = check_fused(cin, cout, samples, bins, act, bias, affine, miller_madow, reduce)
    if samples == 1:
        got = run.matrix if reduce is None else torch.cat([run.per_x, run.per_y])
        assert torch.all(got == 0)


def test_matrix_and_sums_agree():
    p = make_layer(17, 5, affine=True, seed=3)
    args = (p["weight"], p["bias"], p["lo"], p["hi"])
    kw = dict(samples=500, seed=11, bins=8, scale=p["scale"], shift=p["shift"], activation="silu")
    m = ll.local_linear_mi(*args, **kw)
    s = ll.local_linear_mi(*args, **kw, reduce="sum")
    # The kernels return a plain tuple (the public API wraps it in PairwiseMISums).
    assert isinstance(s, tuple) and len(s) == 2
    per_x, per_y = s
    torch.testing.assert_close(per_x, m.double().sum(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(per_y, m.double().sum(0), rtol=0, atol=1e-5)
    # run_local_linear runs the same kernels; one seed gives one result in a process.
    run = ll.run_local_linear(*args, **kw)
    assert torch.equal(run.matrix, m)
    m2, xr, yr = ll.local_linear_mi(*args, **kw, return_ranges=True)
    assert torch.equal(m2, m) and torch.equal(xr, run.x_ranges) and torch.equal(yr, run.y_ranges)
    assert float(m.max()) > 0.1  # a real layer carries information


def test_gpu_tile_shapes_under_interpreter():
    # The GPU launch shapes (64-sample, 32-input steps; 8-channel pair tiles, y computed 16
    # channels at a time and the first 8 kept): several K chunks, sample chunks and a partial
    # last chunk.
    cfg = local_plan.local_tile_config(40, 17, 16, interpret=False)
    assert (cfg.block_s, cfg.block_k, cfg.yw // cfg.py) == (64, 32, 2)
    check_fused(40, 17, 300, 16, "gelu", True, True, True, None, config=cfg)


def test_split_bins_gpu_shapes():
    # 256 bins: 128-bin sub-blocks (KX = KY = 2), one pair per tile, y computed 16 at a time.
    cfg = local_plan.local_tile_config(3, 2, 256, interpret=False)
    assert (cfg.kx, cfg.ky, cfg.px, cfg.py, cfg.yw) == (2, 2, 1, 1, 16)
    check_fused(3, 2, 130, 256, "tanh", True, False, False, "sum", config=cfg)


@pytest.mark.parametrize("reduce", [None, "sum"])
def test_channel_slabs_give_the_mi_of_one_slab(reduce):
    # A memory budget for the y codes of 8 (< YW = 16: a channel block of passes 1 and 1b
    # split over two slabs) or 24 channels (slabs of 16): several slabs, every check of one
    # run, and the MI of a single slab.
    cin, cout, samples = 17, 40, 300
    cfg = local_plan.local_tile_config(cin, cout, 16, interpret=False)
    assert (cfg.py, cfg.yw) == (8, 16)
    one, _ = check_fused(cin, cout, samples, 16, "silu", affine=True, reduce=reduce, config=cfg)
    assert one.slabs == [(0, cout)]
    for width, slabs in ((8, 5), (24, 3)):
        run, _ = check_fused(cin, cout, samples, 16, "silu", affine=True, reduce=reduce,
                             config=cfg, memory_budget=width * samples)  # fmt: skip
        assert len(run.slabs) == slabs and run.slabs[-1][1] == cout
        assert all(b - a <= width for a, b in run.slabs)
        if reduce is None:
            torch.testing.assert_close(run.matrix, one.matrix, rtol=0, atol=TOL)
        else:
            torch.testing.assert_close(run.per_x, one.per_x, rtol=0, atol=TOL * cout)
            torch.testing.assert_close(run.per_y, one.per_y, rtol=0, atol=TOL * cin)


def test_channel_slab_plan():
    from causalprune_fast.estimator.triton.local_plan import channel_slabs

    for cout in (1, 5, 8, 16, 17, 40, 1000):
        for py, yw in ((8, 16), (1, 16), (32, 32)):
            for fit in (1, 7, 8, 15, 16, 24, 33, 999, 5000):
                least = min(py, cout)
                if fit < least:
                    with pytest.raises(ValueError, match="memory_budget"):
                        channel_slabs(cout, 3, py, yw, 3 * fit + 2)
                    continue
                slabs = channel_slabs(cout, 3, py, yw, 3 * fit + 2)
                # Contiguous, covering, within the budget, slab starts on pass-2 tiles, and on
                # pass-1 channel blocks wherever a block fits.
                assert slabs[0][0] == 0 and slabs[-1][1] == cout
                assert all(a[1] == b[0] for a, b in zip(slabs, slabs[1:], strict=False))
                assert all(0 < c1 - c0 <= fit for c0, c1 in slabs)
                step = yw if fit >= yw else py
                assert all(c0 % step == 0 for c0, _ in slabs)
                assert len(slabs) == 1 or slabs[0][1] - slabs[0][0] > fit - step  # widest


def test_memory_budget_too_small_for_one_tile():
    p = make_layer(4, 20)
    # The codes of one pass-2 tile of channels: 8 at 16 bins on a GPU, all 20 under the
    # interpreter's wider tiles.
    least = 100 * min(local_plan.local_tile_config(4, 20, 16, 100).py, 20)
    with pytest.raises(ValueError, match=rf"memory_budget={least - 1} bytes .*\({least} bytes\)"):
        ll.local_linear_mi(p["weight"], p["bias"], p["lo"], p["hi"], samples=100, seed=0,
                           memory_budget=least - 1)  # fmt: skip
    m = ll.local_linear_mi(p["weight"], p["bias"], p["lo"], p["hi"], samples=100, seed=0,
                           memory_budget=least)  # fmt: skip
    assert m.shape == (4, 20) and float(m.max()) > 0


def test_one_by_one_conv_weight_and_parameters():
    p = make_layer(6, 4, seed=5)
    kw = dict(samples=300, seed=2, bins=16, activation="relu")
    m2 = ll.local_linear_mi(p["weight"], p["bias"], p["lo"], p["hi"], **kw)
    m4 = ll.local_linear_mi(p["weight"][:, :, None, None], p["bias"], p["lo"], p["hi"], **kw)
    assert torch.equal(m2, m4)
    # nn.Parameters (requiring grad) and float64 ranges are taken as float32 values.
    w = torch.nn.Parameter(p["weight"].clone())
    b = torch.nn.Parameter(p["bias"].clone())
    mp = ll.local_linear_mi(w, b, p["lo"].double(), p["hi"].double(), **kw)
    assert torch.equal(m2, mp)


# ----------------------------------------------------------------------------- noise
def philox_rand_np(seed: int, offsets: np.ndarray) -> np.ndarray:
    """tl.rand(seed, offsets) re-implemented in NumPy: Philox 4x32-10 on counter
    (offset_lo, offset_hi, 0, 0) and key (seed_lo, seed_hi), first word to [0, 1)."""
    m32 = np.uint64(0xFFFFFFFF)
    off = offsets.astype(np.uint64)
    c0, c1 = off & m32, off >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0 = np.full_like(c0, seed & 0xFFFFFFFF)
    k1 = np.full_like(c0, (seed >> 32) & 0xFFFFFFFF)
    ra, rb = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    for _ in range(10):
        p0, p2 = rb * c2, ra * c0  # 32 x 32 -> 64-bit products
        c0, c1, c2, c3 = (
            (p0 >> np.uint64(32)) ^ c1 ^ k0,
            p0 & m32,
            (p2 >> np.uint64(32)) ^ c3 ^ k1,
            p2 & m32,
        )
        k0 = (k0 + np.uint64(0x9E3779B9)) & m32
        k1 = (k1 + np.uint64(0xBB67AE85)) & m32
    x = c0.astype(np.uint32).view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


@pytest.mark.parametrize("seed", [0, 12345, 3_000_000_000, 2**40 + 17])
def test_noise_is_philox(seed):
    S, cin = 70, 9
    zeros = torch.zeros(cin, device=DEVICE)
    u = materialize_noise(S, zeros, torch.ones(cin, device=DEVICE), seed)
    want = philox_rand_np(seed, np.arange(S * cin, dtype=np.int64)).reshape(S, cin)
    np.testing.assert_array_equal(u.cpu().numpy(), want)


def test_noise_reproducible_ranges_and_seeds():
    p = make_layer(13, 2, seed=1)
    lo, hi = p["lo"], p["hi"]
    lo[4] = hi[4] = 0.375  # a constant input
    a = materialize_noise(2000, lo, hi, 5)
    assert a.shape == (2000, 13) and a.dtype == torch.float32
    assert torch.equal(a, materialize_noise(2000, lo, hi, 5))
    b = materialize_noise(2000, lo, hi, 6)
    varying = torch.arange(13, device=DEVICE) != 4
    assert float((a != b)[:, varying].double().mean()) > 0.99
    assert bool(((a >= lo) & (a <= hi)).all())
    assert torch.all(a[:, 4] == 0.375)
    # Uniform: mean and spread of each column close to those of U(lo, hi).
    mid, width = (lo + hi) / 2, hi - lo
    assert bool(((a.mean(0) - mid).abs() <= 0.05 * width + 1e-7).all())
    assert bool(((a.std(0) - width / 12**0.5).abs() <= 0.05 * width + 1e-7).all())
    # Scalars broadcast; a prefix of the samples is the same noise (counter-based).
    c = materialize_noise(100, lo, hi, 5)
    assert torch.equal(c, a[:100])


def test_constant_input_gives_zero_mi():
    p = make_layer(9, 6, affine=True, seed=2)
    p["lo"][3] = p["hi"][3] = -0.5
    p["lo"][7] = p["hi"][7] = 2.0
    args = (p["weight"], p["bias"], p["lo"], p["hi"])
    kw = dict(samples=800, seed=4, bins=16, scale=p["scale"], shift=p["shift"])
    for mm in (False, True):
        m = ll.local_linear_mi(*args, **kw, miller_madow=mm)
        assert torch.all(m[3] == 0) and torch.all(m[7] == 0)
        assert float(m.max()) > 0.01
        per_x, _ = ll.local_linear_mi(*args, **kw, miller_madow=mm, reduce="sum")
        assert float(per_x[3]) == 0.0 and float(per_x[7]) == 0.0
    # A constant output channel (relu of an always-negative pre-activation) gives 0 too.
    p["bias"][2] = -100.0
    m = ll.local_linear_mi(*args, **kw, activation="relu")
    assert torch.all(m[:, 2] == 0)


# ----------------------------------------------------------------------------- errors
def _bad_calls():
    p = make_layer(4, 3, affine=True)
    w, b, lo, hi = p["weight"], p["bias"], p["lo"], p["hi"]
    ok = dict(samples=10, seed=0)
    yield "weight", (w[0], b, lo, hi), ok
    yield "weight", (w.long(), b, lo, hi), ok
    yield "weight", (w[:, :, None, None].expand(3, 4, 3, 3), b, lo, hi), ok
    yield "weight", ("w", b, lo, hi), ok
    yield "bias", (w, b[:2], lo, hi), ok
    yield "lo", (w, b, lo[:3], hi), ok
    yield "lo", (w, b, torch.full_like(lo, float("nan")), hi), ok
    yield "hi", (w, b, lo, lo - 1.0), ok
    yield "samples", (w, b, lo, hi), dict(samples=0, seed=0)
    yield "samples", (w, b, lo, hi), dict(samples=2.0, seed=0)
    yield "seed", (w, b, lo, hi), dict(samples=10, seed=-1)
    yield "seed", (w, b, lo, hi), dict(samples=10, seed=True)
    yield "bins", (w, b, lo, hi), dict(ok, bins=1)
    yield "bins", (w, b, lo, hi), dict(ok, bins=257)
    yield "activation", (w, b, lo, hi), dict(ok, activation="softplus")
    yield "scale", (w, b, lo, hi), dict(ok, scale=p["scale"][:1])
    yield "shift", (w, b, lo, hi), dict(ok, shift=p["shift"].int())
    yield "reduce", (w, b, lo, hi), dict(ok, reduce="mean")
    yield "miller_madow", (w, b, lo, hi), dict(ok, miller_madow="yes")
    yield "memory_budget", (w, b, lo, hi), dict(ok, memory_budget=0)
    yield "memory_budget", (w, b, lo, hi), dict(ok, memory_budget=2.5e9)
    yield "memory_budget", (w, b, lo, hi), dict(ok, memory_budget=29)  # < 3 channels x 10


@pytest.mark.parametrize("name, args, kwargs", list(_bad_calls()))
def test_bad_arguments(name, args, kwargs):
    with pytest.raises(ValueError, match=name):
        ll.local_linear_mi(*args, **kwargs)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # numpy, interpreter only
def test_non_finite_response():
    p = make_layer(4, 3)
    w = p["weight"].clone()
    w[1] = 3e38  # overflows to inf in float32
    with pytest.raises(ValueError, match=r"non-finite.*\[1\]"):
        ll.local_linear_mi(w, p["bias"], p["lo"].abs() + 1, p["hi"].abs() + 2, samples=50, seed=0)


# ----------------------------------------------------------------------------- sm_90 build
@pytest.mark.skipif(not nvidia_tooling(), reason="no Triton NVIDIA backend with ptxas")
def test_local_linear_kernels_compile_for_sm90():
    out = compile_check("--local-linear", "--smoke")
    assert "local_linear mi" in out and "wgmma" in out
