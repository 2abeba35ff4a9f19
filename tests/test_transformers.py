"""Hugging Face transformers built from tiny configs (random weights, no hub): token-id noise
in both modes, GPT-2's Conv1D measured as a Linear layer, attention-head scores for GPT-2's
fused c_attn, BERT's query/key/value and Llama's grouped-query q/k/v projections (issue 10,
items 3 and 4; issue 11's token-id crash). Pruning them: tests/test_llm_pruning.py."""

from __future__ import annotations

import warnings
from functools import partial

import hf_models
import pytest
import torch

import causalprune_fast as cf
from causalprune_fast.model.discovery import find_layers

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")

VOCAB, T, E, HEADS, KV_HEADS = 64, 6, 32, 4, 2


gpt2 = partial(hf_models.gpt2, E, HEADS, VOCAB)
bert = partial(hf_models.bert, E, HEADS, 48, VOCAB)
llama = partial(hf_models.llama, E, HEADS, KV_HEADS, 48, VOCAB)


# Per model: every projection and MLP layer of block 0 with its output channels, and the
# attention module with its q, k, v projections (and their head counts).
EXPECTED = {
    "gpt2": (
        gpt2,
        {
            "transformer.h.0.attn.c_attn": 3 * E,
            "transformer.h.0.attn.c_proj": E,
            "transformer.h.0.mlp.c_fc": 4 * E,
            "transformer.h.0.mlp.c_proj": E,
        },
        "transformer.h.0.attn",
    ),
    "bert": (
        bert,
        {
            "encoder.layer.0.attention.self.query": E,
            "encoder.layer.0.attention.self.key": E,
            "encoder.layer.0.attention.self.value": E,
            "encoder.layer.0.attention.output.dense": E,
            "encoder.layer.0.intermediate.dense": 48,
            "encoder.layer.0.output.dense": E,
        },
        "encoder.layer.0.attention.self",
    ),
    "llama": (
        llama,
        {
            "model.layers.0.self_attn.q_proj": E,
            "model.layers.0.self_attn.k_proj": E // HEADS * KV_HEADS,
            "model.layers.0.self_attn.v_proj": E // HEADS * KV_HEADS,
            "model.layers.0.self_attn.o_proj": E,
            "model.layers.0.mlp.gate_proj": 48,
            "model.layers.0.mlp.up_proj": 48,
            "model.layers.0.mlp.down_proj": E,
        },
        "model.layers.0.self_attn",
    ),
}


@pytest.mark.parametrize("mode", ["local", "propagated"])
@pytest.mark.parametrize("arch", list(EXPECTED))
def test_token_inputs_score_every_projection_and_head(arch, mode):
    build, layers, attn = EXPECTED[arch]
    model = build()
    scores = cf.score_model(
        model,
        example_input=torch.zeros(1, T, dtype=torch.long),
        input_range=(0, VOCAB),
        mode=mode,
        examples=8,
        samples_per_layer=512,
        progress=False,
    )
    assert scores.config["input_dtype"] == "int64"
    for name, width in layers.items():
        for block in ("0", "1"):
            name_b = name.replace(".0.", f".{block}.")
            s = scores[name_b]
            assert s.shape == (width,), name_b
            assert torch.isfinite(s).all() and (s >= 0).all() and s.sum() > 0, name_b
            # propagated: every (example, token) is a sample; local: samples_per_layer rows
            assert scores.layers[name_b].samples == (8 * T if mode == "propagated" else 512)
    # Nothing of the blocks is left unscored (norms, Llama's RMSNorms included, are parts of
    # their channels' groups, not layers).
    in_blocks = [n for n in scores.unsupported if ".0." in n or ".1." in n]
    assert not in_blocks, in_blocks
    heads = scores.heads
    assert set(heads) == {attn, attn.replace(".0.", ".1.")}
    h = heads[attn]
    assert h.shape == (HEADS,) and torch.isfinite(h).all() and (h >= 0).all()
    qkv = [
        n
        for n in layers
        if n.rsplit(".", 1)[1] in ("c_attn", "query", "key", "value", "q_proj", "k_proj", "v_proj")
    ]
    total = sum(float(scores[n].sum()) for n in qkv)
    assert float(h.sum()) == pytest.approx(total)  # a head score is a sum of its channels'


