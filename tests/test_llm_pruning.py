"""Structured pruning of Hugging Face language models built from tiny configs (random weights,
nothing downloaded): GPT-2 (transformers Conv1D, fused c_attn) and Llama with grouped-query
attention and rotary embeddings, through cf.prune() and through a Torch-Pruning MetaPruner with
CausalImportance (issue 10, item 4)."""

from __future__ import annotations

import copy
from functools import partial

import hf_models
import pytest
import torch

import causalprune_fast as cf

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
tp = pytest.importorskip("torch_pruning", reason="torch-pruning is not installed")

from causalprune_fast.model.llm_graph import conv1d_pruner, traceable  # noqa: E402
from causalprune_fast.pruning.attention_pruning import attention_pruning  # noqa: E402
from causalprune_fast.pruning.importance import CausalImportance  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")

VOCAB, T, E, HEADS, KV_HEADS, INNER = 64, 6, 64, 4, 2, 128
SCORING = dict(input_range=(0, VOCAB), samples=4, mode="propagated")


gpt2 = partial(hf_models.gpt2, E, HEADS, VOCAB)
llama = partial(hf_models.llama, E, HEADS, KV_HEADS, INNER, VOCAB)

BUILD = {"gpt2": gpt2, "llama": llama}


def tokens(batch: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(1))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight counts once


