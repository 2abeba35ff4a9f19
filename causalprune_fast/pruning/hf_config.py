"""A Hugging Face language model after pruning: its config follows the pruned layers, so that
``save_pretrained`` / ``from_pretrained`` rebuilds it (docs/method.md section 9).

- Llama, Qwen2, Mistral, Gemma, Phi-3 (whole query heads pruned): ``hidden_size``,
  ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads`` and ``head_dim``.
- GPT-2 (head dims pruned, heads kept) and GPT-NeoX (whole heads pruned, head size kept): their
  configs have no width of attention of its own: every attention is ``hidden_size`` wide
  (GPT-2's ``n_embd`` split into ``n_head`` heads; GPT-NeoX's ``hidden_size /
  num_attention_heads`` channels per head). :func:`hidden_width_ratio` gives the hidden size
  (the residual stream's group) the ratio that leaves it exactly as wide as the pruned
  attention: ``heads x int(head_dim x (1 - ratio))`` for GPT-2, ``(heads - ceil(ratio x heads))
  x head_size`` for GPT-NeoX. Then ``n_embd`` / ``hidden_size``, ``n_inner`` /
  ``intermediate_size`` and ``num_attention_heads`` describe the model. GPT-2 scales its
  attention scores by ``head_dim ** -0.5`` as built: :func:`keep_attention_scale` folds the
  change into the queries.
- Gemma scales its embeddings by ``sqrt(hidden_size)`` (a buffer made from the config):
  :class:`ScaledEmbedding` keeps the pruned model's function under the new scale (the embedding
  rows times ``old / new``; with tied input and output embeddings, the final norm's scale times
  ``new / old``), so the reloaded model computes what the pruned one does.

Where pruned layers of one kind differ (``global_pruning``, ``round_to``), a config cannot
describe the model: a warning says so (save it with ``torch.save``).
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn as nn

from causalprune_fast.model.families import is_conv1d
from causalprune_fast.pruning.fused_projections import (
    SplitProjection,
    fused_mlp_layers,
    qkv_projections,
)


def in_features(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else int(m.weight.shape[0])


def out_features(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else int(m.weight.shape[1])


def is_mlp(m: nn.Module) -> bool:
    """A Llama-style (gate/up/down Linear), Phi-3 (gate_up/down), GPT-NeoX
    (dense_h_to_4h/dense_4h_to_h) or GPT-2 (c_fc/c_proj Conv1D) MLP."""
    gated = ("gate_proj", "up_proj", "down_proj")
    if all(isinstance(getattr(m, n, None), nn.Linear) for n in gated):
        return True
    if fused_mlp_layers(m) is not None:
        return True
    return is_conv1d(getattr(m, "c_fc", None)) and is_conv1d(getattr(m, "c_proj", None))


def mlp_width(m: nn.Module) -> int:
    """The intermediate size of an MLP of :func:`is_mlp`."""
    if isinstance(getattr(m, "gate_proj", None), nn.Linear):
        return m.gate_proj.out_features
    fused = fused_mlp_layers(m)
    if fused is not None:
        return in_features(fused[1])  # the output layer's inputs: gate_up is twice as wide
    return out_features(m.c_fc)


def embeddings(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """A Hugging Face model's input and output embeddings (None where it has none)."""
    found = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            m = getattr(model, getter)() if hasattr(model, getter) else None
        except (NotImplementedError, AttributeError):
            m = None
        found.append(m if isinstance(getattr(m, "weight", None), nn.Parameter) else None)
    return found[0], found[1]


