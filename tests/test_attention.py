"""nn.MultiheadAttention's projections as measured virtual layers, and attention-head scores
(issue 10, item 4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import causalprune_fast as cf
from causalprune_fast.base.noise import uniform_examples
from causalprune_fast.model.attention import VirtualLayer, head_scores
from causalprune_fast.model.discovery import find_layers

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")


class SelfAttention(nn.Module):
    """One MHA block called like torchvision's EncoderBlock (self-attention)."""

    def __init__(self, e: int = 8, heads: int = 2, batch_first: bool = True, **kw):
        super().__init__()
        self.attn = nn.MultiheadAttention(e, heads, batch_first=batch_first, **kw)
        self.fc = nn.Linear(e, 3)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.attn(x, x, x, need_weights=False)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.fc(y)


def _virtual(model: nn.Module) -> dict[str, VirtualLayer]:
    found, _ = find_layers(model)
    return {layer.name: layer for layer in found if isinstance(layer, VirtualLayer)}


def _capture(layer: VirtualLayer, call) -> list[tuple[torch.Tensor, torch.Tensor]]:
    got = []
    handle = layer.register_forward_hook(lambda m, a, out: got.append((a[0], out)))
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
    return got


def test_find_layers_replaces_out_proj_and_adds_in_proj():
    model = SelfAttention()
    found, unsupported = find_layers(model)
    names = [layer.name for layer in found]
    assert names == ["attn.in_proj", "attn.out_proj", "fc"]
    assert "attn" not in unsupported  # in_proj_weight is scored now
    assert found[0].in_channels == 8 and found[0].out_channels == 24
    assert found[1].in_channels == 8 and found[1].out_channels == 8


@pytest.mark.parametrize("batch_first", [True, False])
def test_in_proj_measures_f_linear_of_the_same_noise(batch_first):
    torch.manual_seed(0)
    model = SelfAttention(batch_first=batch_first).eval()
    layer = _virtual(model)["attn.in_proj"]
    x = uniform_examples((5, 8), 0, 3, -1.0, 1.0, seed=0)  # [N, L, E]
    got = _capture(layer, lambda: model(x))
    assert len(got) == 1
    xin, y = got[0]
    assert xin.shape == (3, 5, 8)  # batch first whatever the module's layout
    torch.testing.assert_close(xin, x)
    a = model.attn
    torch.testing.assert_close(y, F.linear(x, a.in_proj_weight, a.in_proj_bias))
    torch.testing.assert_close(layer.forward(x), y)  # local mode drives the same map


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", [False, True])
def test_out_proj_input_reproduces_the_module_output(batch_first, masks):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    holder = nn.Sequential(mha)
    layer = _virtual(holder)["0.out_proj"]
    n, length, source = 3, 5, 4
    q = torch.rand(n, length, 8) * 2 - 1
    kv = torch.rand(n, source, 8) * 2 - 1
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    kwargs = {}
    if masks:  # cross-attention, a padding mask and an attention mask, weights requested
        pad = torch.zeros(n, source, dtype=torch.bool)
        pad[0, -1] = True
        kwargs = dict(key_padding_mask=pad, attn_mask=torch.rand(length, source) > 0.7)
    outs = []
    got = _capture(
        layer, lambda: outs.append(mha(q, kv if masks else q, kv if masks else q, **kwargs))
    )
    assert len(got) == 1
    z, y = got[0]
    real = outs[0][0] if batch_first else outs[0][0].transpose(0, 1)
    assert z.shape == (n, length, 8)
    torch.testing.assert_close(y, real)  # the measured output is the module's output
    torch.testing.assert_close(F.linear(z, mha.out_proj.weight, mha.out_proj.bias), real)
    torch.testing.assert_close(layer.forward(z), real)
    assert not z.allclose(real, atol=1e-3)  # out_proj is not the identity here


def _tiny_vit(seed: int = 0):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    return torchvision.models.VisionTransformer(
        image_size=16,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    )


