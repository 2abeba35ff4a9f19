"""Tiny Hugging Face models built from configs (random weights seeded with 0, nothing
downloaded), shared by tests/test_transformers.py and tests/test_llm_pruning.py.

transformers is imported when a model is built: the test files skip themselves first
(``pytest.importorskip``) where it is not installed. Every model has 2 layers, 16 positions and
is returned in eval mode.
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