def sync_rotary_attention(m: nn.Module) -> None:
    """The head counts of a Llama-style (or Phi-3) attention module after whole heads were
    pruned."""
    q, k, _ = qkv_projections(m)
    q_heads, kv_heads = q.out_features // m.head_dim, k.out_features // m.head_dim
    m.num_key_value_groups = q_heads // kv_heads
    if hasattr(m, "num_heads"):
        m.num_heads = q_heads
    if hasattr(m, "num_key_value_heads"):
        m.num_key_value_heads = kv_heads
    if hasattr(m, "hidden_size"):
        m.hidden_size = q.out_features  # as Torch-Pruning's LLM example sets it
    own = getattr(m, "config", None)
    if isinstance(getattr(m, "qkv_proj", None), SplitProjection) and own is not None:
        own.num_attention_heads = q_heads  # Phi-3 slices q, k, v by it (fused_projections)


def keep_attention_scale(m: nn.Module, head_dim_before: int) -> None:
    """GPT-2 attention whose head dims were pruned: its scores are scaled by
    ``head_dim ** -0.5``, a number its constructor computes from the config (``scaling``).
    The queries (the first third of ``c_attn``) are multiplied by ``sqrt(new / old)`` and
    ``scaling`` set to the new head dim's, so the pruned model computes what it computed with
    the old scale, and a model rebuilt from its config computes the same."""
    new = m.head_dim
    if new == head_dim_before or not getattr(m, "scale_attn_weights", False):
        return
    factor = math.sqrt(new / head_dim_before)
    e = m.split_size
    with torch.no_grad():
        m.c_attn.weight[:, :e] *= factor
        if m.c_attn.bias is not None:
            m.c_attn.bias[:e] *= factor
    if hasattr(m, "scaling"):
        m.scaling = new**-0.5


def hidden_width_ratio(
    modules: list[tuple[str, nn.Module]], ratio: float
) -> tuple[nn.Module, float] | None:
    """For GPT-2 and GPT-NeoX (module doc): a layer writing the residual stream and the
    ratio for its group that leaves the hidden size as wide as the attention will be after
    pruning at ``ratio``; None for other models, or where that width would be 0."""
    gpt2 = [m for kind, m in modules if kind == "gpt2"]
    neox = [m for kind, m in modules if kind == "neox"]
    if gpt2:
        a = gpt2[0]
        width, root = a.num_heads * int(a.head_dim * (1 - ratio)), a.c_proj
        hidden = int(a.c_proj.weight.shape[1])
    elif neox:
        a = neox[0]
        heads = a.query_key_value.out_features // (3 * a.head_size)
        width, root = (heads - math.ceil(ratio * heads)) * a.head_size, a.dense
        hidden = a.dense.out_features
    else:
        return None
    if width < 1 or width > hidden:
        return None
    return root, 1.0 - (width + 0.5) / hidden  # int(hidden * (1 - r)) == width


class ScaledEmbedding:
    """An input embedding that scales its rows by ``sqrt(hidden_size)`` (Gemma's
    ``*ScaledWordEmbedding``: ``embed_scale`` and ``scalar_embed_scale``), recorded before
    pruning; :meth:`sync` afterwards (module doc)."""

    def __init__(self, model: nn.Module):
        emb, out = embeddings(model)
        self.emb, self.out, self.width, self.scale = None, out, 0, 0.0
        scale = getattr(emb, "scalar_embed_scale", None)
        if emb is None or not isinstance(getattr(emb, "embed_scale", None), torch.Tensor):
            return
        width = int(emb.weight.shape[1])
        if isinstance(scale, int | float) and math.isclose(scale, math.sqrt(width), rel_tol=1e-6):
            self.emb, self.width, self.scale = emb, width, float(scale)

    def sync(self, model: nn.Module) -> str | None:
        """Rescale after pruning (module doc); a reason where the function cannot be kept."""
        emb = self.emb
        if emb is None or int(emb.weight.shape[1]) == self.width:
            return None
        new = math.sqrt(int(emb.weight.shape[1]))
        factor = self.scale / new
        tied = self.out is not None and self.out.weight is emb.weight
        norm = _final_norm(model, int(emb.weight.shape[1])) if tied else None
        if tied and norm is None:
            return "the final norm before the tied output embedding was not found"
        with torch.no_grad():
            emb.weight.mul_(factor)
            emb.embed_scale.fill_(new)
            if norm is not None:
                norm(1.0 / factor)
        emb.scalar_embed_scale = new
        self.scale, self.width = new, int(emb.weight.shape[1])
        return None