def assert_refused(model, match: str, **kwargs) -> None:
    """``cf.prune(model, 0.3, **kwargs)`` raises a ValueError matching ``match`` and leaves
    every parameter and buffer as it was."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        cf.prune(model, 0.3, example_input=torch.zeros(1, T, dtype=torch.long), **SCORING, **kwargs)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def check_gpt2(model) -> None:
    """Config and every attention attribute agree with the pruned weights."""
    c = model.config
    assert model.transformer.wte.weight.shape == (VOCAB, c.n_embd)  # vocab untouched
    assert model.transformer.wpe.weight.shape[1] == c.n_embd
    assert model.lm_head.weight is model.transformer.wte.weight  # tied again
    assert model.lm_head.out_features == VOCAB
    for block in model.transformer.h:
        a = block.attn
        width = a.c_attn.weight.shape[1] // 3
        assert a.c_attn.nf == 3 * width and a.c_attn.weight.shape[0] == c.n_embd
        assert a.split_size == a.embed_dim == width == a.num_heads * a.head_dim
        assert a.num_heads == c.n_head == HEADS
        assert a.c_proj.weight.shape == (width, c.n_embd) and a.c_proj.nf == c.n_embd
        assert block.mlp.c_fc.nf == c.n_inner == block.mlp.c_proj.weight.shape[0]
        assert block.ln_1.weight.shape == block.ln_2.weight.shape == (c.n_embd,)


def check_llama(model) -> None:
    """Config and every attention attribute agree with the pruned weights, so that the config
    alone rebuilds the same architecture."""
    c = model.config
    assert model.model.embed_tokens.weight.shape == (VOCAB, c.hidden_size)
    assert model.lm_head.weight.shape == (VOCAB, c.hidden_size)
    for layer in model.model.layers:
        a = layer.self_attn
        assert a.head_dim == c.head_dim == E // HEADS  # head dims kept (rotary pairs)
        assert a.q_proj.out_features == c.num_attention_heads * a.head_dim
        assert a.k_proj.out_features == a.v_proj.out_features == KV_HEADS * a.head_dim
        assert c.num_key_value_heads == KV_HEADS  # shared key/value heads kept
        assert a.num_key_value_groups == c.num_attention_heads // KV_HEADS
        assert a.o_proj.in_features == a.q_proj.out_features
        assert a.o_proj.out_features == a.q_proj.in_features == c.hidden_size
        assert layer.mlp.gate_proj.out_features == c.intermediate_size
        assert layer.mlp.down_proj.in_features == c.intermediate_size
        assert layer.input_layernorm.weight.shape == (c.hidden_size,)
    rebuilt = transformers.LlamaForCausalLM(copy.deepcopy(c))
    rebuilt.load_state_dict(model.state_dict())  # strict: every shape as the config says


CHECK = {"gpt2": check_gpt2, "llama": check_llama}


def runs_and_generates(model) -> None:
    ids = tokens(2)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, T, VOCAB) and torch.isfinite(logits).all()
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, T + 3)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prune_language_models(arch):
    model = BUILD[arch]()
    before = n_params(model)
    pruned, report = cf.prune(
        model, 0.3, example_input=torch.zeros(1, T, dtype=torch.long), **SCORING
    )
    assert pruned is model
    CHECK[arch](model)
    assert n_params(model) < before and report.params_after < report.params_before
    runs_and_generates(model)
    if arch == "gpt2":
        assert model.config.n_embd < E and model.config.n_inner < 4 * E
        assert model.transformer.h[0].attn.head_dim < E // HEADS
    else:
        assert model.config.hidden_size < E and model.config.intermediate_size < INNER
        # whole query heads, the same number from each key/value group
        assert model.config.num_attention_heads < HEADS
        assert model.config.num_attention_heads % KV_HEADS == 0
    assert not any(n.endswith(("k_proj", "v_proj")) for n in report.groups)


def test_prune_gpt2_sequentially():
    """Sequential pruning gives Conv1D roots their ratio (Torch-Pruning's pruning_ratio_dict
    would drop them)."""
    model = gpt2()
    cf.prune(
        model,
        0.3,
        example_input=torch.zeros(1, T, dtype=torch.long),
        sequential=True,
        on_shortfall="raise",
        **SCORING,
    )
    check_gpt2(model)
    assert model.transformer.h[1].mlp.c_fc.nf < 4 * E
    runs_and_generates(model)


def _kept(pruned: torch.Tensor, original: torch.Tensor, dim: int) -> list[int]:
    """Which slices of ``original`` along ``dim`` ``pruned`` kept (exact copies)."""
    orig = original.movedim(dim, 0).flatten(1)
    return [int((orig == row).all(dim=1).nonzero()[0]) for row in pruned.movedim(dim, 0).flatten(1)]


def test_llama_loses_whole_query_heads_and_keeps_their_pairing():
    """The kept q_proj rows are whole heads, one removed per key/value group, and o_proj keeps
    the matching columns: the rotary pairs and the head-to-group map stay intact."""
    model = llama()
    original = copy.deepcopy(model)
    cf.prune(model, 0.3, example_input=torch.zeros(1, T, dtype=torch.long), **SCORING)
    d = E // HEADS
    hidden = _kept(model.model.embed_tokens.weight, original.model.embed_tokens.weight, 1)
    for layer, old in zip(model.model.layers, original.model.layers, strict=True):
        q_old = old.self_attn.q_proj.weight[:, hidden]
        rows = _kept(layer.self_attn.q_proj.weight, q_old, 0)
        heads = sorted({r // d for r in rows})
        assert rows == [h * d + i for h in heads for i in range(d)]
        share = HEADS // KV_HEADS
        assert [sum(h // share == g for h in heads) for g in range(KV_HEADS)] == [1, 1]
        o_old = old.self_attn.o_proj.weight[hidden]
        torch.testing.assert_close(layer.self_attn.o_proj.weight, o_old[:, rows], rtol=0, atol=0)
        k_old = old.self_attn.k_proj.weight[:, hidden]
        torch.testing.assert_close(layer.self_attn.k_proj.weight, k_old, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_metapruner_with_causal_importance(arch):
    model = BUILD[arch]()
    before = n_params(model)
    example = torch.zeros(1, T, dtype=torch.long)
    imp = CausalImportance(model, example_input=example, **SCORING)
    plan = attention_pruning(model)
    pruner = plan.pruner(model, example, 0.3, importance=imp, ignored_layers=[model.lm_head])
    pruner.step()
    plan.sync(model, pruner)
    CHECK[arch](model)
    assert n_params(model) < before and imp.rescored == 1
    runs_and_generates(model)


def test_model_untouched_when_prune_refuses_or_fails():
    # GPT-2 with cross-attention: refused before anything changes
    model = gpt2(add_cross_attention=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    with pytest.raises(ValueError, match="cross-attention"):
        cf.prune(model, 0.3, example_input=torch.zeros(1, T, dtype=torch.long), **SCORING)
    assert model.config.to_dict() == config
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # Llama pruned, then put back: a ratio that empties no group fully is a shortfall
    model = llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    attn = model.model.layers[0].self_attn
    with pytest.raises(ValueError, match="left as it was"):
        cf.prune(
            model,
            0.99,
            example_input=torch.zeros(1, T, dtype=torch.long),
            on_shortfall="raise",
            **SCORING,
        )
    assert model.config.to_dict() == config
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert attn.num_key_value_groups == HEADS // KV_HEADS and attn.q_proj.out_features == E
    runs_and_generates(model)


def test_trace_puts_everything_back():
    from torch_pruning.dependency import index_mapping

    model = llama()
    mod = __import__(type(model.model.layers[0].self_attn).__module__, fromlist=["x"])
    rotary, split = mod.apply_rotary_pos_emb, index_mapping.update_split_index_mapping
    config = dict(vars(model.config))
    with pytest.raises(RuntimeError, match="inside"), traceable(model):
        assert mod.apply_rotary_pos_emb is not rotary
        assert index_mapping.update_split_index_mapping is not split
        assert model.config._attn_implementation == "eager" and not model.config.use_cache
        raise RuntimeError("inside")
    assert mod.apply_rotary_pos_emb is rotary and vars(model.config) == config
    assert index_mapping.update_split_index_mapping is split


def test_conv1d_pruner_keeps_the_function_of_kept_channels():
    conv = gpt2().transformer.h[0].mlp.c_fc
    x = torch.randn(3, T, E)
    full = conv(x)
    pruner = conv1d_pruner()
    pruner(conv, [1, 5, 7], to_output=True)
    assert conv.nf == 4 * E - 3 and conv.weight.shape == (E, 4 * E - 3)
    keep = [i for i in range(4 * E) if i not in (1, 5, 7)]
    torch.testing.assert_close(conv(x), full[..., keep])
    pruner(conv, [0, 2], to_output=False)
    assert conv.weight.shape == (E - 2, 4 * E - 3) and pruner.get_in_channels(conv) == E - 2
    with pytest.raises(AssertionError):
        pruner(torch.nn.Linear(2, 2), [0])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_scores_get_torch_pruning_groups(arch):
    """GPT-2's Conv1D layers and Llama's layers are coupled through Torch-Pruning's graph (the
    rotary graph used to make the walk run for minutes); RMSNorm weights are group members,
    not unsupported modules."""
    model = BUILD[arch]()
    scores = cf.score_model(
        model, example_input=torch.zeros(1, T, dtype=torch.long), progress=False, **SCORING
    )
    assert "lost their coupling" not in scores.config["graph"]
    assert not [n for n in scores.unsupported if ".layers." in n or ".h." in n]
    groups = {
        "gpt2": ("transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"),
        "llama": ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj"),
    }
    root, consumer = groups[arch]
    members = scores.groups[root]
    assert any(m.layer == consumer and m.role == "consumer" for m in members), members
    if arch == "gpt2":  # c_attn's q, k and v channel i all meet c_proj's input channel i
        (m,) = [m for m in members if m.layer == consumer]
        assert set(m.idxs) == set(range(E))
        assert all(r % E == i for i, r in zip(m.idxs, m.root_idxs, strict=True))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_iterative_steps_refused_before_any_change(arch):
    model = BUILD[arch]()
    assert_refused(model, "iterative_steps=2 is not supported", iterative_steps=2)


def test_global_pruning_warns_when_the_config_cannot_describe_the_layers():
    import warnings

    model = llama()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cf.prune(
            model,
            0.4,
            example_input=torch.zeros(1, T, dtype=torch.long),
            global_pruning=True,
            **SCORING,
        )
    warned = any("the pruned layers differ" in str(w.message) for w in caught)
    layers = model.model.layers
    attention = {layer.self_attn.q_proj.out_features for layer in layers}
    mlp = {layer.mlp.gate_proj.out_features for layer in layers}
    assert warned == (len(attention) > 1 or len(mlp) > 1)  # (global ranking: usually both)
    for layer in layers:  # each attention module is consistent in itself
        a = layer.self_attn
        assert a.num_key_value_groups == a.q_proj.out_features // a.head_dim // KV_HEADS
    runs_and_generates(model)


def test_global_pruning_refused_where_torch_pruning_misplaces_grouped_heads():
    """8 query heads on 2 key/value heads: Torch-Pruning 1.6's global head ranking would offset
    the second group's heads by 2 instead of 4. Refused before anything changes, naming the
    heads; 4 on 2 (above) is where its offset is right, and that prunes."""
    model = hf_models.llama(E, 8, 2, INNER, VOCAB)
    assert_refused(model, r"8 query heads on 2 key/value heads.*per layer", global_pruning=True)
    plan = attention_pruning(model)
    with pytest.raises(ValueError, match="global_pruning is not supported"):
        plan.pruner(model, torch.zeros(1, T, dtype=torch.long), 0.3, global_pruning=True)
    pruned, _ = cf.prune(  # per layer it prunes
        model, 0.3, example_input=torch.zeros(1, T, dtype=torch.long), **SCORING
    )
    runs_and_generates(pruned)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 1), (8, 8)])
def test_global_pruning_where_torch_pruning_places_the_heads_right(heads, kv_heads):
    """One key/value head (offset 0) and multi-head attention prune globally."""
    model = hf_models.llama(E, heads, kv_heads, INNER, VOCAB)
    pruned, report = cf.prune(
        model,
        0.3,
        example_input=torch.zeros(1, T, dtype=torch.long),
        global_pruning=True,
        on_shortfall="ignore",
        **SCORING,
    )
    assert report.params_after < report.params_before
    runs_and_generates(pruned)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2)])
def test_global_pruning_of_phi3_refused_before_any_change(heads, kv_heads):
    """Phi-3's forward reads its query heads from the shared config (one number for every
    layer), so the differing layers of a global ranking cannot run: refused up front, with the
    reason (it used to fail after scoring, or crash reading the unsplit qkv_proj)."""
    model = hf_models.phi3(E, heads, kv_heads, INNER, VOCAB)
    assert_refused(
        model, "Phi-3's attention .* reads the number of query heads", global_pruning=True
    )


def test_sequential_global_pruning_of_whole_heads_refused_before_any_change():
    assert_refused(
        llama(), "sequential=True with global_pruning=True", sequential=True, global_pruning=True
    )
