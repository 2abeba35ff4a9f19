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

- GPT-2 (``GPT2Attention``: fused ``c_attn`` Conv1D, layout q | k | v, each ``[heads, head_dim]``,
  like timm's ``qkv``): ``num_heads[c_attn]``, head dims pruned, the number of heads kept, with
  the ``Conv1D`` pruner of :mod:`causalprune_fast.model.llm_graph`; afterwards
  ``split_size``, ``embed_dim`` and ``head_dim`` follow ``c_attn``, and ``config.n_embd`` /
  ``n_inner`` the embeddings and MLPs. Tied input/output embeddings are tied again. The hidden
  size is pruned to the attention's new width (``pruning/hf_config.py``), which GPT-2's config
  requires.
- Llama-style attention with rotary embeddings (``q_proj``/``k_proj``/``v_proj``, grouped-query
  included: Llama, Qwen2, Mistral, Gemma; and Phi-3, whose fused ``qkv_proj`` is split into q,
  k and v projections while it is pruned, ``pruning/fused_projections.py``), following
  Torch-Pruning's ``examples/LLMs/prune_llm.py``: ``num_heads`` per projection, whole query
  heads pruned (``prune_num_heads=True``, ``head_pruning_ratio`` = the ratio; with
  grouped-query attention the same number in every key/value group, key and
  value heads kept), head dims kept (``prune_head_dims=False``: the rotation pairs channels
  within a head), hidden size and MLP width pruned, RMSNorm weights pruned with the hidden
  channels; afterwards ``num_key_value_groups`` (and ``num_heads`` / ``num_key_value_heads`` /
  ``hidden_size`` where the module has them) and ``config.hidden_size``,
  ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads`` and ``head_dim``.
  Torch-Pruning traces such a model under
  :func:`~causalprune_fast.model.llm_graph.traceable`. Gemma's embedding scale follows the
  hidden size. Phi-3's fused ``gate_up_proj`` is pruned in two channel groups (gate and up).
- GPT-NeoX (fused ``query_key_value``, per head q, k and v; partial rotary; parallel residual):
  ``num_heads[query_key_value]``, whole heads pruned through the per-head index mapping of
  :mod:`~causalprune_fast.model.llm_index_maps`, head size kept; the hidden size is pruned to
  the attention's new width; afterwards ``config.hidden_size``, ``intermediate_size`` and
  ``num_attention_heads``.

A model with both kinds (head dims pruned in one attention, whole heads in another) is refused
with a ValueError before anything changes.

Model outputs that are dicts, ``ModelOutput`` s or tuples holding caches are reduced to their
tensors for Torch-Pruning's tracer (:func:`output_tensors`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch.nn as nn

from causalprune_fast.base.outputs import output_tensors
from causalprune_fast.model.families import is_conv1d
from causalprune_fast.model.llm_graph import (
    is_rotary_attention,
    torch_pruning_extensions,
    traceable,
)
from causalprune_fast.model.structures import extend_graph, graph_extensions
from causalprune_fast.pruning.fused_projections import (
    FusedProjections,
    is_fused_qkv_attention,
    is_neox_attention,
    qkv_projections,
)
from causalprune_fast.pruning.hf_config import (
    ScaledEmbedding,
    embeddings,
    hidden_width_ratio,
    is_mlp,
    keep_attention_scale,
    mlp_width,
    sync_hf_config,
    sync_rotary_attention,
)
from causalprune_fast.pruning.llm_pruning import ratio_for_customized_root, rmsnorm_parameters


@dataclass
class AttentionPruning:
    """Torch-Pruning arguments for a model's attention modules, and :meth:`sync`."""

    num_heads: dict[nn.Module, int] = field(default_factory=dict)
    out_channel_groups: dict[nn.Module, int] = field(default_factory=dict)
    modules: list[tuple[str, nn.Module]] = field(default_factory=list)  # (kind, module)
    extensions: dict = field(default_factory=dict)  # customized_pruners, root_module_types
    unwrapped: list = field(default_factory=list)  # (parameter, dim): RMSNorm weights, ...
    kept: dict = field(default_factory=dict)  # layer -> why a structure keeps its outputs
    tied: bool = False  # input and output embeddings share one weight
    fused: FusedProjections | None = None  # Phi-3's qkv_proj, split while pruned
    embedding: ScaledEmbedding | None = None  # Gemma's sqrt(hidden_size) embedding scale
    hidden_ratios: dict = field(default_factory=dict)  # ratio -> hidden_width_ratio's answer

    def kinds(self) -> list[str]:
        """The kinds of the plan's modules, in order of first appearance."""
        return list(dict.fromkeys(kind for kind, _ in self.modules))

    @property
    def whole_heads(self) -> bool:
        """Whether whole heads are pruned (rotary attention) instead of head dims."""
        return any(kind in ("llama", "neox") for kind, _ in self.modules)

    def pruner_kwargs(self, ratio: float, ratios: dict[nn.Module, float] | None = None) -> dict:
        """Keyword arguments for ``tp.pruner.BasePruner``. Head dims are pruned and head counts
        kept, but for rotary attention, where whole heads are pruned (``ratio`` of them; with
        per-layer ``ratios``, only in the attention modules whose query projection they name,
        at its ratio) and head dims kept. Head counts are read from the modules as they are
        now."""
        import torch_pruning as tp

        num_heads = dict(self.num_heads)
        for kind, m in self.modules:
            if kind == "llama":
                for p in qkv_projections(m):
                    num_heads[p] = p.out_features // m.head_dim
            elif kind == "neox":  # one fused layer, per head q, k and v
                qkv = m.query_key_value
                num_heads[qkv] = qkv.out_features // (3 * m.head_size)
        kwargs = dict(
            num_heads=num_heads,
            out_channel_groups=dict(self.out_channel_groups),
            prune_num_heads=self.whole_heads,
            prune_head_dims=not self.whole_heads,
            output_transform=output_tensors,
        )
        if self.whole_heads:
            if ratios is None:
                kwargs["head_pruning_ratio"] = ratio
            else:
                queries = self.queries()
                kwargs["head_pruning_ratio_dict"] = {q: ratios[q] for q in queries if q in ratios}
        if self.extensions.get("customized_pruners"):
            kwargs["customized_pruners"] = dict(self.extensions["customized_pruners"])
            kwargs["root_module_types"] = [
                tp.ops.TORCH_CONV,
                tp.ops.TORCH_LINEAR,
                *self.extensions["root_module_types"],
            ]
        if self.unwrapped:
            kwargs["unwrapped_parameters"] = list(self.unwrapped)
        return kwargs

    def pruner(
        self,
        model: nn.Module,
        example_inputs,
        ratio: float,
        *,
        pruner_class=None,
        pruning_ratio_dict: dict | None = None,
        **kwargs,
    ):
        """A Torch-Pruning pruner (``pruner_class``, default ``tp.pruner.MetaPruner``) for
        ``model`` at ``ratio``, built as this plan needs: its :meth:`pruner_kwargs` (heads,
        ``Conv1D``, RMSNorm, ``output_transform``), traced under
        :func:`~causalprune_fast.model.llm_graph.traceable`, with
        :meth:`keep_shared_key_value_heads` and ``pruning_ratio_dict`` entries for ``Conv1D``
        roots (:func:`~causalprune_fast.pruning.llm_pruning.ratio_for_customized_root`);
        ``kept`` (model/structures) joins ``ignored_layers``.
        With ``pruning_ratio_dict``, only its layers are pruned (``pruning_ratio`` 0; whole
        heads only of the attention whose query projection it names). ``kwargs`` go to the
        pruner (``importance``, ``ignored_layers``, ...); call :meth:`sync` after each step.
        Phi-3's fused ``qkv_proj`` layers are split into q, k and v projections here
        (:mod:`~causalprune_fast.pruning.fused_projections`; :meth:`sync` joins them again);
        GPT-2's and GPT-NeoX's hidden size gets the ratio that keeps it as wide as their
        attention (:func:`~causalprune_fast.pruning.hf_config.hidden_width_ratio`).

        Raises:
            ValueError: ``iterative_steps > 1`` with GPT-2 or Llama-style attention
                (:meth:`check_iterative_steps`); global pruning of grouped-query attention
                whose heads Torch-Pruning misplaces, or of Phi-3 (:meth:`check_global_pruning`).
        """
        import torch_pruning as tp

        self.check_iterative_steps(kwargs.get("iterative_steps", 1))
        self.check_global_pruning(bool(kwargs.get("global_pruning")), model)
        cls = tp.pruner.MetaPruner if pruner_class is None else pruner_class
        kwargs["ignored_layers"] = [*(kwargs.get("ignored_layers") or []), *self.kept]
        if self.fused is not None:
            self.fused.split()
        ratios = None if pruning_ratio_dict is None else dict(pruning_ratio_dict)
        if ratio not in self.hidden_ratios:  # from the widths before anything is pruned
            self.hidden_ratios[ratio] = hidden_width_ratio(self.modules, ratio)
        hidden = self.hidden_ratios[ratio]
        if hidden is not None and not kwargs.get("global_pruning"):
            root, r = hidden
            if ratios is None:
                ratios = {root: r}
            else:  # only where the hidden size is pruned now (sequential pruning)
                ratios = {m: (r if m in self.hidden_writers() else v) for m, v in ratios.items()}
        with traceable(model):
            pruner = cls(
                model,
                example_inputs,
                pruning_ratio=ratio if pruning_ratio_dict is None else 0.0,
                pruning_ratio_dict=ratios,
                **self.pruner_kwargs(ratio, pruning_ratio_dict),
                **kwargs,
            )
        extend_graph(pruner.DG)
        self.keep_shared_key_value_heads(pruner)
        for root, r in (ratios or {}).items():
            ratio_for_customized_root(pruner, root, r)
        return pruner

    def queries(self) -> list[nn.Module]:
        """The layers whose heads are pruned whole: each rotary attention's query projection
        (GPT-NeoX: its fused query_key_value)."""
        out = []
        for kind, m in self.modules:
            if kind == "llama":
                out.append(qkv_projections(m)[0])
            elif kind == "neox":
                out.append(m.query_key_value)
        return out

    def hidden_writers(self) -> set[nn.Module]:
        """The layers of GPT-2 and GPT-NeoX that write the residual stream (any of them is a
        root of the hidden size's group)."""
        names = {"gpt2": ("c_proj",), "neox": ("dense",), "mlp": ("c_proj", "dense_4h_to_h")}
        out = set()
        for kind, m in self.modules:
            for n in names.get(kind, ()):
                layer = getattr(m, n, None)
                if layer is not None:
                    out.add(layer)
        return out

    def check_iterative_steps(self, steps: int) -> None:
        """Raise a ValueError for ``steps > 1`` with GPT-2 or Llama-style attention."""
        hf = sorted({kind for kind, _ in self.modules if kind in ("gpt2", "llama", "neox")})
        if steps > 1 and hf:
            raise ValueError(
                f"iterative_steps={steps} is not supported for {' and '.join(hf)} attention: "
                "Torch-Pruning builds its graph once, and the index maps of the heads' split "
                "(GPT-2's c_attn) and key/value repeat (grouped-query attention) keep the sizes "
                "of the first step; prune again with a new pruner (or prune() call) instead"
            )

    def check_global_pruning(self, global_pruning: bool, model: nn.Module) -> None:
        """Raise a ValueError for global pruning of grouped-query attention whose query heads
        per key/value group differ from its number of key/value heads (more than one), and of
        Phi-3. Isomorphic pruning alone ranks heads per layer, which is right, so only
        ``global_pruning`` is checked.

        Torch-Pruning 1.6's global head ranking (``BasePruner._prune``) picks the same number of
        query heads in every key/value group, then offsets group ``g``'s picks by
        ``g * num_kv_heads`` instead of ``g * heads_per_group``. Where the two are equal (4 query
        heads on 2 key/value heads, 64 on 8) that is right; elsewhere (8 on 4, 32 on 8) it
        removes other heads than it ranked, indexes past the last head, and leaves query heads
        that no longer divide into the key/value groups (the model then fails, or loses no head
        at all). One key/value head (offset 0) and multi-head attention are right.

        Phi-3's attention (a fused ``qkv_proj``) is refused whatever its heads: its forward
        reads the number of query heads from the model's config, one number for every layer,
        and a global ranking leaves layers with different head counts."""
        if not global_pruning:
            return
        names = {m: n for n, m in model.named_modules()}
        fused = [names.get(m, "?") for kind, m in self.modules if _is_fused(m)]
        if fused:
            raise ValueError(
                f"global_pruning is not supported for Phi-3's attention ({fused[0]} and "
                f"{len(fused) - 1} more): its forward reads the number of query heads from the "
                "model's config, one number for all layers, and global pruning leaves layers "
                "with different head counts; prune per layer (global_pruning=False)"
            )
        wrong = []
        for kind, m in self.modules:
            if kind != "llama":
                continue
            q, k, _ = qkv_projections(m)
            heads, kv = q.out_features // m.head_dim, k.out_features // m.head_dim
            if 1 < kv < heads and heads // kv != kv:
                wrong.append((names.get(m, "?"), heads, kv))
        if wrong:
            name, heads, kv = wrong[0]
            raise ValueError(
                f"global_pruning is not supported for grouped-query attention with {heads} "
                f"query heads on {kv} key/value heads ({name} and {len(wrong) - 1} more "
                "attention modules): Torch-Pruning 1.6's global head ranking offsets each "
                "key/value group's heads by the number of key/value heads instead of the heads "
                f"per group ({heads // kv}), so it would remove the wrong heads; prune per layer "
                "(global_pruning=False)"
            )

    def check_sequential(self, sequential: bool, global_pruning: bool) -> None:
        """Raise a ValueError for ``sequential`` with ``global_pruning`` where whole heads are
        pruned: each sequential step prunes one group, so nothing is ranked across layers, and
        Torch-Pruning 1.6 then finds no global head threshold (``UnboundLocalError``)."""
        if sequential and global_pruning and self.whole_heads:
            kinds = sorted({k for k, _ in self.modules if k in ("llama", "neox")})
            raise ValueError(
                "sequential=True with global_pruning=True is not supported for attention whose "
                f"heads are pruned whole ({' and '.join(kinds)}): a sequential step prunes one "
                "group, so there is nothing to rank across layers; use one of them"
            )

    def shared_key_value_layers(self) -> set[nn.Module]:
        """The key and value projections of grouped-query attention: pruned only with their
        query heads (Torch-Pruning also lists them as groups of their own, which it skips)."""
        shared = set()
        for kind, m in self.modules:
            if kind == "llama":
                q, k, v = qkv_projections(m)
                if k.out_features < q.out_features:
                    shared |= {k, v}
        return shared

    def keep_shared_key_value_heads(self, pruner) -> None:
        """Make ``pruner`` leave the key/value projections of grouped-query attention alone when
        it prunes query heads, as Torch-Pruning 1.6 means to: it empties their indices only while
        the query heads outnumber the key/value heads, so a step that leaves as many query heads
        as key/value heads (4 and 2 heads, one removed per group) would prune all the key/value
        channels, and its own check then drops the whole head pruning. Wraps the pruner's
        ``DG.check_pruning_group`` (run on every group just before it is pruned)."""
        shared = self.shared_key_value_layers()
        if not shared:
            return
        dg = pruner.DG
        check = dg.check_pruning_group

        def check_pruning_group(group) -> bool:
            queries = {
                dep.target.module
                for dep, idxs in group
                if dg.is_out_channel_pruning_fn(dep.handler) and len(idxs) > 0
            }
            if queries & set(self.queries()):
                for i in range(len(group)):
                    dep, idxs = group[i]
                    if dep.target.module in shared and dg.is_out_channel_pruning_fn(dep.handler):
                        group[i] = (dep, [])
            return check(group)

        dg.check_pruning_group = check_pruning_group

    def sync(self, model: nn.Module, pruner, *, warn: bool = True, final: bool = True) -> None:
        """Update the attributes that the modules' forward reads from the pruned weights
        (``pruner.num_heads``: Torch-Pruning's head counts after pruning), and the model's
        config (:mod:`~causalprune_fast.pruning.hf_config`). With ``warn``, a UserWarning when
        pruned layers of one kind differ, which a Hugging Face config cannot describe. With
        ``final`` (pass False between the steps of a pruning that goes on), split fused
        projections are joined again and Gemma's embedding scale follows the hidden size."""
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
            elif kind == "gpt2":
                before = m.head_dim
                m.split_size = m.embed_dim = m.c_attn.weight.shape[1] // 3
                m.head_dim = m.split_size // m.num_heads
                keep_attention_scale(m, before)
            elif kind == "llama":
                sync_rotary_attention(m)
            elif kind == "mlp":
                if hasattr(m, "intermediate_size"):
                    m.intermediate_size = mlp_width(m)
                if hasattr(m, "hidden_size") and isinstance(
                    getattr(m, "gate_proj", None), nn.Linear
                ):
                    m.hidden_size = m.gate_proj.in_features
        if config is not None:
            sync_hf_config(self, model, config, warn)
        if final and self.fused is not None:
            self.fused.join()
        if final and self.embedding is not None:
            why = self.embedding.sync(model)
            if why is not None and warn:
                warnings.warn(
                    f"the input embedding's scale (sqrt(hidden_size)) could not follow the "
                    f"pruned hidden size ({why}): save the model with torch.save",
                    UserWarning,
                    stacklevel=2,
                )


def attention_pruning(model: nn.Module) -> AttentionPruning:
    """The :class:`AttentionPruning` of ``model`` (empty for models without attention).

    Raises:
        ValueError: attention that is not supported (GPT-2 cross-attention, Llama-style
            attention whose head counts do not divide), or a model mixing attention whose head
            dims are pruned with attention whose whole heads are pruned.
    """
    structures = graph_extensions(model)  # what model/structures handles is skipped here
    plan = AttentionPruning(
        extensions=torch_pruning_extensions(model),
        unwrapped=rmsnorm_parameters(model) + structures.unwrapped,
        kept=dict(structures.ignored),
    )
    claimed = {id(m) for m in structures.claimed}
    emb, out = embeddings(model)
    plan.tied = emb is not None and out is not None and out.weight is emb.weight
    dims_kinds, fused = [], []
    for name, m in model.named_modules():
        qkv, heads = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if id(m) in claimed:
            continue
        if isinstance(m, nn.MultiheadAttention):
            if m.num_heads > 1:
                plan.out_channel_groups[m] = m.num_heads
                dims_kinds.append(name)
        elif isinstance(qkv, nn.Linear) and isinstance(heads, int) and heads > 0:
            plan.num_heads[qkv] = heads
            dims_kinds.append(name)
            if hasattr(m, "head_dim"):
                plan.modules.append(("timm", m))
        elif is_conv1d(getattr(m, "c_attn", None)) and isinstance(heads, int) and heads > 0:
            if getattr(m, "is_cross_attention", False) or hasattr(m, "q_attn"):
                raise ValueError(
                    f"prune(): '{name}' is GPT-2 cross-attention (q_attn + c_attn), which is "
                    "not supported"
                )
            if m.c_attn.weight.shape[1] != 3 * heads * m.head_dim:
                raise ValueError(
                    f"prune(): '{name}.c_attn' has {m.c_attn.weight.shape[1]} outputs, not "
                    f"3 x num_heads ({heads}) x head_dim ({m.head_dim})"
                )
            plan.num_heads[m.c_attn] = heads
            plan.modules.append(("gpt2", m))
            dims_kinds.append(name)
        elif is_rotary_attention(m):
            d = m.head_dim
            outs = [p.out_features for p in qkv_projections(m)]
            if any(o % d for o in outs) or outs[1] != outs[2] or (outs[0] // d) % (outs[1] // d):
                raise ValueError(
                    f"prune(): '{name}': q_proj/k_proj/v_proj widths {outs} are not whole "
                    f"heads of head_dim {d} with key/value heads dividing the query heads"
                )
            plan.modules.append(("llama", m))
        elif is_fused_qkv_attention(m):
            d, kv = m.head_dim, m.num_key_value_heads
            q = m.qkv_proj.out_features - 2 * kv * d
            if q <= 0 or q % d or (q // d) % kv:
                raise ValueError(
                    f"prune(): '{name}.qkv_proj' has {m.qkv_proj.out_features} outputs, not "
                    f"query heads and 2 x num_key_value_heads ({kv}) x head_dim ({d}) with the "
                    "key/value heads dividing the query heads"
                )
            fused.append(m)
            plan.modules.append(("llama", m))
        elif is_neox_attention(m):
            plan.modules.append(("neox", m))
        elif is_mlp(m):
            if isinstance(getattr(m, "gate_up_proj", None), nn.Linear):
                plan.out_channel_groups[m.gate_up_proj] = 2  # gate i and up i go together
            plan.modules.append(("mlp", m))
        elif type(m).__name__ == "VisionTransformer" and hasattr(m, "conv_proj"):
            plan.modules.append(("torchvision-vit", m))
        elif _is_bert_attention(m):
            for p in (m.query, m.key, m.value):
                plan.num_heads[p] = m.num_attention_heads
            plan.modules.append(("bert", m))
        elif isinstance(getattr(m, "dense", None), nn.Linear) and hasattr(m, "intermediate_act_fn"):
            plan.modules.append(("bert-intermediate", m))
    if plan.whole_heads and dims_kinds:
        raise ValueError(
            "prune(): the model mixes rotary attention (whole heads pruned) with attention "
            f"whose head dims are pruned ({', '.join(dims_kinds[:4])}); this is not supported"
        )
    if fused:
        plan.fused = FusedProjections(fused)
    if plan.whole_heads:
        plan.embedding = ScaledEmbedding(model)
    return plan


def _is_bert_attention(m: nn.Module) -> bool:
    return (
        isinstance(getattr(m, "num_attention_heads", None), int)
        and isinstance(getattr(m, "attention_head_size", None), int)
        and all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value"))
    )


def _is_fused(m: nn.Module) -> bool:
    """Phi-3's attention before the plan splits its ``qkv_proj``."""
    return isinstance(getattr(m, "qkv_proj", None), nn.Linear) and not hasattr(m, "q_proj")
