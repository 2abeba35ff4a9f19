"""Fused projections of language models while Torch-Pruning prunes them (docs/method.md
section 9): Phi-3's ``qkv_proj`` is split into its q, k and v projections and joined again
afterwards; which attention and MLP modules are of which family.

Phi-3's attention computes ``qkv = qkv_proj(x)`` and slices q, k and v out of its last
dimension (``num_attention_heads`` query heads, ``num_key_value_heads`` key/value heads, all
``head_dim`` channels). Torch-Pruning 1.6 prunes whole heads of grouped-query attention only
where q, k and v are separate layers (its head pruning takes one fused layer to hold three
equal parts). While Phi-3 is pruned, each ``qkv_proj`` is replaced by a
:class:`SplitProjection`: three Linear layers (``q_proj``, ``k_proj``, ``v_proj``, the rows of
the fused weight and bias) whose outputs are concatenated along the last dimension, the same
function; the concatenation is given an index mapping
(:mod:`causalprune_fast.model.llm_index_maps`), the slices are Torch-Pruning's own. The
attention is then pruned as Llama's is (whole query heads, the same number per key/value
group). :meth:`FusedProjections.join` puts the original ``qkv_proj`` module back with the
concatenated pruned weights. Phi-3's attention reads its number of query heads from the config
that all layers share; while it is split, each attention module holds a copy of its own (its
``num_attention_heads`` follows its own pruned heads, so that layers pruned one at a time run),
and gets the shared one back when joined. Phi-3's ``gate_up_proj`` (``chunk(2)`` into gate and
up) stays fused: it is pruned in two channel groups (Torch-Pruning's ``out_channel_groups``),
so that gate channel ``i`` and up channel ``i`` go together.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn as nn


class SplitProjection(nn.Module):
    """Separate q, k and v Linear layers standing in for a fused projection: ``forward``
    concatenates their outputs along the last dimension, as the fused layer computes them."""

    PARTS = ("q_proj", "k_proj", "v_proj")

    def __init__(self, fused: nn.Linear, sizes: tuple[int, int, int]):
        super().__init__()
        w, b = fused.weight, fused.bias
        start = 0
        for name, size in zip(self.PARTS, sizes, strict=True):
            part = nn.Linear(fused.in_features, size, bias=b is not None, device=w.device,
                             dtype=w.dtype)  # fmt: skip
            with torch.no_grad():
                part.weight.copy_(w[start : start + size])
                if b is not None:
                    part.bias.copy_(b[start : start + size])
            part.weight.requires_grad_(w.requires_grad)
            if b is not None:
                part.bias.requires_grad_(b.requires_grad)
            setattr(self, name, part)
            start += size
        self.train(fused.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, n)(x) for n in self.PARTS], dim=-1)

    def parts(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return tuple(getattr(self, n) for n in self.PARTS)


def _rotary(m: nn.Module) -> bool:
    return callable(getattr(sys.modules.get(type(m).__module__), "apply_rotary_pos_emb", None))


def is_fused_qkv_attention(m: nn.Module) -> bool:
    """Phi-3-style rotary attention: a fused ``qkv_proj`` Linear (or its :class:`SplitProjection`
    while pruned), ``head_dim``, ``num_key_value_heads`` and an ``o_proj``."""
    qkv, d = getattr(m, "qkv_proj", None), getattr(m, "head_dim", None)
    kv = getattr(m, "num_key_value_heads", None)
    return (
        isinstance(qkv, nn.Linear | SplitProjection)
        and isinstance(d, int)
        and isinstance(kv, int)
        and d > 0
        and kv > 0
        and isinstance(getattr(m, "o_proj", None), nn.Linear)
        and _rotary(m)
    )


def is_neox_attention(m: nn.Module) -> bool:
    """GPT-NeoX attention: a fused ``query_key_value`` Linear laid out per head (q, k, v of
    ``head_size`` channels each), a ``dense`` output projection, rotary embeddings."""
    qkv, size = getattr(m, "query_key_value", None), getattr(m, "head_size", None)
    return (
        isinstance(qkv, nn.Linear)
        and isinstance(size, int)
        and size > 0
        and qkv.out_features % (3 * size) == 0
        and isinstance(getattr(m, "dense", None), nn.Linear)
        and _rotary(m)
    )


def qkv_projections(m: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The q, k and v projections of Llama-style attention, or of a Phi-3 attention whose
    ``qkv_proj`` is split (:class:`FusedProjections`)."""
    if isinstance(getattr(m, "qkv_proj", None), SplitProjection):
        return m.qkv_proj.parts()
    return m.q_proj, m.k_proj, m.v_proj


def fused_mlp_layers(m: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """``(input, output)`` layers of a Phi-3 MLP (``gate_up_proj``, gate then up, and
    ``down_proj``) or a GPT-NeoX MLP (``dense_h_to_4h``, ``dense_4h_to_h``); None otherwise."""
    for first, last in (("gate_up_proj", "down_proj"), ("dense_h_to_4h", "dense_4h_to_h")):
        a, b = getattr(m, first, None), getattr(m, last, None)
        if isinstance(a, nn.Linear) and isinstance(b, nn.Linear):
            return a, b
    return None


class FusedProjections:
    """The fused ``qkv_proj`` layers of Phi-3 attention modules, split while pruned
    (:meth:`split`, idempotent) and joined again (:meth:`join`); see the module doc."""

    def __init__(self, attention: list[nn.Module]):
        self.fused = {m: m.qkv_proj for m in attention if isinstance(m.qkv_proj, nn.Linear)}
        self.configs = {m: getattr(m, "config", None) for m in self.fused}

    def split(self) -> None:
        """Replace every fused ``qkv_proj`` by its :class:`SplitProjection`."""
        for m, fused in self.fused.items():
            if m.qkv_proj is not fused:
                continue
            d, kv = m.head_dim, m.num_key_value_heads
            q = fused.out_features - 2 * kv * d
            if q <= 0 or q % d:
                raise ValueError(
                    f"prune(): {type(m).__name__}.qkv_proj has {fused.out_features} outputs, not "
                    f"query heads and 2 x num_key_value_heads ({kv}) x head_dim ({d})"
                )
            m.qkv_proj = SplitProjection(fused, (q, kv * d, kv * d))
            if self.configs[m] is not None:
                m.config = copy.copy(self.configs[m])  # this layer's head count (module doc)

    def join(self) -> None:
        """Put each original ``qkv_proj`` back, holding the concatenated (pruned) weights of
        its split parts (new parameters with the old ones' ``requires_grad``)."""
        for m, fused in self.fused.items():
            split = m.qkv_proj
            if not isinstance(split, SplitProjection):
                continue
            parts = split.parts()
            with torch.no_grad():
                weight = torch.cat([p.weight for p in parts])
                bias = None if fused.bias is None else torch.cat([p.bias for p in parts])
            fused.weight = nn.Parameter(weight, requires_grad=fused.weight.requires_grad)
            if bias is not None:
                fused.bias = nn.Parameter(bias, requires_grad=fused.bias.requires_grad)
            fused.out_features, fused.in_features = int(weight.shape[0]), int(weight.shape[1])
            m.qkv_proj = fused
            if self.configs[m] is not None:
                m.config = self.configs[m]
