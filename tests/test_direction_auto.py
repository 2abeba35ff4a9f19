"""``direction="auto"`` (``in`` for conv channels, ``out`` for every other channel, ``in``
where no consumer is measured; issue 21) and the invariance of the causal scores and of the
pruning choice to function-preserving rescalings, which move weight magnitudes."""

from __future__ import annotations

import copy
import math
import warnings
from functools import partial

import hf_models
import pytest
import torch
import torch.nn as nn
from nets import pooled_cnn

import causalprune_fast as cf

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("torch_pruning", reason="torch-pruning is not installed")

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")

VOCAB, T, E, HEADS, KV_HEADS, INNER = 64, 8, 32, 4, 2, 48
TOKENS = dict(example_input=torch.zeros(1, T, dtype=torch.long), input_range=(0, VOCAB))
FAST = dict(samples_per_layer=2048, examples=8, progress=False)
llama = partial(hf_models.llama, E, HEADS, KV_HEADS, INNER, VOCAB)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
    )


def test_auto_is_in_for_conv_channels_and_out_for_linear_channels():
    cnn = pooled_cnn().eval()
    scores = cf.score_model(cnn, (3, 8, 8), direction="auto", **FAST)
    for name in ("0", "3"):  # conv channels, also the one read by the classifier
        torch.testing.assert_close(scores[name], scores.with_direction("in")[name])
    net = mlp().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto's fallback to "in" is no warning
        scores = cf.score_model(net, (6,), direction="auto", **FAST)
    out, inn = scores.with_direction("out"), scores.with_direction("in")
    for name in ("0", "2"):
        torch.testing.assert_close(scores[name], out[name])
        assert not torch.allclose(scores[name], inn[name])
    torch.testing.assert_close(scores["4"], inn["4"])  # the classifier: no consumer
    assert scores.fallbacks == {"4": "model output, no consumer"}


def test_auto_on_a_language_model_is_out_where_read_and_in_where_not():
    model = llama()
    scores = cf.score_model(model, direction="auto", **TOKENS, **FAST)
    with pytest.warns(UserWarning, match="no measured consumer"):  # "out" warns, "auto" not
        out = scores.with_direction("out")
    for name in scores:
        torch.testing.assert_close(scores[name], out[name])
    assert scores.config["direction"] == "auto"
    # cf.prune (CausalImportance per Torch-Pruning group) picks the same channels
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    cf.prune(a, 0.3, direction="auto", **TOKENS, **FAST)
    cf.prune(b, 0.3, direction="out", **TOKENS, **FAST)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def rescale_llama(model, gen: torch.Generator) -> None:
    """Per hidden dim after every RMSNorm (weight x s, the next projections' columns / s), per
    value channel (v_proj row x s, the o_proj column of every query head reading it / s) and
    per MLP neuron (up_proj row x s, down_proj column / s), s log-uniform in [1/8, 8]."""

    def draw(n):
        return torch.exp((torch.rand(n, generator=gen) * 2 - 1) * math.log(8.0))

    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        for norm, readers in (
            (layer.input_layernorm, (a.q_proj, a.k_proj, a.v_proj)),
            (layer.post_attention_layernorm, (m.gate_proj, m.up_proj)),
        ):
            s = draw(E)
            norm.weight.mul_(s)
            for p in readers:
                p.weight.div_(s)
        sv = draw(a.v_proj.out_features)
        a.v_proj.weight.mul_(sv[:, None])
        group = a.q_proj.out_features // a.v_proj.out_features
        d = a.head_dim
        a.o_proj.weight.div_(sv.view(-1, 1, d).expand(-1, group, d).reshape(-1))
        sm = draw(INNER)
        m.up_proj.weight.mul_(sm[:, None])
        m.down_proj.weight.div_(sm)
    s = draw(E)
    model.model.norm.weight.mul_(s)
    model.lm_head.weight.div_(s)


@torch.no_grad()
def rescale_cnn(model: nn.Sequential, gen: torch.Generator) -> None:
    """pooled_cnn without its BatchNorm: conv0 and conv3 output channels x s, their readers'
    input channels / s (ReLU and average pooling commute with a positive scale)."""
    for conv, reader in ((model[0], model[3]), (model[3], model[7])):
        s = torch.exp((torch.rand(conv.out_channels, generator=gen) * 2 - 1) * math.log(8.0))
        conv.weight.mul_(s.view(-1, 1, 1, 1))
        conv.bias.mul_(s)
        reader.weight.div_(s.view(1, -1, 1, 1) if reader.weight.dim() == 4 else s)


def _llama_case():
    model = llama()
    rescaled = copy.deepcopy(model)
    rescale_llama(rescaled, torch.Generator().manual_seed(3))
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    return model, rescaled, ids, (), TOKENS


def _cnn_case():
    model = pooled_cnn().eval()
    model[1] = nn.Identity()  # no BatchNorm: conv channel magnitudes are free
    rescaled = copy.deepcopy(model)
    rescale_cnn(rescaled, torch.Generator().manual_seed(3))
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return model, rescaled, x, ((3, 8, 8),), {}


def _outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("case", ["llama", "cnn"])
def test_default_scores_and_pruning_are_invariant_to_rescaling(case):
    model, rescaled, x, shape, kw = {"llama": _llama_case, "cnn": _cnn_case}[case]()
    a, b = _outputs(model, x), _outputs(rescaled, x)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    s1 = cf.score_model(model, *shape, **kw, **FAST)
    s2 = cf.score_model(rescaled, *shape, **kw, **FAST)
    for name in s1:
        torch.testing.assert_close(s2[name], s1[name], rtol=1e-3, atol=1e-6)
    # the pruned models keep the same channels, so they still compute the same function
    cf.prune(model, 0.25, *shape, **kw, **FAST)
    cf.prune(rescaled, 0.25, *shape, **kw, **FAST)
    a, b = _outputs(model, x), _outputs(rescaled, x)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    # ... while the weight magnitudes moved (what L2 magnitude ranks by)
    w1 = [p.norm() for p in model.parameters()]
    w2 = [p.norm() for p in rescaled.parameters()]
    assert any(not torch.isclose(u, v, rtol=1e-2) for u, v in zip(w1, w2, strict=True))


@pytest.mark.parametrize("case", ["llama", "cnn"])
def test_l2_magnitude_pruning_is_not_invariant_to_rescaling(case):
    """The contrast: Torch-Pruning's L2 magnitude, through the same plan, keeps other channels
    of the rescaled copy, so the two pruned models no longer compute the same function."""
    import torch_pruning as tp

    from causalprune_fast.pruning.attention_pruning import attention_pruning

    model, rescaled, x, _, _ = {"llama": _llama_case, "cnn": _cnn_case}[case]()
    pruned = []
    for m in (model, rescaled):
        kwargs = dict(
            importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
            global_pruning=False,
            iterative_steps=1,
        )
        if case == "llama":
            plan = attention_pruning(m)
            pruner = plan.pruner(
                m, TOKENS["example_input"], 0.25, ignored_layers=[m.lm_head], **kwargs
            )
            pruner.step()
            plan.sync(m, pruner)
        else:
            tp.pruner.MetaPruner(
                m, x[:1], pruning_ratio=0.25, ignored_layers=[m[-1]], **kwargs
            ).step()
        pruned.append(_outputs(m, x))
    assert not torch.allclose(pruned[0], pruned[1], rtol=1e-3, atol=1e-3)