@pytest.mark.parametrize("mode", ["local", "propagated"])
def test_torchvision_vit_scores_attention_projections_and_heads(mode):
    model = _tiny_vit()
    scores = cf.score_model(
        model, (3, 16, 16), mode=mode, examples=8, samples_per_layer=512, progress=False
    )
    for k in range(2):
        attn = f"encoder.layers.encoder_layer_{k}.self_attention"
        for name, width in ((f"{attn}.in_proj", 48), (f"{attn}.out_proj", 16)):
            s = scores[name]
            assert s.shape == (width,), name
            assert torch.isfinite(s).all() and (s >= 0).all() and s.sum() > 0, name
            # propagated: every (example, token) is a sample; local: samples_per_layer rows
            assert scores.layers[name].samples == (8 * 5 if mode == "propagated" else 512)
        heads = scores.heads[attn]
        assert heads.shape == (2,)
        per_channel = scores[f"{attn}.in_proj"].reshape(3, 2, 8).sum(dim=(0, 2))
        torch.testing.assert_close(heads, per_channel)
    assert not any("self_attention" in name for name in scores.unsupported)


def test_cross_attention_and_separate_weights_are_reported():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.sep = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)

        def forward(self, x):
            kv = x[:, :, :6] * 2
            y, _ = self.attn(x, x * 2, x * 2)
            z, _ = self.sep(y, kv, kv)
            return z

    scores = cf.score_model(Cross(), (4, 8), samples=8, progress=False, mode="propagated")
    assert "cross-attention" in scores.unsupported["attn.in_proj"]
    assert "separate q/k/v" in scores.unsupported["sep.in_proj"]
    assert scores["attn.out_proj"].shape == (8,) and scores["sep.out_proj"].shape == (8,)
    assert scores.heads == {}


def test_model_returning_dicts_and_tuples():
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x).relu()
            return {"logits": self.b(h), "extra": (h, None, "text")}

    for mode in ("local", "propagated"):
        scores = cf.score_model(DictOut(), (3, 4), samples=8, progress=False, mode=mode)
        assert scores["a"].shape == (6,) and scores["b"].shape == (2,)


def test_head_scores_grouped_query_split_evenly():
    q = torch.arange(8, dtype=torch.float64)  # 4 query heads of 2 channels
    k = torch.tensor([1.0, 1.0, 10.0, 10.0], dtype=torch.float64)  # 2 kv heads
    v = torch.tensor([0.0, 2.0, 0.0, 4.0], dtype=torch.float64)
    spec = {"num_heads": 4, "parts": [["q", 0, 8, 4], ["k", 0, 4, 2], ["v", 0, 4, 2]]}
    got = head_scores({"attn": spec}, {"q": q, "k": k, "v": v})["attn"]
    # query head h uses kv head h // 2; a kv head's score is shared by its 2 query heads
    expected = torch.tensor([1 + 2, 5 + 2, 9 + 12, 13 + 12], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    assert float(got.sum()) == pytest.approx(float(q.sum() + k.sum() + v.sum()))
    # the older packed form {"qkv": name, "num_heads": n} still reads
    qkv = torch.arange(12, dtype=torch.float64)
    legacy = head_scores({"a": {"qkv": "l", "num_heads": 2}}, {"l": qkv})["a"]
    torch.testing.assert_close(legacy, qkv.reshape(3, 2, 2).sum(dim=(0, 2)))
    assert head_scores({"attn": spec}, {"q": q}) == {}  # a projection without scores


def test_prune_torchvision_vit_keeps_heads_consistent():
    pytest.importorskip("torch_pruning")
    model = _tiny_vit()
    pruned, report = cf.prune(model, 0.25, (3, 16, 16), samples=4, mode="propagated")
    assert pruned.hidden_dim == pruned.conv_proj.out_channels < 16
    for block in pruned.encoder.layers:
        a = block.self_attention
        assert a.num_heads == 2 and a.head_dim * a.num_heads == a.embed_dim == pruned.hidden_dim
        assert tuple(a.in_proj_weight.shape) == (3 * a.embed_dim, a.embed_dim)
        assert a.out_proj.in_features == a.out_proj.out_features == a.embed_dim
        assert block.mlp[0].out_features < 32
    assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    assert report.params_after < report.params_before
    again = cf.score_model(pruned, (3, 16, 16), samples=4, progress=False)
    e = pruned.hidden_dim
    assert again["encoder.layers.encoder_layer_0.self_attention.in_proj"].shape == (3 * e,)
    assert again.heads["encoder.layers.encoder_layer_0.self_attention"].shape == (2,)
