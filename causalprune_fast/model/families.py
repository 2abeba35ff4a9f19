"""Hugging Face ``transformers`` specifics: GPT-2's ``Conv1D`` as a measured layer, and the
attention heads of HF attention modules (docs/method.md section 3: attention heads and MLP neurons
in transformers).

Nothing here imports ``transformers``: modules are recognised by their class name and
attributes, so the package works (and these functions answer "not HF") without it.

- ``Conv1D`` (``transformers.pytorch_utils.Conv1D``, GPT-1/GPT-2): a Linear layer with the
  weight stored transposed (``weight`` is ``[in, out]``, ``y = x @ W + b``). It is measured
  exactly like a Linear layer: input units are its ``in`` features, output units its ``out``
  features, samples are tokens.
- Attention heads (see :mod:`causalprune_fast.model.attention` for how a head's score is formed):
  GPT-2 ``GPT2Attention`` (fused ``c_attn`` with ``3E`` outputs: q, k, v blocks of ``E``
  each), Phi-3 (fused ``qkv_proj``: q, then k and v of ``num_key_value_heads`` heads), GPT-NeoX
  (fused ``query_key_value``, per head its q, k and v), BERT-style self-attention (``query``
  / ``key`` / ``value`` Linear layers and ``attention_head_size``) and Llama-style attention
  (``q_proj`` / ``k_proj`` / ``v_proj`` and ``head_dim``; with grouped-query attention
  ``k_proj`` and ``v_proj`` have ``num_key_value_heads`` heads).
"""

from __future__ import annotations

import torch.nn as nn