def test_gpt2_head_scores_from_fused_c_attn():
    scores = cf.score_model(
        gpt2(), (T,), input_dtype=torch.long, input_range=(0, VOCAB), samples=8, progress=False
    )
    c = scores["transformer.h.0.attn.c_attn"].reshape(3, HEADS, E // HEADS)
    torch.testing.assert_close(scores.heads["transformer.h.0.attn"], c.sum(dim=(0, 2)))


def test_llama_grouped_query_heads():
    scores = cf.score_model(
        llama(), (T,), input_dtype=torch.long, input_range=(0, VOCAB), samples=8, progress=False
    )
    a = "model.layers.0.self_attn"
    d = E // HEADS
    q = scores[f"{a}.q_proj"].reshape(HEADS, d).sum(dim=1)
    kv = (scores[f"{a}.k_proj"] + scores[f"{a}.v_proj"]).reshape(KV_HEADS, d).sum(dim=1)
    share = HEADS // KV_HEADS  # query head h uses key/value head h // share
    expected = q + kv.repeat_interleave(share) / share
    torch.testing.assert_close(scores.heads[a], expected)


def test_conv1d_is_measured_as_a_linear_with_transposed_weight():
    model = gpt2()
    found, unsupported = find_layers(model)
    layer = {f.name: f for f in found}["transformer.h.0.mlp.c_fc"]
    conv = layer.module
    assert type(conv).__name__ == "Conv1D" and tuple(conv.weight.shape) == (E, 4 * E)
    assert (layer.in_channels, layer.out_channels, layer.groups) == (E, 4 * E, 1)
    assert not layer.is_conv and layer.input_units("all") == E
    assert not any("Conv1D" in reason for reason in unsupported.values())
    x = torch.rand(2, T, E)
    torch.testing.assert_close(layer.forward(x), x @ conv.weight + conv.bias)
    scores = cf.score_model(
        model,
        (T,),
        input_dtype=torch.long,
        input_range=(0, VOCAB),
        samples=8,
        progress=False,
        return_matrices=True,
    )
    m = scores.layers["transformer.h.0.mlp.c_fc"].matrix
    assert m.shape == (E, 4 * E)  # [input units, output channels]
    # GPT-2's MLP activation follows c_fc: its response point
    assert scores.layers["transformer.h.0.mlp.c_fc"].response.endswith("act")


@pytest.mark.parametrize("why", ["no torch-pruning", "graph fails"])
def test_gpt2_without_a_dependency_graph_scores_every_layer_alone(monkeypatch, why):
    """Without Torch-Pruning, or where its graph cannot be built, a model with transformers
    Conv1D layers is scored with every layer alone (their output channels read from the
    transposed weight), not an AttributeError for Conv1D's missing out_features."""
    import causalprune_fast.model.channel_graph as cg

    if why == "no torch-pruning":
        monkeypatch.setattr(cg, "torch_pruning_available", lambda: False)
    else:
        tp = pytest.importorskip("torch_pruning")

        def untraceable(self, model, example_inputs, **kwargs):
            raise RuntimeError("no graph")

        monkeypatch.setattr(tp.DependencyGraph, "build_dependency", untraceable)
    kw = dict(input_dtype=torch.long, input_range=(0, VOCAB), samples=4, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the graph failure's own warning
        scores = cf.score_model(gpt2(), (T,), **kw)
    name = "transformer.h.0.mlp.c_fc"
    assert [(m.layer, m.role) for m in scores.groups[name]] == [(name, "producer")]
    assert scores.groups[name][0].idxs == tuple(range(4 * E))
    assert scores[name].shape == (4 * E,) and bool(torch.isfinite(scores[name]).all())


def test_prune_bert_keeps_heads_and_config_consistent():
    pytest.importorskip("torch_pruning")
    model = bert()
    pruned, report = cf.prune(
        model,
        0.5,
        example_input=torch.zeros(1, T, dtype=torch.long),
        input_range=(0, VOCAB),
        samples=4,
        mode="propagated",
    )
    config = pruned.config
    assert config.hidden_size == pruned.embeddings.word_embeddings.weight.shape[1] < E
    for layer in pruned.encoder.layer:
        a = layer.attention.self
        assert a.num_attention_heads == HEADS
        assert a.attention_head_size * HEADS == a.all_head_size == a.query.out_features
        assert a.key.out_features == a.value.out_features == a.all_head_size
        assert layer.intermediate.dense.out_features == config.intermediate_size < 48
    out = pruned(torch.randint(0, VOCAB, (2, T)))
    assert out.last_hidden_state.shape == (2, T, config.hidden_size)
    assert torch.isfinite(out.last_hidden_state).all()
    assert report.params_after < report.params_before
