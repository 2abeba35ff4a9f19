"""Tests of the fused local-mode convolution kernels (causalprune_fast.estimator.triton.local_conv).

Without a GPU they run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 before the
kernels are imported); with one, on CUDA tensors. Two references:

* the kernel's own rows: ``local_conv_debug`` (tests/fused_debug.py) regenerates the patch rows
  with the production helpers and the response passes 1 and 1b computed, and keeps the y codes
  pass 2 counted; the float64 CPU estimator on those rows, binned on the kernel's ranges, and
  those codes must give the kernel's MI (1e-5 bits), the rows must be 0 exactly at the taps in
  the padding, the response must match torch's (a few ulp) and the codes be its codes;
* the unfused ``patches`` path (scoring/sampling.py): the same MI up to estimator noise and the
  same fraction of padding taps, also end to end through ``score_model``.

No float is compared bit for bit across two computations (BLAS / interpreter / GPU order).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn as nn  # noqa: E402
from fused_debug import (  # noqa: E402
    assert_codes_agree_off_edges,
    local_conv_debug,
    reference_conv_response,
)
from nets import structured_conv  # noqa: E402
from sm90_build import compile_check, nvidia_tooling  # noqa: E402

import causalprune_fast as cf  # noqa: E402
from causalprune_fast.base.conv_geometry import ConvGeometry  # noqa: E402
from causalprune_fast.estimator import triton as tk  # noqa: E402
from causalprune_fast.estimator.triton import local_conv as lc  # noqa: E402
from causalprune_fast.estimator.triton import local_plan  # noqa: E402
from causalprune_fast.model.layers import Layer  # noqa: E402
from causalprune_fast.model.response import ResponsePoint  # noqa: E402
from causalprune_fast.scoring.sampling import row_source  # noqa: E402

_OK, _WHY = tk.is_available()
# On a machine with a GPU (CAUSALPRUNE_EXPECT_GPU=1, set by benchmarks/gpu_suite.sh) the kernels
# must run on it: no silent skip, and test_runs_on_the_gpu_where_expected checks the device.
# (CAUSALPRUNE_EXPECT_CUDA=1 only says that the CUDA kernels were compiled: CI has nvcc, no GPU.)
_EXPECT_GPU = os.environ.get("CAUSALPRUNE_EXPECT_GPU") == "1"
pytestmark = [
    pytest.mark.skipif(not _OK and not _EXPECT_GPU, reason=_WHY),
    pytest.mark.usefixtures("no_tf32"),  # tests/conftest.py
]
DEVICE = "cpu" if tk.INTERPRET else "cuda"


def test_runs_on_the_gpu_where_expected():
    if not _EXPECT_GPU:
        pytest.skip("CAUSALPRUNE_EXPECT_GPU=1 is not set (benchmarks/gpu_suite.sh sets it)")
    assert _OK, _WHY
    assert torch.cuda.is_available() and not tk.INTERPRET and DEVICE == "cuda"


TOL = 1e-5  # bits
EPS = torch.finfo(torch.float32).eps
ULPS = 16


def _ranges(cin, g):
    lo = -torch.rand(cin, generator=g) * 2.0
    return lo, lo + torch.rand(cin, generator=g) * 3.0 + 0.1


# (name, make conv, input shape (C, *spatial), taps)
KINDS = [
    ("1d k3 pad1", lambda: nn.Conv1d(3, 5, 3, padding=1), (3, 7), "all"),
    (
        "1d k5 s2 d2 pad3",
        lambda: nn.Conv1d(2, 4, 5, stride=2, padding=3, dilation=2),
        (2, 11),
        "all",
    ),  # fmt: skip
    (
        "1d k4 same (asymmetric)",
        lambda: nn.Conv1d(2, 3, 4, padding="same", bias=False),
        (2, 6),
        "all",
    ),  # fmt: skip
    (
        "2d k3 s2 pad1 g2",
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        (4, 7, 6),
        "all",
    ),  # fmt: skip
    ("2d depthwise", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 5, 5), "all"),
    ("2d depthwise x2", lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3), (3, 4, 5), "all"),
    ("2d k5 d2 centre", lambda: nn.Conv2d(3, 4, 5, padding=4, dilation=2), (3, 6, 6), "center"),
    ("2d k3 no pad", lambda: nn.Conv2d(3, 4, 3), (3, 5, 6), "all"),
    ("3d k3 pad1", lambda: nn.Conv3d(2, 3, 3, padding=1), (2, 3, 4, 3), "all"),
    (
        "3d k(1,3,3) s(1,2,2)",
        lambda: nn.Conv3d(2, 4, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), groups=2),
        (2, 2, 5, 5),
        "all",
    ),  # fmt: skip
]
RESPONSES = [("identity", False), ("relu", True), ("silu", True)]  # activation, affine


def _run(conv, shape, taps, samples, seed, act="identity", affine=False, reduce=None,
         miller_madow=False, config=None, memory_budget=None):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    conv = conv.to(DEVICE)
    lo, hi = _ranges(conv.in_channels, g)
    kw = {}
    if affine:
        kw["scale"] = (torch.rand(conv.out_channels, generator=g) * 1.5 + 0.25).to(DEVICE)
        kw["shift"] = (torch.randn(conv.out_channels, generator=g) * 0.5).to(DEVICE)
    geo = ConvGeometry.of(conv, shape)
    bias = None if conv.bias is None else conv.bias.detach()
    d = local_conv_debug(conv.weight.detach(), bias, lo.to(DEVICE), hi.to(DEVICE), geometry=geo,
                         taps=taps, samples=samples, seed=seed, activation=act,
                         miller_madow=miller_madow, reduce=reduce, config=config,
                         memory_budget=memory_budget, **kw)  # fmt: skip
    return d, geo, kw, bias


# Each kind with one response in turn (every response on 1d, 2d and 3d): fewer compiles on a GPU.
CASES = [(*kind, *RESPONSES[i % len(RESPONSES)]) for i, kind in enumerate(KINDS)]


@pytest.mark.parametrize(
    "name, make, shape, taps, act, affine", CASES, ids=[f"{c[0]}-{c[4]}" for c in CASES]
)
def test_fused_conv_equals_the_estimator_on_its_own_rows(name, make, shape, taps, act, affine):
    torch.manual_seed(len(name))
    conv = make()
    d, geo, kw, bias = _run(conv, shape, taps, 300, seed=7, act=act, affine=affine)
    k, s = geo.taps, 300
    cin = conv.in_channels
    # Rows: 0 exactly at the taps in the padding, on the channel's range elsewhere.
    u = d.u.cpu().reshape(s, cin, k)
    inside = d.inside[:, None, :].expand(s, cin, k)
    assert torch.equal(u[~inside], torch.zeros_like(u[~inside]))
    lo, hi = _ranges(cin, torch.Generator().manual_seed(7))
    assert bool(((u >= lo[None, :, None]) & (u <= hi[None, :, None]))[inside].all())
    # Positions are uniform over the output positions, so (with padding) some taps are padded.
    if any(p != (0, 0) for p in geo.padding):
        assert 0 < float((~d.inside).float().mean()) < 1
    # The response passes 1 and 1b computed is torch's (grouped product, bias, affine, activation).
    ref = reference_conv_response(d.u, conv.weight.detach(), conv.groups, bias, **kw,
                                  activation=act)  # fmt: skip
    mag = reference_conv_response(d.u.abs(), conv.weight.detach().abs(), conv.groups).cpu()
    if "scale" in kw:
        mag = mag * kw["scale"].abs().max().cpu()
    bound = ULPS * EPS * (mag + ref.abs().cpu() + 1.0)
    assert bool(((d.y.cpu() - ref.cpu()).abs() <= bound).all())
    # Ranges: the x columns' and the response's minima and maxima; the stored y codes are the
    # response's codes on them (up to rounding at a bin edge, module docstring).
    xr, yr = d.run.x_ranges.cpu(), d.run.y_ranges.cpu()
    torch.testing.assert_close(xr[:, 0], d.x.cpu().double().amin(0), rtol=0, atol=0)
    torch.testing.assert_close(xr[:, 1], d.x.cpu().double().amax(0), rtol=0, atol=0)
    y64 = d.y.cpu().double()
    torch.testing.assert_close(yr, torch.stack([y64.amin(0), y64.amax(0)], 1), rtol=ULPS * EPS,
                               atol=0)  # fmt: skip
    assert_codes_agree_off_edges(d.y, d.run.y_codes, yr, 16, 2 * bound)
    # MI: the float64 estimator on the kernel's rows, binned on the kernel's ranges, and the
    # y codes pass 2 counted.
    xc, _ = cf.quantize(d.x.cpu(), 16, xr, backend="cpu")
    yc = d.run.y_codes.cpu()
    want = cf.pairwise_mi(xc, yc, 16, backend="cpu", groups=conv.groups)
    units = cin * (k if taps == "all" else 1)
    assert d.run.matrix.shape == (units, conv.out_channels)
    torch.testing.assert_close(d.run.matrix.cpu(), want, rtol=0, atol=TOL)


def test_sums_and_miller_madow_agree_with_the_matrix():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    shape = (4, 6, 5)
    for mm in (False, True):
        m, _, _, _ = _run(conv, shape, "all", 256, seed=3, act="relu", miller_madow=mm)
        s, _, _, _ = _run(conv, shape, "all", 256, seed=3, act="relu", miller_madow=mm,
                          reduce="sum")  # fmt: skip
        matrix = m.run.matrix.cpu().double()
        torch.testing.assert_close(s.run.per_x.cpu(), matrix.sum(1), rtol=0, atol=1e-5)
        torch.testing.assert_close(s.run.per_y.cpu(), matrix.sum(0), rtol=0, atol=1e-5)
        # Pairs across groups are exactly 0.
        assert torch.equal(matrix[:18, 3:], torch.zeros(18, 3, dtype=torch.float64))
        assert torch.equal(matrix[18:, :3], torch.zeros(18, 3, dtype=torch.float64))


def test_zero_weights_and_constant_channels_give_exactly_zero():
    conv = nn.Conv2d(3, 4, 3, padding=1).to(DEVICE)
    geo = ConvGeometry.of(conv, (3, 5, 5))
    kw = dict(geometry=geo, samples=300, seed=1, activation="relu")
    w0 = torch.zeros_like(conv.weight)
    m = lc.local_conv_mi(w0, conv.bias.detach(), -1.0, 1.0, **kw)
    assert torch.equal(m.cpu(), torch.zeros_like(m.cpu()))
    # A constant channel (lo == hi) and no padding: its units are constant, MI exactly 0.
    conv = nn.Conv2d(3, 4, 3).to(DEVICE)
    geo = ConvGeometry.of(conv, (3, 5, 5))
    lo = torch.tensor([-1.0, 0.5, -1.0], device=DEVICE)
    hi = torch.tensor([1.0, 0.5, 1.0], device=DEVICE)
    m = lc.local_conv_mi(conv.weight.detach(), conv.bias.detach(), lo, hi, geometry=geo,
                         samples=300, seed=1)  # fmt: skip
    assert torch.equal(m[9:18].cpu(), torch.zeros(9, 4))
    assert float(m[:9].sum()) > 0


def test_channel_slabs_give_the_mi_of_one_slab():
    # GPU tile shapes (8-channel pair tiles, 16-channel y blocks), two groups of 20 channels
    # and a budget for the codes of 8 channels: 5 slabs, one of them across the group boundary
    # and every y block of passes 1 and 1b split over two slabs.
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 40, 3, padding=1, groups=2)
    shape, samples = (4, 5, 5), 200
    cfg = local_plan.local_tile_config(36, 40, 16, interpret=False)
    assert (cfg.py, cfg.yw) == (8, 16)
    one, geo, kw, bias = _run(conv, shape, "all", samples, seed=2, act="relu", config=cfg)
    run, _, _, _ = _run(conv, shape, "all", samples, seed=2, act="relu", config=cfg,
                        memory_budget=8 * samples)  # fmt: skip
    assert one.run.slabs == [(0, 40)] and run.run.slabs == [(c, c + 8) for c in range(0, 40, 8)]
    torch.testing.assert_close(run.run.matrix, one.run.matrix, rtol=0, atol=TOL)
    # ... and it is the estimator's MI on the kernel's rows and stored codes (cross-group 0).
    xc, _ = cf.quantize(run.x.cpu(), 16, run.run.x_ranges.cpu(), backend="cpu")
    want = cf.pairwise_mi(xc, run.run.y_codes.cpu(), 16, backend="cpu", groups=2)
    torch.testing.assert_close(run.run.matrix.cpu(), want, rtol=0, atol=TOL)
    assert torch.equal(run.run.matrix[:18, 20:].cpu(), torch.zeros(18, 20))
    assert float(run.run.matrix.max()) > 0.01


def test_same_seed_same_rows_and_other_seed_other_rows():
    conv = nn.Conv1d(2, 3, 3, padding=1).to(DEVICE)
    geo = ConvGeometry.of(conv, (2, 8))
    kw = dict(geometry=geo, samples=200, reduce="sum", return_ranges=True)
    a = lc.local_conv_mi(conv.weight.detach(), None, -1.0, 1.0, seed=4, **kw)
    b = lc.local_conv_mi(conv.weight.detach(), None, -1.0, 1.0, seed=4, **kw)
    c = lc.local_conv_mi(conv.weight.detach(), None, -1.0, 1.0, seed=5, **kw)
    assert torch.equal(a[2], b[2]) and torch.equal(a[0][1], b[0][1])
    assert not torch.equal(a[2], c[2])


def _source(conv, shape, lo, hi, rows):
    with torch.no_grad():
        positions = conv(torch.zeros(1, *shape))[0, 0].numel()
    return row_source(Layer("l", conv), ResponsePoint(), index=0, rows=rows,
                      input_shape=tuple(shape), positions=positions, lo=lo, hi=hi, taps="all",
                      seed=1, device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (4, 7, 7)),
        (lambda: nn.Conv1d(3, 3, 5, padding=2, groups=3), (3, 9)),
    ],
)
def test_fused_conv_equals_the_patches_path_in_distribution(make, shape):
    torch.manual_seed(0)
    conv, lo, hi = structured_conv(make())
    k = conv.weight[0, 0].numel()
    rows = 8192
    src = _source(conv, shape, lo, hi, rows)
    x, y = src.make(0, rows)
    unfused = cf.pairwise_mi(x, y, bins=8, groups=conv.groups)
    geo = ConvGeometry.of(conv, shape)
    d = local_conv_debug(conv.to(DEVICE).weight.detach(), conv.bias.detach(), lo.to(DEVICE),
                         hi.to(DEVICE), geometry=geo, samples=rows, seed=9, bins=8)  # fmt: skip
    fused = d.run.matrix.cpu()
    # The same fraction of padding taps (both near the exact fraction over output positions).
    exact = 1 - float(d.inside.float().mean())
    positions = torch.arange(torch.Size(geo.output_size).numel())
    all_base = torch.zeros((3, len(positions)), dtype=torch.int64)
    rest, dims = positions, len(geo.output_size)
    for dd in reversed(range(dims)):
        o = rest % geo.output_size[dd]
        rest = rest // geo.output_size[dd]
        all_base[3 - dims + dd] = o * geo.stride[dd] - geo.padding[dd][0]
    from fused_debug import conv_inside

    exact = 1 - float(conv_inside(geo, all_base).float().mean())
    fused_pad = float((d.u.cpu() == 0).double().mean())
    unfused_pad = float((x == 0).double().mean())
    assert exact > 0.05
    assert fused_pad == pytest.approx(exact, abs=0.01)
    assert unfused_pad == pytest.approx(exact, abs=0.01)
    # The same MI up to estimator noise.
    torch.testing.assert_close(fused, unfused, rtol=0, atol=0.05)
    assert float(fused[k // 2, 0]) > 0.5 and float(unfused[k // 2, 0]) > 0.5


def test_score_model_measures_convolutions_fused_like_the_patches_path():
    """End to end: every zero-padded convolution with an eval BN / activation response goes
    to the fused kernel (path, response note, input units), and its scores match the unfused
    patches path within estimator noise."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6),  # depthwise
        nn.SiLU(),
        nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect"),  # stays unfused
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),  # 1x1: the Linear kernel
    ).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    net = net.to(DEVICE)
    kw = dict(mode="local", examples=8, samples_per_layer=4096, seed=2, progress=False, bins=8)
    fused = cf.score_model(net, (3, 8, 8), fused_local=True, **kw)
    unfused = cf.score_model(net, (3, 8, 8), fused_local=False, **kw)
    for name in ("0", "3", "7"):
        lf, lu = fused.layers[name], unfused.layers[name]
        assert lf.path == "fused-triton" and lf.response.endswith("[fused Triton local kernel]")
        assert lu.path == "patches"
        assert lf.input_units == lu.input_units and lf.samples == lu.samples == 4096
        torch.testing.assert_close(lf.incoming, lu.incoming, rtol=0.15, atol=0.1)
        torch.testing.assert_close(lf.outgoing, lu.outgoing, rtol=0.15, atol=0.1)
    assert fused.layers["5"].path != "fused-triton"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(taps="middle"), "taps"),
        (dict(samples=0), "samples"),
        (dict(bins=1), "bins"),
        (dict(memory_budget=-1), "memory_budget"),
        (dict(memory_budget=64 * 6 - 1), "memory_budget"),
        (dict(activation="elu"), "activation"),
        (dict(lo=torch.zeros(5)), "lo"),
        (dict(geometry="3x3"), "geometry"),
        (
            dict(geometry=ConvGeometry((5, 5), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 4)),
            "groups",
        ),  # fmt: skip
        (dict(geometry=ConvGeometry((5,), (3,), (1,), ((1, 1),), (1,), 1)), "entries|kernel"),
        (
            dict(geometry=ConvGeometry((1, 1), (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1)),
            "no output",
        ),  # fmt: skip
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    conv = nn.Conv2d(3, 6, 3, padding=1).to(DEVICE)
    args = dict(geometry=ConvGeometry.of(conv, (3, 5, 5)), samples=64, seed=0, lo=-1.0, hi=1.0)
    args.update(kwargs)
    lo, hi = args.pop("lo"), args.pop("hi")
    with pytest.raises(ValueError, match=match):
        lc.local_conv_mi(conv.weight.detach(), None, lo, hi, **args)


@pytest.mark.skipif(not nvidia_tooling(), reason="no Triton NVIDIA backend with ptxas")
def test_local_conv_kernels_compile_for_sm90():
    out = compile_check("--local-conv", "--smoke")
    assert "local_conv ranges" in out and "local_conv mi_sums" in out
    assert "wgmma" in out