from causalprune_fast.model.layers import Layer


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers ``Conv1D`` (a Linear with a transposed weight)."""
    w = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(w, nn.Parameter)
        and w.dim() == 2
        and w.shape[1] == module.nf
    )


def out_channels(m: nn.Module) -> int:
    """Output channels of a ConvNd, a Linear or a transformers ``Conv1D`` module."""
    if is_conv1d(m):
        return int(m.weight.shape[1])
    return m.out_channels if hasattr(m, "out_channels") else m.out_features


class TransposedLinearLayer(Layer):
    """A measured transformers ``Conv1D``: a Linear layer whose ``weight`` is ``[in, out]``."""

    @property
    def in_channels(self) -> int:
        return int(self.module.weight.shape[0])

    @property
    def out_channels(self) -> int:
        return int(self.module.weight.shape[1])

    # in_dependency_graph: True (inherited); Torch-Pruning learns Conv1D from
    # llm_graph.Conv1DPruner.


def _features(m: nn.Module | None) -> int | None:
    """Output features of a Linear or Conv1D, else None."""
    if isinstance(m, nn.Linear):
        return m.out_features
    if m is not None and is_conv1d(m):
        return int(m.weight.shape[1])
    return None


def hf_head_spec(name: str, module: nn.Module, measured: set[str]) -> dict | None:
    """The head spec (see :func:`causalprune_fast.model.attention.head_scores`) of an HF attention
    module whose projections are all measured, else None."""
    prefix = f"{name}." if name else ""

    # GPT-2: fused c_attn (q | k | v, E each), num_heads, head_dim. Cross-attention
    # (q_attn + c_attn with 2E outputs) is not handled.
    c_attn = getattr(module, "c_attn", None)
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if (
        c_attn is not None
        and is_conv1d(c_attn)
        and isinstance(heads, int)
        and isinstance(head_dim, int)
        and not getattr(module, "is_cross_attention", False)
        and f"{prefix}c_attn" in measured
    ):
        e = heads * head_dim
        if _features(c_attn) == 3 * e:
            layer = f"{prefix}c_attn"
            parts = [[layer, k * e, (k + 1) * e, heads] for k in range(3)]
            return {"num_heads": heads, "parts": parts, "kind": "gpt2 c_attn (q|k|v)"}

    fused = _fused_spec(prefix, module, measured)
    if fused is not None:
        return fused

    # Llama / Mistral / Qwen ... : q_proj, k_proj, v_proj and head_dim (GQA aware).
    names = ("q_proj", "k_proj", "v_proj")
    head_dim = getattr(module, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0 and all(hasattr(module, n) for n in names):
        spec = _separate(prefix, module, names, head_dim, measured, "q_proj/k_proj/v_proj")
        if spec is not None:
            return spec

    # BERT / RoBERTa ...: query, key, value and attention_head_size.
    names = ("query", "key", "value")
    size = getattr(module, "attention_head_size", None)
    if isinstance(size, int) and size > 0 and all(hasattr(module, n) for n in names):
        return _separate(prefix, module, names, size, measured, "query/key/value")
    return None


def _fused_spec(prefix: str, module: nn.Module, measured: set[str]) -> dict | None:
    """Head specs of fused q/k/v projections: Phi-3's ``qkv_proj`` (q, then k, then v, with
    ``num_key_value_heads`` heads of k and v) and GPT-NeoX's ``query_key_value`` (per head its
    q, k and v channels, ``head_size`` each: one part of heads of ``3 * head_size``
    channels)."""
    qkv, d = getattr(module, "qkv_proj", None), getattr(module, "head_dim", None)
    kv = getattr(module, "num_key_value_heads", None)
    if (
        isinstance(qkv, nn.Linear)
        and isinstance(d, int)
        and isinstance(kv, int)
        and d > 0
        and kv > 0
        and f"{prefix}qkv_proj" in measured
    ):
        q = qkv.out_features - 2 * kv * d
        if q > 0 and q % (kv * d) == 0:
            layer, k_end = f"{prefix}qkv_proj", q + kv * d
            parts = [[layer, 0, q, q // d], [layer, q, k_end, kv]]
            parts.append([layer, k_end, k_end + kv * d, kv])
            spec = {"num_heads": q // d, "parts": parts, "kind": "phi-3 qkv_proj (q|k|v)"}
            if kv != q // d:
                spec["num_key_value_heads"] = kv
            return spec
    qkv, size = getattr(module, "query_key_value", None), getattr(module, "head_size", None)
    if (
        isinstance(qkv, nn.Linear)
        and isinstance(size, int)
        and size > 0
        and qkv.out_features % (3 * size) == 0
        and f"{prefix}query_key_value" in measured
    ):
        heads = qkv.out_features // (3 * size)
        parts = [[f"{prefix}query_key_value", 0, qkv.out_features, heads]]
        kind = "gpt-neox query_key_value (per head q|k|v)"
        return {"num_heads": heads, "parts": parts, "kind": kind}
    return None


def _separate(
    prefix: str,
    module: nn.Module,
    names: tuple[str, str, str],
    head_dim: int,
    measured: set[str],
    kind: str,
) -> dict | None:
    """Head spec of separate q, k, v projections with ``head_dim`` channels per head; k and v
    may have fewer heads (grouped-query attention) that divide the query heads."""
    outs = [_features(getattr(module, n)) for n in names]
    if any(o is None or o % head_dim for o in outs):
        return None
    if not all(f"{prefix}{n}" in measured for n in names):
        return None
    q_heads, kv_heads = outs[0] // head_dim, outs[1] // head_dim
    if outs[2] != outs[1] or kv_heads < 1 or q_heads % kv_heads:
        return None
    parts = [
        [f"{prefix}{names[0]}", 0, outs[0], q_heads],
        [f"{prefix}{names[1]}", 0, outs[1], kv_heads],
        [f"{prefix}{names[2]}", 0, outs[2], kv_heads],
    ]
    spec = {"num_heads": q_heads, "parts": parts, "kind": kind}
    if kv_heads != q_heads:
        spec["num_key_value_heads"] = kv_heads
    return spec


def is_rmsnorm(m: nn.Module) -> bool:
    """An RMSNorm (``torch.nn.RMSNorm`` or a transformers ``*RMSNorm``) with a 1-D ``weight`` and
    no other parameters of its own: scales each hidden channel, like a LayerNorm's weight."""
    if not (isinstance(m, nn.RMSNorm) or type(m).__name__.endswith("RMSNorm")):
        return False
    own = dict(m.named_parameters(recurse=False))
    w = own.get("weight")
    return set(own) == {"weight"} and w is not None and w.dim() == 1
