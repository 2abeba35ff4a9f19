"""Language-model families from tiny configs (random weights, nothing downloaded; issue 18,
item 3): Qwen2 (biased q/k/v), Mistral (sliding window), Phi-3 (fused qkv_proj and
gate_up_proj), Gemma (head_dim independent of hidden / heads, scaled tied embeddings), GPT-NeoX
(per-head fused query_key_value, partial rotary, parallel residual), GPT-2, and BART
(encoder-decoder) are scored; each decoder pruned at 0.3 generates and round-trips through
save_pretrained / from_pretrained."""

from __future__ import annotations

import copy
from functools import partial

import hf_models
import pytest
import torch

import causalprune_fast as cf

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("torch_pruning", reason="torch-pruning is not installed")

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")

VOCAB, T, E, HEADS, KV, INNER = 64, 6, 64, 4, 2, 128
SCORING = dict(input_range=(0, VOCAB), samples=4, mode="propagated", progress=False)

DECODERS = {
    "qwen2": partial(hf_models.qwen2, E, HEADS, KV, INNER, VOCAB),
    "mistral": partial(hf_models.mistral, E, HEADS, KV, INNER, VOCAB),
    "phi3": partial(hf_models.phi3, E, HEADS, KV, INNER, VOCAB),
    "phi3-mha": partial(hf_models.phi3, E, HEADS, HEADS, INNER, VOCAB),
    "gemma": partial(hf_models.gemma, E, HEADS, KV, 24, INNER, VOCAB),
    "gpt_neox": partial(hf_models.gpt_neox, E, 8, INNER, VOCAB),
    "gpt2": partial(hf_models.gpt2, 48, HEADS, VOCAB),  # 12-dim heads: 8 kept, 48 -> 32
}
# attention modules and the qualified name of each one's query (or fused) projection
ATTENTION = {
    "qwen2": "model.layers.{}.self_attn",
    "mistral": "model.layers.{}.self_attn",
    "phi3": "model.layers.{}.self_attn",
    "phi3-mha": "model.layers.{}.self_attn",
    "gemma": "model.layers.{}.self_attn",
    "gpt_neox": "gpt_neox.layers.{}.attention",
    "gpt2": "transformer.h.{}.attn",
}


def example() -> torch.Tensor:
    return torch.zeros(1, T, dtype=torch.long)


def tokens(batch: int = 2) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, T), generator=torch.Generator().manual_seed(1))


def weighted(model) -> list[str]:
    """Modules with parameters of their own, but the norms (members of their channels)."""
    out = []
    for name, m in model.named_modules():
        if next(iter(m.parameters(recurse=False)), None) is None:
            continue
        if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm"):
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("arch", [*DECODERS, "bart"])
def test_families_are_scored(arch):
    """Every layer with weights is measured (embeddings listed with a reason), Torch-Pruning
    couples them, and each attention module has head scores that add up to its q, k and v
    channel scores."""
    model = hf_models.bart(E, HEADS, INNER, VOCAB) if arch == "bart" else DECODERS[arch]()
    scores = cf.score_model(model, example_input=example(), **SCORING)
    assert "could not build" not in scores.config["graph"]
    for name in weighted(model):
        assert name in scores.layers or "Embedding" in scores.unsupported.get(name, ""), name
    assert not [n for n in scores.unsupported if "Embedding" not in scores.unsupported[n]]
    if arch == "bart":  # encoder self, decoder self and cross attention
        assert len(scores.heads) == 6
        return
    for k in range(2):
        attention = ATTENTION[arch].format(k)
        heads = scores.heads[attention]
        assert heads.shape == (8 if arch == "gpt_neox" else HEADS,)
        parts = [n for n in scores.layers if n.startswith(attention + ".")]
        projections = [n for n in parts if not n.endswith((".o_proj", ".dense", ".c_proj"))]
        total = sum(float(scores[n].sum()) for n in projections)
        assert float(heads.sum()) == pytest.approx(total, rel=1e-6)


def test_gpt_neox_query_key_value_is_coupled_per_head():
    """GPT-NeoX's query_key_value output (h, q|k|v, d) feeds the attention output channel (h,
    d): the per-head index mapping couples them to dense's inputs."""
    model = DECODERS["gpt_neox"]()
    scores = cf.score_model(model, example_input=example(), **SCORING)
    d = E // 8
    members = scores.groups["gpt_neox.layers.0.attention.query_key_value"]
    (dense,) = [m for m in members if m.layer.endswith("attention.dense")]
    assert dense.role == "consumer" and sorted(dense.idxs) == list(range(E))
    for i, root in zip(dense.idxs, dense.root_idxs, strict=True):
        assert (root // (3 * d), root % d) == (i // d, i % d)


def _kept(pruned: torch.Tensor, original: torch.Tensor, dim: int, rtol: float = 0.0) -> list[int]:
    """Which slices of ``original`` along ``dim`` ``pruned`` kept (copies, to ``rtol``)."""
    orig = original.movedim(dim, 0).flatten(1)
    rows = pruned.movedim(dim, 0).flatten(1)
    return [int(torch.isclose(orig, r, rtol=rtol, atol=0).all(1).nonzero()[0]) for r in rows]


def _heads(rows: list[int], size: int) -> list[int]:
    """The heads of ``size`` rows that ``rows`` are, all whole (else an assertion fails)."""
    heads = sorted({r // size for r in rows})
    assert rows == [h * size + i for h in heads for i in range(size)], rows
    return heads


@pytest.mark.parametrize("arch", list(DECODERS))
def test_decoders_prune_generate_and_round_trip(arch, tmp_path):
    """cf.prune(0.3): the pruned model generates, and its config rebuilds it:
    save_pretrained / from_pretrained gives the same logits and the same greedy tokens."""
    model = DECODERS[arch]()
    before = sum(p.numel() for p in model.parameters())
    original = copy.deepcopy(model)
    pruned, report = cf.prune(model, 0.3, example_input=example(), **SCORING)
    assert pruned is model and report.params_after < report.params_before
    assert sum(p.numel() for p in model.parameters()) < before
    ids = tokens()
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, T, VOCAB) and torch.isfinite(logits).all()
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, T + 4)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, logits, rtol=1e-5, atol=1e-5)
    again = reloaded.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(again, generated)
    _check_structure(arch, model, original)


