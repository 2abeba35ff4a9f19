"""Tiny Hugging Face models built from configs (random weights seeded with 0, nothing
downloaded), shared by tests/test_transformers.py, tests/test_llm_pruning.py and
tests/test_llm_families.py.

transformers is imported when a model is built: the test files skip themselves first
(``pytest.importorskip``) where it is not installed. Every model has 2 layers (2 + 2 for the
encoder-decoder), at most 32 positions and is returned in eval mode.
"""

from __future__ import annotations

import torch


def _tiny(config_class: str, model_class: str, **config) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**config)
    return getattr(transformers, model_class)(config).eval()


def gpt2(hidden: int, heads: int, vocab: int, **config) -> torch.nn.Module:
    """``GPT2LMHeadModel`` (transformers ``Conv1D`` layers, fused ``c_attn``); ``config``: more
    ``GPT2Config`` fields."""
    return _tiny("GPT2Config", "GPT2LMHeadModel", n_layer=2, n_embd=hidden, n_head=heads,
                 vocab_size=vocab, n_positions=16, bos_token_id=0, eos_token_id=0,
                 **config)  # fmt: skip


def bert(hidden: int, heads: int, inner: int, vocab: int) -> torch.nn.Module:
    """``BertModel`` (separate query / key / value projections)."""
    return _tiny("BertConfig", "BertModel", num_hidden_layers=2, hidden_size=hidden,
                 num_attention_heads=heads, intermediate_size=inner, vocab_size=vocab,
                 max_position_embeddings=16)  # fmt: skip


def llama(hidden: int, heads: int, kv_heads: int, inner: int, vocab: int) -> torch.nn.Module:
    """``LlamaForCausalLM`` with grouped-query attention (``kv_heads`` key / value heads) and
    rotary embeddings."""
    return _tiny("LlamaConfig", "LlamaForCausalLM", num_hidden_layers=2, hidden_size=hidden,
                 num_attention_heads=heads, num_key_value_heads=kv_heads,
                 intermediate_size=inner, vocab_size=vocab, max_position_embeddings=16,
                 bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip


def qwen2(hidden: int, heads: int, kv_heads: int, inner: int, vocab: int) -> torch.nn.Module:
    """``Qwen2ForCausalLM``: biased q / k / v projections, grouped-query attention."""
    return _tiny("Qwen2Config", "Qwen2ForCausalLM", num_hidden_layers=2, hidden_size=hidden,
                 num_attention_heads=heads, num_key_value_heads=kv_heads,
                 intermediate_size=inner, vocab_size=vocab, max_position_embeddings=32,
                 bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip


def mistral(hidden: int, heads: int, kv_heads: int, inner: int, vocab: int) -> torch.nn.Module:
    """``MistralForCausalLM`` with sliding-window attention (a window of 4 tokens)."""
    return _tiny("MistralConfig", "MistralForCausalLM", num_hidden_layers=2, hidden_size=hidden,
                 num_attention_heads=heads, num_key_value_heads=kv_heads,
                 intermediate_size=inner, vocab_size=vocab, max_position_embeddings=32,
                 sliding_window=4, bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip


def phi3(hidden: int, heads: int, kv_heads: int, inner: int, vocab: int) -> torch.nn.Module:
    """``Phi3ForCausalLM``: fused ``qkv_proj`` (q, then k and v of ``kv_heads`` heads) and
    fused ``gate_up_proj``."""
    return _tiny("Phi3Config", "Phi3ForCausalLM", num_hidden_layers=2, hidden_size=hidden,
                 num_attention_heads=heads, num_key_value_heads=kv_heads,
                 intermediate_size=inner, vocab_size=vocab, max_position_embeddings=32,
                 original_max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                 pad_token_id=0)  # fmt: skip


def gemma(hidden: int, heads: int, kv_heads: int, head_dim: int, inner: int,
          vocab: int) -> torch.nn.Module:  # fmt: skip
    """``GemmaForCausalLM``: ``head_dim`` independent of hidden / heads, embeddings scaled by
    sqrt(hidden) and tied to the output."""
    return _tiny("GemmaConfig", "GemmaForCausalLM", num_hidden_layers=2, hidden_size=hidden,
                 num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                 intermediate_size=inner, vocab_size=vocab, max_position_embeddings=32,
                 bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip


def gpt_neox(hidden: int, heads: int, inner: int, vocab: int) -> torch.nn.Module:
    """``GPTNeoXForCausalLM``: fused ``query_key_value`` laid out per head (q, k, v), partial
    rotary (a quarter of each head), parallel residual."""
    return _tiny("GPTNeoXConfig", "GPTNeoXForCausalLM", num_hidden_layers=2, hidden_size=hidden,
                 num_attention_heads=heads, intermediate_size=inner, vocab_size=vocab,
                 max_position_embeddings=32, rotary_pct=0.25, use_parallel_residual=True,
                 bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip


def bart(hidden: int, heads: int, inner: int, vocab: int) -> torch.nn.Module:
    """``BartForConditionalGeneration`` (encoder-decoder; the decoder's inputs are the shifted
    input ids)."""
    return _tiny("BartConfig", "BartForConditionalGeneration", d_model=hidden, encoder_layers=2,
                 decoder_layers=2, encoder_attention_heads=heads, decoder_attention_heads=heads,
                 encoder_ffn_dim=inner, decoder_ffn_dim=inner, vocab_size=vocab,
                 max_position_embeddings=32, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                 decoder_start_token_id=2)  # fmt: skip
