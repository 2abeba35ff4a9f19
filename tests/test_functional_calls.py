"""Layers measured however they are called (issue 18, item 1): through their weight by a
functional call of the module that holds them (F.linear, F.conv2d,
F.multi_head_attention_forward), and several times per forward pass (rows pooled)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import causalprune_fast as cf
from causalprune_fast.base.noise import INPUT, stream, uniform_examples
from causalprune_fast.model.functional_layers import linear_maps

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")
KW = dict(examples=8, samples_per_layer=512, progress=False)


class Block(nn.Module):
    """A Linear and a Conv2d used as modules (``functional=False``) or through their weights
    by F.linear and F.conv2d (``functional=True``): the same function."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.qkv = nn.Linear(4, 6)
        self.conv = nn.Conv2d(6, 6, 3, padding=1, stride=1)

    def forward(self, x):
        if self.functional:
            y = F.linear(x, self.qkv.weight, self.qkv.bias)
        else:
            y = self.qkv(x)
        y = y.transpose(1, 2).reshape(x.shape[0], 6, 4, 4)
        if self.functional:
            z = F.conv2d(y, self.conv.weight, self.conv.bias, stride=1, padding=(1, 1))
        else:
            z = self.conv(y)
        return z.flatten(1)


def block(functional: bool) -> Block:
    torch.manual_seed(0)
    return Block(functional).eval()


def hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


@pytest.mark.parametrize("mode,fused", [("local", False), ("local", True), ("propagated", False)])
def test_a_functional_call_is_measured_as_the_layer_is(mode, fused):
    """A layer whose weight its parent passes to F.linear / F.conv2d is measured at that call,
    on the same rows as when the parent calls the layer: the same scores, in both modes and
    on the fused path (Triton's interpreter on the CPU)."""
    if fused and not cf.available_backends()["triton"].available:
        pytest.skip(cf.available_backends()["triton"].detail)
    kw = dict(KW, mode=mode, fused_local=fused)
    plain = cf.score_model(block(False), (16, 4), **kw)
    net = block(True)
    before = hook_counts(net)
    functional = cf.score_model(net, (16, 4), **kw)
    assert hook_counts(net) == before
    assert not torch._C._is_torch_function_mode_enabled()
    assert list(functional.layers) == ["qkv", "conv"] == list(plain.layers)
    qkv, conv = functional.layers["qkv"], functional.layers["conv"]
    assert qkv.called_by == "F.linear in '<root>'" and conv.called_by == "F.conv2d in '<root>'"
    assert (qkv.kind, conv.kind, qkv.calls) == ("Linear", "Conv2d", 1)
    want = {"local": "fused-triton" if fused else "patches", "propagated": "propagated"}[mode]
    assert qkv.path == conv.path == want
    for name in ("qkv", "conv"):
        torch.testing.assert_close(
            functional.layers[name].incoming, plain.layers[name].incoming, rtol=1e-6, atol=1e-6
        )
        torch.testing.assert_close(
            functional.layers[name].outgoing, plain.layers[name].outgoing, rtol=1e-6, atol=1e-6
        )
    assert not functional.unsupported