def _check_structure(arch: str, model, original) -> None:
    """Whole heads where heads are pruned, matching widths everywhere the config says."""
    c = model.config
    if arch == "gpt2":
        a = model.transformer.h[0].attn
        assert a.head_dim == 8 and c.n_head == HEADS and c.n_embd == 4 * 8
        assert a.c_attn.weight.shape == (c.n_embd, 3 * c.n_embd)
        return
    if arch == "gpt_neox":
        a, old = model.gpt_neox.layers[0].attention, original.gpt_neox.layers[0].attention
        d = a.head_size
        assert d == E // 8 and c.hidden_size == c.num_attention_heads * d == 5 * d
        hidden = _kept(model.gpt_neox.embed_in.weight, original.gpt_neox.embed_in.weight, 1)
        rows = _kept(a.query_key_value.weight, old.query_key_value.weight[:, hidden], 0)
        heads = _heads(rows, 3 * d)  # per head: its q, k and v together
        dense = _kept(a.dense.weight, old.dense.weight[hidden], 1)
        assert _heads(dense, d) == heads
        return
    layers = model.model.layers
    a, old = layers[0].self_attn, original.model.layers[0].self_attn
    d, kv = a.head_dim, c.num_key_value_heads
    assert c.head_dim == d and c.num_attention_heads < HEADS
    if original.config.num_key_value_heads < HEADS:  # grouped-query: the key/value heads stay
        assert kv == original.config.num_key_value_heads
    else:  # every head is a query/key/value head
        assert kv == c.num_attention_heads
    emb, old_emb = model.model.embed_tokens, original.model.embed_tokens
    scale = getattr(emb, "scalar_embed_scale", 1.0) / getattr(old_emb, "scalar_embed_scale", 1.0)
    hidden = _kept(emb.weight * scale, old_emb.weight, 1, rtol=1e-5)  # Gemma: rows rescaled
    if arch.startswith("phi3"):
        q_old = original.config.num_attention_heads * d
        w, w_old = a.qkv_proj.weight, old.qkv_proj.weight[:, hidden]
        if arch == "phi3":  # grouped-query attention: the key/value heads stay
            assert a.qkv_proj.out_features == (c.num_attention_heads + 2 * kv) * d
            rows = _kept(w[: c.num_attention_heads * d], w_old[:q_old], 0)
            torch.testing.assert_close(w[c.num_attention_heads * d :], w_old[q_old:])
        else:  # every head whole: its q, k and v rows
            rows = _kept(w, w_old, 0)
            qh = c.num_attention_heads
            assert rows[qh * d :] == [r + q_old for r in rows[: qh * d]] + [
                r + 2 * q_old for r in rows[: qh * d]
            ]
            rows = rows[: qh * d]
        heads = _heads(rows, d)
        old_gate_up = original.model.layers[0].mlp.gate_up_proj.weight[:, hidden]
        gate_up = _kept(layers[0].mlp.gate_up_proj.weight, old_gate_up, 0)
        half = len(gate_up) // 2
        assert gate_up[half:] == [g + INNER for g in gate_up[:half]]  # gate i with up i
        assert c.intermediate_size == half
    else:
        heads = _heads(_kept(a.q_proj.weight, old.q_proj.weight[:, hidden], 0), d)
        assert c.intermediate_size == layers[0].mlp.gate_proj.out_features
    assert _heads(_kept(a.o_proj.weight, old.o_proj.weight[hidden], 1), d) == heads
    if arch == "gemma":
        emb = model.model.embed_tokens
        assert emb.scalar_embed_scale == pytest.approx(c.hidden_size**0.5)
        assert model.lm_head.weight is emb.weight


def test_sequential_pruning_keeps_the_config_true(tmp_path):
    """Sequential pruning (one group at a time, each its own pruner) of Phi-3 and GPT-NeoX:
    the fused projections are split until the last group, the hidden size follows GPT-NeoX's
    attention, and the config rebuilds the model."""
    for arch in ("phi3", "gpt_neox"):
        model = DECODERS[arch]()
        cf.prune(model, 0.3, example_input=example(), sequential=True, **SCORING)
        ids = tokens()
        with torch.no_grad():
            logits = model(ids).logits
        model.save_pretrained(tmp_path / arch)
        reloaded = type(model).from_pretrained(tmp_path / arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_a_failed_prune_leaves_phi3_as_it_was():
    """A shortfall raised after Phi-3's qkv_proj was split: the model is put back, its fused
    qkv_proj module and config included."""
    model = DECODERS["phi3"]()
    qkv = model.model.layers[0].self_attn.qkv_proj
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    with pytest.raises(ValueError, match="left as it was"):
        cf.prune(model, 0.99, example_input=example(), on_shortfall="raise", **SCORING)
    assert model.model.layers[0].self_attn.qkv_proj is qkv
    assert model.config.to_dict() == config
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
