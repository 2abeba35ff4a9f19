"""Convolutions that pad in their forward (timm's TensorFlow-"SAME" ``Conv2dSame``, as in
``maxvit_tiny_tf_224``): their input units and local-mode patches follow the padding the
forward applies, not their ``padding`` attribute (0)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import causalprune_fast as cf
from causalprune_fast.base.conv_geometry import conv_padding
from causalprune_fast.model.layers import Layer, input_rows

timm_layers = pytest.importorskip("timm.layers")


def same_conv(cin: int, cout: int, k: int, stride: int, dilation: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return timm_layers.Conv2dSame(cin, cout, k, stride=stride, dilation=dilation)


@pytest.mark.parametrize("size, k, stride, dilation", [(8, 3, 2, 1), (7, 3, 2, 1), (9, 3, 1, 2)])
def test_conv_padding_is_what_the_forward_pads(size, k, stride, dilation):
    conv = same_conv(3, 4, k, stride, dilation)
    x = torch.rand(2, 3, size, size)
    pad = conv_padding(conv, (size, size))
    with torch.no_grad():
        ref = F.conv2d(F.pad(x, pad), conv.weight, conv.bias, stride, 0, dilation)
        torch.testing.assert_close(conv(x), ref)
    assert conv_padding(nn.Conv2d(3, 4, 3, padding=1), (size, size)) == (1, 1, 1, 1)


def test_input_rows_are_the_unfolded_padded_input():
    conv = same_conv(3, 4, 3, 2)  # 8 x 8 -> 4 x 4: one column of padding on the right only
    x = torch.rand(2, 3, 8, 8)
    out = conv(x)
    rows = torch.arange(out[:, 0].numel())
    units = input_rows(Layer("conv", conv), x, rows, "all")
    unfolded = F.unfold(F.pad(x, conv_padding(conv, (8, 8))), 3, stride=2)  # [N, C*9, L]
    torch.testing.assert_close(units, unfolded.transpose(1, 2).reshape(-1, 27))
    # Recomputing the layer from its units gives its output.
    y = units @ conv.weight.detach().reshape(4, -1).t() + conv.bias.detach()
    torch.testing.assert_close(y, out.detach().movedim(1, -1).reshape(-1, 4))


def test_a_conv_whose_forward_resizes_the_input_is_an_error_naming_it():
    class Upsampling(nn.Conv2d):
        def forward(self, x):
            return super().forward(F.interpolate(x, scale_factor=2.0))

    layer = Layer("up", Upsampling(3, 4, 3, padding=1))
    x = torch.rand(1, 3, 4, 4)
    rows = torch.arange(layer.module(x)[:, 0].numel())
    with pytest.raises(ValueError, match="'up'"):
        input_rows(layer, x, rows, "all")


@pytest.mark.parametrize("mode", ["local", "propagated"])
def test_models_with_same_convs_are_scored_in_both_modes(mode):
    torch.manual_seed(0)
    model = nn.Sequential(
        same_conv(3, 8, 3, 2), nn.ReLU(), same_conv(8, 6, 3, 2), nn.ReLU(), nn.Conv2d(6, 5, 1)
    ).eval()
    scores = cf.score_model(
        model, (3, 16, 16), mode=mode, examples=32, samples_per_layer=2048, progress=False
    )
    assert set(scores.layers) == {"0", "2", "4"}
    for name in ("0", "2"):
        s = scores[name]
        assert s.shape == (model.get_submodule(name).out_channels,)
        assert bool(torch.isfinite(s).all()) and bool((s > 0).all())


def test_fused_conv_geometry_has_the_padding_the_forward_adds():
    """The fused kernel's geometry (conv_geometry.ConvGeometry) pads a SAME conv as its forward
    does: asymmetric, one column right and bottom for 8 -> 4 at stride 2."""
    from causalprune_fast.base.conv_geometry import ConvGeometry

    conv = same_conv(3, 4, 3, 2)
    geometry = ConvGeometry.of(conv, (3, 8, 8))
    assert geometry.padding == ((0, 1), (0, 1))
    assert ConvGeometry.of(nn.Conv2d(3, 4, 3, padding=1), (3, 8, 8)).padding == ((1, 1), (1, 1))
    with torch.no_grad():
        assert geometry.output_size == tuple(conv(torch.rand(1, 3, 8, 8)).shape[2:])
