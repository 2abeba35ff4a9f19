"""Attention: measured layers that are not modules of their own, and attention-head scores
(docs/method.md section 3: attention heads; section 6: an attention head is the set of its
channels).

Virtual layers
--------------
``nn.MultiheadAttention`` keeps its input projection as bare parameters (``in_proj_weight``,
``in_proj_bias``) and calls ``F.multi_head_attention_forward`` (or a fused kernel) with the
weights of ``out_proj``, so no forward hook ever fires on a projection. Both projections are
measured as :class:`VirtualLayer` s, driven by a forward hook on the attention module itself
(``register_forward_hook(..., with_kwargs=True)``); they flow through the same sampling,
binning and MI code as Linear layers, in both modes:

- ``<mha>.in_proj``: input the query ``[N, L, E]`` (batch first), output
  ``F.linear(query, in_proj_weight, in_proj_bias)``: ``3E`` channels, q then k then v, each
  ``num_heads`` heads of ``head_dim`` channels. Supported for self-attention
  (``query is key is value``) with a packed in-projection (``_qkv_same_embed_dim``); a module
  with separate q/k/v weights (``kdim``/``vdim`` differ from ``embed_dim``) is reported in
  ``scores.unsupported``, and so is a module called with different query, key and value
  (cross-attention) or an unbatched input.
- ``<mha>.out_proj``: input the concatenated head outputs, recomputed exactly from the
  module's own inputs and keyword arguments by calling the module once more with
  ``out_proj`` replaced by the identity (``torch.func.functional_call``; re-entrant hooks are
  suppressed); output the module's real output. Supported for every call the module accepts.

In local mode each virtual layer is driven alone: ``F.linear`` of the noise with its weights.
Virtual layers use the raw output as their response point and are their own only producer
(they are not nodes of Torch-Pruning's dependency graph).

Head scores
-----------
An attention module's head spec lists the parts of its q, k and v projections:
``[layer, start, stop, heads]`` (channels ``start:stop`` of ``layer``, ``heads`` heads of
contiguous channels). The score of query head ``h`` is the sum of the channel scores of every
part's head that ``h`` uses: its own q channels, and the k and v channels of its key/value
head. With grouped-query attention (``G`` key/value heads shared by ``H / G`` query heads
each, query head ``h`` using key/value head ``h // (H / G)`` as HF's ``repeat_kv`` does) a
key/value head's score is split evenly between the query heads that share it, so the head
scores of a module always add up to the scores of all its q, k and v channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from causalprune_fast.model.channel_members import alone
from causalprune_fast.model.families import TransposedLinearLayer, hf_head_spec, is_conv1d
from causalprune_fast.model.layers import Layer
from causalprune_fast.model.response import ResponsePoint

# Attention modules whose hooks are suppressed while a virtual layer recomputes their output.
_RECOMPUTING: set[int] = set()

Capture = Callable[[nn.Module, tuple, dict, object], "tuple[torch.Tensor, torch.Tensor] | str"]


@dataclass(eq=False)
class VirtualLayer(Layer):
    """A measured linear map that is not a module of its own.

    ``module`` is the host module the hooks go on; ``capture(module, args, kwargs, output)``
    returns the layer's input ``[N, ..., in_features]`` and output ``[N, ..., out_features]``
    (batch first) for one call of the host, or a string saying why this call cannot be
    measured; ``apply(x)`` is the layer itself, for local mode.
    """

    in_features: int = 0
    out_features: int = 0
    capture: Capture | None = None
    apply: Callable[[torch.Tensor], torch.Tensor] | None = None
    label: str = "virtual"
    unsupported_reason: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.label

    @property
    def is_conv(self) -> bool:
        return False

    @property
    def groups(self) -> int:
        return 1

    @property
    def in_channels(self) -> int:
        return self.in_features

    @property
    def out_channels(self) -> int:
        return self.out_features

    @property
    def in_dependency_graph(self) -> bool:
        return False

    def response_point(self, finder) -> ResponsePoint:
        return ResponsePoint(reason=f"{self.label} is a virtual layer: raw output")

    def register_forward_hook(self, hook: Callable):
        """``hook(host, (layer_input,), layer_output)`` after each measurable host call."""

        def wrapper(module, args, kwargs, output):
            if id(module) in _RECOMPUTING:
                return None
            got = self.capture(module, args, kwargs, output)
            if isinstance(got, str):
                self.unsupported_reason = got
                return None
            hook(module, (got[0],), got[1])
            return None

        return self.module.register_forward_hook(wrapper, with_kwargs=True)

    def register_forward_pre_hook(self, hook: Callable):
        def wrapper(module, args):
            if id(module) in _RECOMPUTING:
                return None
            hook(module, args)
            return None

        return self.module.register_forward_pre_hook(wrapper)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)


# ----------------------------------------------------------------------------- MHA


def _mha_inputs(module: nn.MultiheadAttention, args: tuple, kwargs: dict):
    names = ("query", "key", "value")
    got = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]) :]]
    return got


def _batch_first(module: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    return t if module.batch_first else t.transpose(0, 1)


def _in_proj_capture(module, args, kwargs, output):
    query, key, value = _mha_inputs(module, args, kwargs)
    if query is None or query.dim() != 3:
        return "unbatched or missing query: the in-projection is measured on batched inputs"
    if query is not key or key is not value:
        return (
            "called with different query, key and value (cross-attention): only "
            "self-attention in-projections are measured"
        )
    x = _batch_first(module, query)
    return x, F.linear(x, module.in_proj_weight, module.in_proj_bias)


def _out_proj_capture(module, args, kwargs, output):
    query = _mha_inputs(module, args, kwargs)[0]
    if query is None or query.dim() != 3:
        return "unbatched or missing query: out_proj is measured on batched inputs"
    return mha_out_proj_input(module, args, kwargs), _batch_first(module, output[0])


def mha_out_proj_input(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> torch.Tensor:
    """The input of ``module.out_proj`` (the concatenated head outputs, batch first) in the
    call ``module(*args, **kwargs)``: the module run again with ``out_proj`` replaced by the
    identity."""
    w = module.out_proj.weight
    params = {"out_proj.weight": torch.eye(w.shape[1], dtype=w.dtype, device=w.device)}
    if module.out_proj.bias is not None:
        params["out_proj.bias"] = torch.zeros_like(module.out_proj.bias)
    _RECOMPUTING.add(id(module))
    try:
        with torch.no_grad():
            out = torch.func.functional_call(module, params, args, kwargs)
    finally:
        _RECOMPUTING.discard(id(module))
    return _batch_first(module, out[0])


def mha_layers(name: str, module: nn.MultiheadAttention) -> tuple[list[Layer], dict[str, str]]:
    """The virtual layers of an ``nn.MultiheadAttention`` and the parts it cannot measure."""
    prefix = f"{name}." if name else ""
    e = module.embed_dim
    layers: list[Layer] = []
    unsupported: dict[str, str] = {}
    if module._qkv_same_embed_dim and module.in_proj_weight is not None:
        layers.append(
            VirtualLayer(
                f"{prefix}in_proj",
                module,
                in_features=e,
                out_features=int(module.in_proj_weight.shape[0]),
                capture=_in_proj_capture,
                apply=lambda x, m=module: F.linear(x, m.in_proj_weight, m.in_proj_bias),
                label="MultiheadAttention.in_proj",
            )
        )
    else:
        unsupported[f"{prefix}in_proj"] = (
            "MultiheadAttention with separate q/k/v projection weights (kdim/vdim != "
            "embed_dim) is not measured; only its out_proj is"
        )
    if module.bias_k is not None or module.bias_v is not None:
        unsupported[f"{name or '<root>'}.bias_k/bias_v"] = "extra key/value biases are not scored"
    out = module.out_proj
    layers.append(
        VirtualLayer(
            f"{prefix}out_proj",
            module,
            in_features=out.in_features,
            out_features=out.out_features,
            capture=_out_proj_capture,
            apply=lambda x, m=out: F.linear(x, m.weight, m.bias),
            label="MultiheadAttention.out_proj",
        )
    )
    return layers, unsupported


# ----------------------------------------------------------------------------- discovery


@dataclass
class Special:
    """What :func:`special_layers` found at one module: its measured layers, qualified names
    of submodules that must not be measured again, and parts it cannot measure."""

    layers: list[Layer]
    skip: set[str] = field(default_factory=set)
    unsupported: dict[str, str] = field(default_factory=dict)


def special_layers(name: str, module: nn.Module) -> Special | None:
    """Measured layers of ``module`` that are not plain Conv/Linear modules: the virtual
    projections of an ``nn.MultiheadAttention`` (its ``out_proj`` submodule is skipped) and a
    transformers ``Conv1D``. None for every other module."""
    if isinstance(module, nn.MultiheadAttention):
        layers, unsupported = mha_layers(name, module)
        return Special(layers, {f"{name}.out_proj" if name else "out_proj"}, unsupported)
    if is_conv1d(module):
        return Special([TransposedLinearLayer(name, module)])
    return None


def own_groups(layers: list[Layer]) -> dict:
    """Channel groups of layers that are not in the dependency graph: each layer is the only
    producer of its output channels."""
    return {layer.name: alone(layer.name, layer.out_channels) for layer in layers}


def find_heads(model: nn.Module, measured: set[str]) -> dict[str, dict]:
    """Head specs of every attention module whose q, k and v projections are measured: timm
    ``Attention`` (a ``qkv`` Linear and ``num_heads``), ``nn.MultiheadAttention`` (packed
    in-projection) and HF attention modules (GPT-2, BERT-style, Llama-style with GQA)."""
    out = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.MultiheadAttention):
            layer = f"{prefix}in_proj"
            if layer in measured:
                out[name] = _packed_spec(layer, m.embed_dim, m.num_heads, "MultiheadAttention")
            continue
        qkv, heads = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(heads, int) and heads > 0:
            layer = f"{prefix}qkv"
            if layer in measured and qkv.out_features % (3 * heads) == 0:
                out[name] = _packed_spec(layer, qkv.out_features // 3, heads, "timm qkv")
            continue
        spec = hf_head_spec(name, m, measured)
        if spec is not None:
            out[name] = spec
    return out


def _packed_spec(layer: str, width: int, heads: int, kind: str) -> dict:
    parts = [[layer, k * width, (k + 1) * width, heads] for k in range(3)]
    return {"num_heads": heads, "parts": parts, "kind": kind}


def spec_parts(spec: dict, scores: dict[str, torch.Tensor]) -> list[list] | None:
    """The parts of a head spec, or None where a projection has no scores; also reads the
    older ``{"qkv": name, "num_heads": n}`` form (a packed q|k|v projection)."""
    if "parts" in spec:
        parts = [list(p) for p in spec["parts"]]
    elif spec.get("qkv") in scores:
        parts = _packed_spec(spec["qkv"], len(scores[spec["qkv"]]) // 3, spec["num_heads"], "")
        parts = parts["parts"]
    else:
        return None
    return parts if all(p[0] in scores for p in parts) else None


def head_scores(specs: dict[str, dict], scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[num_heads]`` scores per attention module from the channel scores of its q, k and v
    projections (the module docstring says how a head's score is formed). Modules with a
    projection that has no scores are left out."""
    out = {}
    for attn, spec in specs.items():
        parts = spec_parts(spec, scores)
        if parts is None:
            continue
        heads = int(spec["num_heads"])
        total = torch.zeros(heads, dtype=torch.float64)
        for layer, start, stop, part_heads in parts:
            per_head = scores[layer].double()[start:stop].reshape(part_heads, -1).sum(dim=1)
            share = heads // part_heads
            total += per_head.repeat_interleave(share) / share
        out[attn] = total
    return out
