"""What Torch-Pruning must be told about a model's attention, and the attributes to update after
pruning, following Torch-Pruning's own examples (``examples/transformers/prune_hf_bert.py``,
``examples/torchvision_models/torchvision_pruning.py``):

- timm ``Attention`` (``qkv`` Linear): ``num_heads[qkv]``, head dims pruned, the number of
  heads kept; afterwards ``num_heads``, ``head_dim`` and ``attn_dim`` follow ``qkv``.
- ``nn.MultiheadAttention`` (torchvision ViT): its embedding channels are pruned in
  ``num_heads`` channel groups (the same position in every head, so ``embed_dim`` stays a
  multiple of ``num_heads``; Torch-Pruning updates ``embed_dim`` and ``head_dim``); a torchvision
  ``VisionTransformer``'s ``hidden_dim`` follows ``conv_proj``.
- BERT-style self-attention (``query``/``key``/``value``, ``attention_head_size``): head dims
  pruned; afterwards ``attention_head_size`` and ``all_head_size`` follow ``query``.

Not supported (:func:`attention_pruning` raises a ValueError that says why, instead of letting
Torch-Pruning fail or hang): GPT-2's transformers ``Conv1D`` layers (Torch-Pruning 1.6.1 has no
pruner for them) and Llama-style attention with rotary embeddings (with transformers 5.24 the
slice/neg/cat of ``rotate_half`` makes Torch-Pruning 1.6.1's group search run for minutes on a
one-layer model without finishing). Both are scored by :func:`causalprune_fast.score_model`.

Model outputs that are dicts, ``ModelOutput`` s or tuples holding caches are reduced to their
tensors for Torch-Pruning's tracer (:func:`output_tensors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from causalprune_fast.integrations.hf import is_conv1d
from causalprune_fast.outputs import output_tensors


@dataclass
class AttentionPruning:
    """Torch-Pruning arguments for a model's attention modules, and :meth:`sync`."""

    num_heads: dict[nn.Module, int] = field(default_factory=dict)
    out_channel_groups: dict[nn.Module, int] = field(default_factory=dict)
    modules: list[tuple[str, nn.Module]] = field(default_factory=list)  # (kind, module)

    def pruner_kwargs(self) -> dict:
        """Keyword arguments for ``tp.pruner.BasePruner``: head dims are pruned, head counts
        kept."""
        return dict(
            num_heads=dict(self.num_heads),
            out_channel_groups=dict(self.out_channel_groups),
            prune_num_heads=False,
            prune_head_dims=True,
            output_transform=output_tensors,
        )

    def sync(self, model: nn.Module, pruner) -> None:
        """Update the attributes that the modules' forward reads from the pruned weights
        (``pruner.num_heads``: Torch-Pruning's head counts after pruning)."""
        config = getattr(model, "config", None)
        heads_now = getattr(pruner, "num_heads", {})
        for kind, m in self.modules:
            if kind == "timm":
                m.num_heads = heads_now.get(m.qkv, m.num_heads)
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
                if hasattr(m, "attn_dim"):
                    m.attn_dim = m.num_heads * m.head_dim
            elif kind == "torchvision-vit":
                m.hidden_dim = m.conv_proj.out_channels
            elif kind == "bert":
                m.num_attention_heads = heads_now.get(m.query, m.num_attention_heads)
                m.attention_head_size = m.query.out_features // m.num_attention_heads
                m.all_head_size = m.query.out_features
            elif kind == "bert-intermediate" and config is not None:
                config.intermediate_size = m.dense.out_features
        bert = [m for k, m in self.modules if k == "bert"]
        if config is not None and bert and hasattr(model, "get_input_embeddings"):
            emb = model.get_input_embeddings()
            if emb is not None and hasattr(config, "hidden_size"):
                config.hidden_size = emb.weight.shape[1]
            if hasattr(config, "num_attention_heads"):
                config.num_attention_heads = bert[0].num_attention_heads


def attention_pruning(model: nn.Module) -> AttentionPruning:
    """The :class:`AttentionPruning` of ``model`` (empty for models without attention)."""
    plan = AttentionPruning()
    for m in model.modules():
        qkv, heads = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(m, nn.MultiheadAttention):
            if m.num_heads > 1:
                plan.out_channel_groups[m] = m.num_heads
        elif isinstance(qkv, nn.Linear) and isinstance(heads, int) and heads > 0:
            plan.num_heads[qkv] = heads
            if hasattr(m, "head_dim"):
                plan.modules.append(("timm", m))
        elif type(m).__name__ == "VisionTransformer" and hasattr(m, "conv_proj"):
            plan.modules.append(("torchvision-vit", m))
        elif _is_bert_attention(m):
            for p in (m.query, m.key, m.value):
                plan.num_heads[p] = m.num_attention_heads
            plan.modules.append(("bert", m))
        elif isinstance(getattr(m, "dense", None), nn.Linear) and hasattr(m, "intermediate_act_fn"):
            plan.modules.append(("bert-intermediate", m))
        elif _is_llama_attention(m):
            raise ValueError(
                f"prune(): '{type(m).__name__}' (q_proj/k_proj/v_proj with rotary embeddings) "
                "is not supported: Torch-Pruning 1.6.1's group search does not finish on its "
                "rotate_half graph; score it with score_model instead"
            )
        elif is_conv1d(m):
            raise ValueError(
                "prune(): transformers Conv1D layers (GPT-2) are not supported: Torch-Pruning "
                "1.6.1 has no pruner for them; score them with score_model instead"
            )
    return plan


def _is_bert_attention(m: nn.Module) -> bool:
    return (
        isinstance(getattr(m, "num_attention_heads", None), int)
        and isinstance(getattr(m, "attention_head_size", None), int)
        and all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value"))
    )


def _is_llama_attention(m: nn.Module) -> bool:
    d = getattr(m, "head_dim", None)
    return (
        isinstance(d, int)
        and d > 0
        and all(isinstance(getattr(m, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj"))
    )