class Twice(nn.Module):
    """``shared`` called on two inputs of different scale per forward pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.shared = nn.Linear(3, 4)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        a = torch.relu(self.shared(x))
        b = torch.relu(self.shared(5 * x + 10))
        return self.head(torch.cat([a, b], -1))


def test_a_layer_called_twice_pools_the_rows_of_both_calls():
    """Propagated mode, every row kept: the layer's MI is that of the rows of both calls,
    built here by hand and measured with the float64 reference estimator."""
    net = Twice().eval()
    examples, bins = 6, 4
    scores = cf.score_model(
        net, (5, 3), mode="propagated", examples=examples, samples_per_layer=None, bins=bins,
        progress=False, backend="reference",
    )  # fmt: skip
    got = scores.layers["shared"]
    assert got.calls == 2 and got.samples == 2 * examples * 5 and got.called_by is None
    x = uniform_examples((5, 3), 0, examples, -1.0, 1.0, seed=0, stream=stream(INPUT))
    w, b = net.shared.weight.detach(), net.shared.bias.detach()
    rows_x = torch.cat([x.reshape(-1, 3), (5 * x + 10).reshape(-1, 3)])
    rows_y = F.linear(rows_x, w, b)  # the raw output: the root calls the layer twice
    assert got.response == "output" and "called 2 times" in got.response_reason
    mi = cf.pairwise_mi(rows_x.double(), rows_y.double(), bins=bins, backend="reference")
    torch.testing.assert_close(got.incoming, mi.double().sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.outgoing, mi.double().sum(1), rtol=1e-5, atol=1e-6)


def test_local_mode_calibrates_a_layer_called_twice_on_all_its_calls():
    """Local mode: the noise range of each input channel covers the inputs of every call (the
    first call's in [-1, 1], the second's in [5, 15])."""
    net = Twice().eval()
    scores = cf.score_model(net, (5, 3), mode="local", **KW)
    got = scores.layers["shared"]
    assert got.calls == 2 and got.samples == KW["samples_per_layer"]
    lo, hi = got.x_ranges[:, 0], got.x_ranges[:, 1]
    assert bool((lo < 0).all() and (hi > 10).all())


class Rescaled(nn.Module):
    """A convolution called on an input and on its downsampled copy (two input shapes), or
    on the input and its negation (one shape)."""

    def __init__(self, padding_mode: str, downsample: bool):
        super().__init__()
        torch.manual_seed(2)
        self.downsample = downsample
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=padding_mode)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        a = self.conv(x).mean((2, 3))
        b = self.conv(F.avg_pool2d(x, 2) if self.downsample else -x).mean((2, 3))
        return self.head(torch.cat([a, b], 1))


@pytest.mark.parametrize("padding_mode,path", [("zeros", "patches"), ("reflect", "full-tensor")])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("downsample", [True, False])
def test_a_convolution_called_twice(padding_mode, path, fused, downsample):
    """A convolution called twice, on inputs of two sizes or of one, is measured in local mode
    on rows drawn over both calls' positions (patches; with two sizes the fused kernel, which
    takes one geometry, leaves it to the patches path) or split over both shapes
    (full-tensor), and in propagated mode on the rows of both calls."""
    if fused and not cf.available_backends()["triton"].available:
        pytest.skip(cf.available_backends()["triton"].detail)
    net = Rescaled(padding_mode, downsample).eval()
    local = cf.score_model(net, (3, 8, 8), fused_local=fused, **KW)
    got = local.layers["conv"]
    if fused and padding_mode == "zeros" and not downsample:
        path = "fused-triton"
    assert (got.calls, got.path, got.samples) == (2, path, KW["samples_per_layer"])
    assert bool((got.incoming > 0).all())
    prop = cf.score_model(net, (3, 8, 8), mode="propagated", **KW)
    assert prop.layers["conv"].calls == 2
    positions = 64 + (16 if downsample else 64)
    assert prop.layers["conv"].samples == min(KW["samples_per_layer"], 8 * positions)


def test_swin_attention_is_measured():
    """torchvision's Swin (v1 and v2) passes its attention's qkv and proj weights to F.linear:
    every Linear layer is measured, in both modes; the model is left as found."""
    from torchvision.models.swin_transformer import (
        PatchMergingV2,
        SwinTransformer,
        SwinTransformerBlockV2,
    )

    small = dict(
        patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[2, 4], window_size=[4, 4],
        stochastic_depth_prob=0.0, num_classes=5,
    )  # fmt: skip
    for extra in ({}, {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2}):
        torch.manual_seed(0)
        net = SwinTransformer(**small, **extra).eval()
        linear = {n for n, m in net.named_modules() if isinstance(m, nn.Linear)}
        attention = {n for n in linear if n.endswith(("attn.qkv", "attn.proj"))}
        assert len(attention) == 6
        before = hook_counts(net)
        for mode in ("local", "propagated"):
            scores = cf.score_model(net, (3, 32, 32), mode=mode, **KW)
            assert linear <= set(scores.layers)
            for name in attention:
                got = scores.layers[name]
                assert got.called_by.startswith("F.linear in '") and got.calls == 1
                assert bool(torch.isfinite(got.incoming).all()) and got.sensitivity > 0
            assert not any("not called" in r for r in scores.unsupported.values())
        assert hook_counts(net) == before
        assert not torch._C._is_torch_function_mode_enabled()


def test_coat_layers_called_several_times_are_measured(tmp_path):
    """timm's CoaT shares its convolutional position encodings between blocks: those layers
    are measured on the rows of all their calls, the count is in LayerScores and the file."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(
        "coat_lite_tiny", pretrained=False, img_size=32, embed_dims=[16, 16, 16, 16],
        serial_depths=[2, 1, 1, 1], num_heads=8, mlp_ratios=[2, 2, 2, 2], num_classes=3,
    ).eval()  # fmt: skip
    weighted = {n for n, m in net.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    scores = cf.score_model(net, (3, 32, 32), **KW)
    assert weighted == set(scores.layers)
    shared = {n: s.calls for n, s in scores.layers.items() if s.calls > 1}
    assert shared == {
        "cpe1.proj": 2, "crpe1.conv_list.0": 2, "crpe1.conv_list.1": 2, "crpe1.conv_list.2": 2
    }  # fmt: skip
    path = tmp_path / "coat.safetensors"
    scores.save(path)
    loaded = cf.CausalScores.load(path)
    assert {n: s.calls for n, s in loaded.layers.items() if s.calls > 1} == shared


class Computed(nn.Module):
    """Passes a weight computed in the forward pass to F.linear: not a parameter."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.linear(x, self.fc.weight * 2.0, self.fc.bias))


def test_a_functional_call_of_a_computed_weight_is_noted_not_attributed():
    scores = cf.score_model(Computed().eval(), (4,), **KW)
    assert list(scores.layers) == ["head"]
    note = scores.unsupported["<root>: F.linear"]
    assert "not a parameter of any module" in note and "(4, 4)" in note
    assert scores.unsupported["fc"].startswith("not called in the forward pass")


class Differing(nn.Module):
    """Uses ``conv``'s weight with another stride than its own call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        y = self.conv(x) + F.conv2d(x, self.conv.weight, self.conv.bias, 1, 1)[..., :, :]
        z = F.conv2d(y, self.conv.weight, self.conv.bias, stride=2, padding=1)
        return self.head(z.mean((2, 3)))


def test_calls_with_different_arguments_are_listed_with_the_reason():
    scores = cf.score_model(Differing().eval(), (3, 8, 8), **KW)
    assert "conv" not in scores.layers
    assert "called with different arguments (F.conv2d in '<root>'" in scores.unsupported["conv"]


class Attention(nn.Module):
    """Custom attention through F.multi_head_attention_forward with the weights of Linear
    layers: separate q, k, v projections or a packed one, and the out projection."""

    def __init__(self, separate: bool):
        super().__init__()
        torch.manual_seed(3)
        self.separate = separate
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))
        self.packed = nn.Linear(8, 24)

    def forward(self, x):  # [N, L, E], batch first
        t = x.transpose(0, 1)
        kw = dict(training=False, need_weights=False)
        if self.separate:
            bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
            kw.update(
                use_separate_proj_weight=True, q_proj_weight=self.q.weight,
                k_proj_weight=self.k.weight, v_proj_weight=self.v.weight,
            )  # fmt: skip
            weight = None
        else:
            weight, bias = self.packed.weight, self.packed.bias
        y = F.multi_head_attention_forward(
            t, t, t, 8, 2, weight, bias, None, None, False, 0.0, self.out.weight, self.out.bias,
            **kw,
        )[0]  # fmt: skip
        return y.transpose(0, 1)


