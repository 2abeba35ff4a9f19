"""Tiny Hugging Face checkpoints saved as several safetensors shards (random weights seeded
with 0, nothing downloaded), for the block walker's tests (tests/test_checkpoint_scoring.py,
tests/test_checkpoint_pruning.py) and the distributed worker.

``MODELS`` maps a short name to the model factory; :func:`save` writes a model with
``save_pretrained(max_shard_size=...)`` small enough that every model has several shards.
"""

from __future__ import annotations

import torch

SHARD = "20KB"  # every tiny model below is split over several shards


def _tiny(config_class: str, model_class: str, **config) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**config)
    return getattr(transformers, model_class)(config).eval()


def _llama_like(config_class: str, model_class: str, layers=2, heads=4, kv_heads=2, **extra):
    return _tiny(config_class, model_class, num_hidden_layers=layers, hidden_size=32,
                 num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=48,
                 vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                 pad_token_id=0, **extra)  # fmt: skip


def llama(**kw) -> torch.nn.Module:
    """``LlamaForCausalLM``: grouped-query attention (4 query, 2 key/value heads) by default."""
    return _llama_like("LlamaConfig", "LlamaForCausalLM", **kw)


def mistral(**kw) -> torch.nn.Module:
    return _llama_like("MistralConfig", "MistralForCausalLM", **kw)


def qwen2(**kw) -> torch.nn.Module:
    """``Qwen2ForCausalLM`` (q/k/v projections with biases)."""
    return _llama_like("Qwen2Config", "Qwen2ForCausalLM", **kw)


def gpt2(layers: int = 2, **kw) -> torch.nn.Module:
    """``GPT2LMHeadModel`` (transformers ``Conv1D``, fused ``c_attn``, tied embeddings)."""
    return _tiny("GPT2Config", "GPT2LMHeadModel", n_layer=layers, n_embd=32, n_head=4,
                 vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0,
                 **kw)  # fmt: skip


MODELS = {
    "llama": llama,
    "llama-mha": lambda: llama(kv_heads=4, layers=3),
    "llama-tied": lambda: llama(tie_word_embeddings=True),
    "mistral": mistral,
    "qwen2": qwen2,
    "gpt2": gpt2,
}

VOCAB = 64


def save(model: torch.nn.Module, path) -> None:
    """``model.save_pretrained(path)`` in shards of at most :data:`SHARD`."""
    model.save_pretrained(str(path), max_shard_size=SHARD)