def _final_norm(model: nn.Module, width: int):
    """A function scaling the output of the model's final norm (``model.model.norm`` or
    ``gpt_neox.final_layer_norm``: a norm of ``width`` channels whose weight multiplies its
    output as ``w`` or, Gemma's, ``1 + w``), or None."""
    base = getattr(model, "base_model", model)
    norm = getattr(base, "norm", None) or getattr(base, "final_layer_norm", None)
    w = getattr(norm, "weight", None)
    if not isinstance(w, nn.Parameter) or w.dim() != 1 or w.shape[0] != width:
        return None
    if getattr(norm, "bias", None) is not None:
        return None  # a LayerNorm's shift would need scaling too: not one of these norms
    probe = copy.deepcopy(norm).float()
    x = torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probe.weight.zero_()
        zero = probe(x)
    offset = 0.0 if float(zero.abs().max()) == 0.0 else 1.0  # y = norm(x) * (offset + w)

    def scale(by: float) -> None:
        w.copy_((offset + w) * by - offset)

    return scale


def sync_hf_config(plan, model: nn.Module, config, warn: bool) -> None:
    """``config`` of a pruned Hugging Face model (the first layer's counts; module doc).
    ``plan``: the model's ``AttentionPruning`` (``pruning/attention_pruning.py``)."""
    emb, out = embeddings(model)
    width = None if emb is None else int(emb.weight.shape[1])
    if plan.tied and width is not None:
        if out is not None and out.weight.shape == emb.weight.shape:
            out.weight = emb.weight  # both were pruned with the same hidden channels
    kinds = {kind: [m for k, m in plan.modules if k == kind] for kind in plan.kinds()}
    llama, gpt2, neox = kinds.get("llama", []), kinds.get("gpt2", []), kinds.get("neox", [])
    mlps = kinds.get("mlp", [])
    if (llama or gpt2 or neox) and width is not None:
        config.hidden_size = width  # GPT-2's config maps hidden_size to n_embd
    if mlps and (llama or gpt2 or neox):
        inner = mlp_width(mlps[0])
        if gpt2:
            config.n_inner = inner
        else:
            config.intermediate_size = inner
    if llama:
        a = llama[0]
        q, k, _ = qkv_projections(a)
        config.num_attention_heads = q.out_features // a.head_dim
        config.num_key_value_heads = k.out_features // a.head_dim
        config.head_dim = a.head_dim
    if neox:
        a = neox[0]
        config.num_attention_heads = a.query_key_value.out_features // (3 * a.head_size)
    attention = [qkv_projections(m)[0].out_features for m in llama]
    attention += [int(m.c_attn.weight.shape[1]) // 3 for m in gpt2]
    attention += [m.query_key_value.out_features // 3 for m in neox]
    per_layer = {"attention widths": attention, "MLP widths": [mlp_width(m) for m in mlps]}
    differ = [f"{k} {v}" for k, v in per_layer.items() if len(set(v)) > 1]
    if (gpt2 or neox) and width is not None and attention and attention[0] != width:
        differ.append(f"attention width {attention[0]} != hidden size {width}")
    if differ and warn:
        warnings.warn(
            f"the pruned layers differ ({'; '.join(differ)}): the model runs, but its "
            "config holds the first layer's numbers and cannot rebuild it "
            "(save it with torch.save, not save_pretrained)",
            UserWarning,
            stacklevel=4,
        )
    bert = kinds.get("bert", [])
    if bert:
        if emb is not None and hasattr(config, "hidden_size"):
            config.hidden_size = emb.weight.shape[1]
        if hasattr(config, "num_attention_heads"):
            config.num_attention_heads = bert[0].num_attention_heads