@pytest.mark.parametrize("separate", [True, False])
def test_multi_head_attention_forward_maps(separate):
    """Each linear map found in a call of F.multi_head_attention_forward computes its output
    from its input (the out projection's input recomputed), and the layers whose weights the
    call uses are measured."""
    net = Attention(separate).eval()
    x = torch.randn(2, 5, 8)
    t = x.transpose(0, 1)
    weights = (None, None) if separate else (net.packed.weight, net.packed.bias)
    bias = torch.cat([net.q.bias, net.k.bias, net.v.bias]) if separate else weights[1]
    extra = (
        dict(
            use_separate_proj_weight=True,
            q_proj_weight=net.q.weight,
            k_proj_weight=net.k.weight,
            v_proj_weight=net.v.weight,
        )  # fmt: skip
        if separate
        else {}
    )
    args = (t, t, t, 8, 2, weights[0], bias, None, None, False, 0.0, net.out.weight, net.out.bias)
    kwargs = dict(training=False, need_weights=False, **extra)
    with torch.no_grad():
        out = F.multi_head_attention_forward(*args, **kwargs)
        maps = linear_maps(F.multi_head_attention_forward, args, kwargs, out)
        assert len(maps) == (4 if separate else 2)
        for m in maps:
            torch.testing.assert_close(F.linear(m.input(), m.weight, m.bias), m.output)
    scores = cf.score_model(net, (5, 8), **KW)
    names = ["q", "k", "v", "out"] if separate else ["packed", "out"]
    assert set(scores.layers) == set(names)
    assert all(
        s.called_by.startswith("F.multi_head_attention_forward") for s in scores.layers.values()
    )


class Varying(nn.Module):
    """Calls ``fc`` once per example: a call count that depends on the input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return torch.cat([self.fc(row[None]) for row in x])


def test_a_call_count_that_changes_between_passes_is_an_error_naming_the_layer():
    net = Varying().eval()
    before = hook_counts(net)
    with pytest.raises(ValueError, match=r"layer 'fc' is called .* the probe pass"):
        cf.score_model(net, (3,), mode="propagated", **KW)
    assert hook_counts(net) == before
    assert not torch._C._is_torch_function_mode_enabled()


class Failing(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        y = F.linear(x, self.fc.weight, self.fc.bias)
        if x.shape[0] > 1:
            raise RuntimeError("boom after a functional call")
        return y


@pytest.mark.parametrize("mode", ["local", "propagated"])
def test_the_model_is_left_as_found_when_a_pass_fails(mode):
    net = Failing().eval()
    before = hook_counts(net)
    with pytest.raises(RuntimeError, match="boom after a functional call"):
        cf.score_model(net, (3,), mode=mode, **KW)
    assert hook_counts(net) == before
    assert not torch._C._is_torch_function_mode_enabled()
