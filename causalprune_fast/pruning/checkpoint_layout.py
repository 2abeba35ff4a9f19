"""How ``prune()`` cuts a Llama-layout or GPT-2 model, stated as rules of the layout, so that a
checkpoint can be pruned without Torch-Pruning's graph (which needs the whole model in memory).

The channel groups :func:`~causalprune_fast.prune` hands to Torch-Pruning's pruner
(``pruning/attention_pruning.py`` sets it up) are, for these layouts:

- **the hidden size** (the residual stream): every embedding, norm weight and projection
  that reads or writes the stream. Torch-Pruning roots it at the last layer that adds into the
  stream (``model.layers[-1].mlp.down_proj``, ``transformer.h[-1].mlp.c_proj``), and its
  importance is that root's channel group
  (:meth:`~causalprune_fast.model.block_layouts.Family.stream_group`);
- **the MLP width** of every block: rooted at ``up_proj`` (members ``up_proj``,
  ``down_proj``, ``gate_proj``) or ``c_fc`` (``c_fc``, ``mlp.c_proj``);
- **the attention** of every block, which Torch-Pruning re-roots at the output projection's
  input channels: Llama ``o_proj`` (members ``o_proj`` and ``q_proj``; without grouped-query
  attention also ``v_proj`` and ``k_proj``, one-to-one) whose whole query heads are pruned;
  GPT-2 ``attn.c_proj`` (members ``c_proj`` and ``c_attn``, whose query, key and value
  channel ``i`` all carry channel ``i``) whose head dims are pruned, the same in every head.

:func:`tensor_cuts` says which dimensions of every checkpoint tensor follow which kept
channels, :func:`scale_queries` rescales GPT-2's queries for the new head size, and
:func:`pruned_config` writes the config of the pruned model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from causalprune_fast.model.block_layouts import Family, identity_member, out_features
from causalprune_fast.model.channel_members import Member


@dataclass(frozen=True)
class PruneGroup:
    """One of the groups prune() hands to Torch-Pruning (module docstring).

    ``members`` carry the channels of the importance's index space (``width`` channels):
    the stream's, the MLP's, or the attention output projection's input channels.
    ``root`` names the group as prune()'s report does.
    """

    kind: str  # "hidden", "mlp" or "attention"
    root: str
    block: int | None
    members: list[Member]
    width: int
    heads: int = 0  # attention: query heads
    kv_heads: int = 0  # attention: key/value heads


def prune_groups(family: Family, model: nn.Module) -> list[PruneGroup]:
    """The groups prune() prunes in a model of ``family``, in module order."""
    out = []
    for k, block in enumerate(family.block_names(model)):
        out += _block_groups(family, model, k, block)
    last = family.stream_producers(model)[-1]
    hidden = out_features(model.get_submodule(last))
    out.append(PruneGroup("hidden", last, None, family.stream_group(model, last), hidden))
    return out


def _block_groups(family: Family, model: nn.Module, k: int, block: str) -> list[PruneGroup]:
    get = model.get_submodule
    if family.name == "llama":
        a, m = f"{block}.self_attn", f"{block}.mlp"
        q, kp, v, o = (f"{a}.{p}_proj" for p in "qkvo")
        attn = get(a)
        hd = attn.head_dim
        heads, kv = out_features(get(q)) // hd, out_features(get(kp)) // hd
        width = heads * hd
        if kv < heads:
            members = [identity_member(o, "consumer", width), identity_member(q, "producer", width)]
            root = q
        else:
            members = [identity_member(o, "consumer", width)] + [
                identity_member(n, "producer", width) for n in (v, kp, q)
            ]
            root = v
        inner = out_features(get(f"{m}.up_proj"))
        mlp = [
            identity_member(f"{m}.up_proj", "producer", inner),
            identity_member(f"{m}.down_proj", "consumer", inner),
            identity_member(f"{m}.gate_proj", "producer", inner),
        ]
        return [
            PruneGroup("attention", root, k, members, width, heads, kv),
            PruneGroup("mlp", f"{m}.up_proj", k, mlp, inner),
        ]
    c_attn, c_proj = f"{block}.attn.c_attn", f"{block}.attn.c_proj"
    e = out_features(get(c_attn)) // 3
    heads = get(f"{block}.attn").num_heads
    qkv = tuple(range(3 * e))
    members = [
        identity_member(c_proj, "consumer", e),
        Member(c_attn, "producer", qkv, tuple(i % e for i in qkv)),
    ]
    fc, proj = f"{block}.mlp.c_fc", f"{block}.mlp.c_proj"
    inner = out_features(get(fc))
    mlp = [identity_member(fc, "producer", inner), identity_member(proj, "consumer", inner)]
    return [
        PruneGroup("attention", c_attn, k, members, e, heads, heads),
        PruneGroup("mlp", fc, k, mlp, inner),
    ]


# ---------------------------------------------------------------------------- tensors

# (pattern, [(dim, what)]): ``what`` names kept channels: "hidden", or per block "mlp",
# "q" (query channels), "kv" (key/value channels), "qkv" (GPT-2 c_attn outputs), "attn"
# (GPT-2 attention width: c_proj inputs). An empty list: copied as it is.
_LLAMA = [
    (r"model\.embed_tokens\.weight", [(1, "hidden")]),
    (r"lm_head\.weight", [(1, "hidden")]),
    (r"model\.norm\.weight", [(0, "hidden")]),
    (r"model\.layers\.(\d+)\.(input|post_attention)_layernorm\.weight", [(0, "hidden")]),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", [(0, "q"), (1, "hidden")]),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.bias", [(0, "q")]),
    (r"model\.layers\.(\d+)\.self_attn\.[kv]_proj\.weight", [(0, "kv"), (1, "hidden")]),
    (r"model\.layers\.(\d+)\.self_attn\.[kv]_proj\.bias", [(0, "kv")]),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", [(0, "hidden"), (1, "q")]),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.bias", [(0, "hidden")]),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up)_proj\.weight", [(0, "mlp"), (1, "hidden")]),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up)_proj\.bias", [(0, "mlp")]),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", [(0, "hidden"), (1, "mlp")]),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.bias", [(0, "hidden")]),
]
_GPT2 = [
    (r"transformer\.(wte|wpe)\.weight", [(1, "hidden")]),
    (r"lm_head\.weight", [(1, "hidden")]),
    (r"transformer\.ln_f\.(weight|bias)", [(0, "hidden")]),
    (r"transformer\.h\.(\d+)\.ln_[12]\.(weight|bias)", [(0, "hidden")]),
    (r"transformer\.h\.(\d+)\.attn\.c_attn\.weight", [(0, "hidden"), (1, "qkv")]),
    (r"transformer\.h\.(\d+)\.attn\.c_attn\.bias", [(0, "qkv")]),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.weight", [(0, "attn"), (1, "hidden")]),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.bias", [(0, "hidden")]),
    (r"transformer\.h\.(\d+)\.mlp\.c_fc\.weight", [(0, "hidden"), (1, "mlp")]),
    (r"transformer\.h\.(\d+)\.mlp\.c_fc\.bias", [(0, "mlp")]),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.weight", [(0, "mlp"), (1, "hidden")]),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.bias", [(0, "hidden")]),
    (r"transformer\.h\.(\d+)\.attn\.(masked_)?bias", []),  # causal-mask buffers of old files
]


def tensor_cuts(family: Family, name: str) -> list[tuple[int, str, int | None]]:
    """``(dim, what, block)`` for every dimension of checkpoint tensor ``name`` that loses
    channels (module constants above); ValueError naming a tensor the layout does not have."""
    for pattern, cuts in _LLAMA if family.name == "llama" else _GPT2:
        m = re.fullmatch(pattern, name)
        if m:
            block = int(m.group(1)) if m.groups() and m.group(1).isdigit() else None
            return [(dim, what, None if what == "hidden" else block) for dim, what in cuts]
    raise ValueError(
        f"checkpoint tensor {name!r} is not part of the {family.name} layout that the shard "
        "pruner knows; it cannot say which of its channels to keep"
    )


_GPT2_QKV = r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)"


def scale_queries(family: Family, name: str, t, factor: float):
    """GPT-2: ``c_attn``'s query channels (the first third of its outputs, the last dimension
    of its weight and bias) of the pruned tensor ``t`` multiplied by ``factor`` in place, as
    :func:`~causalprune_fast.pruning.hf_config.keep_attention_scale` does in memory; ``t`` as it
    is for any other tensor or a factor of 1."""
    if family.name == "gpt2" and factor != 1.0 and re.fullmatch(_GPT2_QKV, name):
        t[..., : t.shape[-1] // 3] *= factor
    return t


def pruned_config(family: Family, config: dict, widths: dict[str, int]) -> dict:
    """``config.json`` of the pruned model. ``widths``: ``hidden``, ``mlp``, ``heads``,
    ``kv_heads``, ``head_dim`` (Llama) or ``attn`` (GPT-2's attention width, which is its
    hidden size: ``prune()`` prunes the hidden size to it), the same in every block (prune()
    prunes every block alike)."""
    out = dict(config)
    if family.name == "llama":
        out["hidden_size"] = widths["hidden"]
        out["intermediate_size"] = widths["mlp"]
        out["num_attention_heads"] = widths["heads"]
        out["num_key_value_heads"] = widths["kv_heads"]
        out["head_dim"] = widths["head_dim"]
    else:
        if widths["attn"] != widths["hidden"]:
            raise ValueError(
                f"the pruned GPT-2 attention width ({widths['attn']}) would differ from its "
                f"hidden size ({widths['hidden']}): GPT-2's config.json cannot describe that; "
                "nothing was written"
            )
        out["n_embd"] = widths["hidden"]
        out["n_inner"] = widths["mlp"]
    return out


def buildable_config(family: Family, config_class, config: dict):
    """A config object for a pruned ``config`` that transformers would refuse to build: its
    Llama config checks that the hidden size is a multiple of the attention heads
    (``LlamaConfig.validate_architecture``), which pruning does not keep (its head size is
    explicit). The config is built from values that pass the check and the real hidden size
    is set afterwards (attributes set later are not checked again)."""
    safe = dict(config)
    if family.name == "llama":
        safe["hidden_size"] = config["num_attention_heads"] * config["head_dim"]
    built = config_class.from_dict(safe)
    if family.name == "llama":
        built.hidden_size = config["hidden_size"]
    return built


def finish_pruned_model(family: Family, model: nn.Module, config: dict) -> None:
    """After a pruned checkpoint's weights were loaded into the model built from
    :func:`buildable_config`: every module's size attributes follow its weights."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if w is None:
            continue
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = int(w.shape[0]), int(w.shape[1])
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = tuple(w.shape)
        elif type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # is_conv1d needs nf right
            m.nx, m.nf = int(w.shape[0]), int(w.shape[1])
