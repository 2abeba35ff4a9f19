"""The fused local-mode convolution kernel (estimator/triton/local_conv.py) against the unfused
``patches`` path on the same layer: patch rows made by torch (scoring/sampling.py), binned and
measured by the backend's pairwise MI. Both measure ``samples_per_layer`` patch rows of one layer
(its calibration pass is not timed); the work is the in-group pair-samples.

    pytest benchmarks/bench_local_conv.py --benchmark-json=local_conv.json

Needs a CUDA GPU (skipped without one); ``CAUSALPRUNE_BENCH_SMOKE=1`` runs tiny shapes, on
the CPU under Triton's interpreter where there is no GPU. The GPU's name is in the JSON's
``machine_info`` and in every benchmark's ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import SMOKE

import causalprune_fast as cf
from causalprune_fast.base.conv_geometry import ConvGeometry
from causalprune_fast.model.layers import Layer
from causalprune_fast.model.response import ResponsePoint
from causalprune_fast.scoring.sampling import row_source

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
S = 256 if SMOKE else 16384
BINS = 16

# name: (make the convolution, input shape (C, *spatial), activation after an eval BatchNorm)
CASES = {
    "resnet 3x3 64->64 @56": (
        lambda: nn.Conv2d(64, 64, 3, padding=1, bias=False),
        (64, 56, 56),
        nn.ReLU,
    ),  # fmt: skip
    "resnet 3x3/2 128->256 @28": (
        lambda: nn.Conv2d(128, 256, 3, 2, 1, bias=False),
        (128, 28, 28),
        nn.ReLU,
    ),  # fmt: skip
    "mobilenet dw 3x3 96 @28": (
        lambda: nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False),
        (96, 28, 28),
        nn.ReLU6,
    ),  # fmt: skip
    "conv1d k5 d2 64->64 @128": (
        lambda: nn.Conv1d(64, 64, 5, padding=4, dilation=2),
        (64, 128),
        nn.SiLU,
    ),  # fmt: skip
}
SMOKE_CASES = {"tiny 3x3 g2 4->4 @6": (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2),
                                       (4, 6, 6), nn.ReLU)}  # fmt: skip


def _layer(make, shape, act):
    torch.manual_seed(0)
    conv = make()
    bn = (
        nn.BatchNorm1d(conv.out_channels)
        if conv.weight.dim() == 3
        else nn.BatchNorm2d(conv.out_channels)
    )
    with torch.no_grad():
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return conv.to(DEVICE).eval(), bn.to(DEVICE).eval(), act().to(DEVICE)


@pytest.mark.skipif(not (GPU or SMOKE), reason="needs a CUDA GPU (or CAUSALPRUNE_BENCH_SMOKE=1)")
@pytest.mark.benchmark(group="local conv layer, fused vs patches")
@pytest.mark.parametrize("path", ["fused-triton", "patches"])
@pytest.mark.parametrize("case", list(SMOKE_CASES if SMOKE else CASES))
def test_local_conv_layer(measure, benchmark, case, path):
    make, shape, act = (SMOKE_CASES if SMOKE else CASES)[case]
    conv, bn, fn = _layer(make, shape, act)
    cin, cout, g = conv.in_channels, conv.out_channels, conv.groups
    lo = -torch.rand(cin, device=DEVICE)
    hi = torch.rand(cin, device=DEVICE) + 0.5
    units = cin * conv.weight[0, 0].numel()
    if path == "fused-triton":
        from causalprune_fast.estimator.triton.local_conv import local_conv_mi

        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        shift = (bn.bias - bn.running_mean * scale).detach()
        geometry = ConvGeometry.of(conv, shape)
        name = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu"}[act]

        def run():
            bias = None if conv.bias is None else conv.bias.detach()
            return local_conv_mi(conv.weight.detach(), bias, lo, hi, geometry=geometry,
                                 samples=S, seed=1, bins=BINS, scale=scale, shift=shift,
                                 activation=name, reduce="sum")  # fmt: skip
    else:
        with torch.no_grad():
            positions = conv(torch.zeros(1, *shape, device=DEVICE))[0, 0].numel()
        response = ResponsePoint(steps=[("bn", bn), (act.__name__, fn)])
        src = row_source(Layer("l", conv), response, index=0, rows=S, input_shape=shape,
                         positions=positions, lo=lo, hi=hi, taps="all", seed=1, device=DEVICE,
                         dtype=torch.float32)  # fmt: skip

        def run():
            x, y = src.make(0, S)
            xc, _ = cf.quantize(x, BINS)
            yc, _ = cf.quantize(y, BINS)
            return cf.pairwise_mi(xc, yc, BINS, groups=g, reduce="sum")

    measure(run, S * units * cout // g, rounds=1 if SMOKE else 3)
    benchmark.extra_info.update(
        path=path, case=case, samples=S, bins=BINS, units=units, cout=cout, groups=g,
        device=torch.cuda.get_device_name() if GPU else "cpu (Triton interpreter)",
    )  # fmt: skip
