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
  ``n_inner`` the embeddings and MLPs. Tied input/output embeddings are tied again.
- Llama-style attention with rotary embeddings (``q_proj``/``k_proj``/``v_proj``, grouped-query
  included), following Torch-Pruning's ``examples/LLMs/prune_llm.py``: ``num_heads`` per
  projection, whole query heads pruned (``prune_num_heads=True``, ``head_pruning_ratio`` =
  the ratio; with grouped-query attention the same number in every key/value group, key and
  value heads kept), head dims kept (``prune_head_dims=False``: the rotation pairs channels
  within a head), hidden size and MLP width pruned, RMSNorm weights pruned with the hidden
  channels; afterwards ``num_key_value_groups`` (and ``num_heads`` / ``num_key_value_heads`` /
  ``hidden_size`` where the module has them) and ``config.hidden_size``,
  ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads`` and ``head_dim``.
  Torch-Pruning traces such a model under
  :func:`~causalprune_fast.model.llm_graph.traceable`.

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

    @property
    def whole_heads(self) -> bool:
        """Whether whole heads are pruned (rotary attention) instead of head dims."""
        return any(kind == "llama" for kind, _ in self.modules)

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
                for p in (m.q_proj, m.k_proj, m.v_proj):
                    num_heads[p] = p.out_features // m.head_dim
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
                queries = [m.q_proj for kind, m in self.modules if kind == "llama"]
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

        Raises:
            ValueError: ``iterative_steps > 1`` with GPT-2 or Llama-style attention
                (:meth:`check_iterative_steps`).
        """
        import torch_pruning as tp

        self.check_iterative_steps(kwargs.get("iterative_steps", 1))
        cls = tp.pruner.MetaPruner if pruner_class is None else pruner_class
        kwargs["ignored_layers"] = [*(kwargs.get("ignored_layers") or []), *self.kept]
        with traceable(model):
            pruner = cls(
                model,
                example_inputs,
                pruning_ratio=ratio if pruning_ratio_dict is None else 0.0,
                pruning_ratio_dict=pruning_ratio_dict,
                **self.pruner_kwargs(ratio, pruning_ratio_dict),
                **kwargs,
            )
        extend_graph(pruner.DG)
        self.keep_shared_key_value_heads(pruner)
        for root, r in (pruning_ratio_dict or {}).items():
            ratio_for_customized_root(pruner, root, r)
        return pruner

    def check_iterative_steps(self, steps: int) -> None:
        """Raise a ValueError for ``steps > 1`` with GPT-2 or Llama-style attention."""
        hf = sorted({kind for kind, _ in self.modules if kind in ("gpt2", "llama")})
        if steps > 1 and hf:
            raise ValueError(
                f"iterative_steps={steps} is not supported for {' and '.join(hf)} attention: "
                "Torch-Pruning builds its graph once, and the index maps of the heads' split "
                "(GPT-2's c_attn) and key/value repeat (grouped-query attention) keep the sizes "
                "of the first step; prune again with a new pruner (or prune() call) instead"
            )

    def shared_key_value_layers(self) -> set[nn.Module]:
        """The key and value projections of grouped-query attention: pruned only with their
        query heads (Torch-Pruning also lists them as groups of their own, which it skips)."""
        return {
            p
            for kind, m in self.modules
            if kind == "llama" and m.k_proj.out_features < m.q_proj.out_features
            for p in (m.k_proj, m.v_proj)
        }

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
            if queries & {m.q_proj for kind, m in self.modules if kind == "llama"}:
                for i in range(len(group)):
                    dep, idxs = group[i]
                    if dep.target.module in shared and dg.is_out_channel_pruning_fn(dep.handler):
                        group[i] = (dep, [])
            return check(group)

        dg.check_pruning_group = check_pruning_group

    def sync(self, model: nn.Module, pruner, *, warn: bool = True) -> None:
        """Update the attributes that the modules' forward reads from the pruned weights
        (``pruner.num_heads``: Torch-Pruning's head counts after pruning), and the model's
        config. With ``warn``, a UserWarning when pruned layers of one kind differ, which a
        Hugging Face config cannot describe (pass False between the steps of a pruning that
        goes on)."""
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
                m.split_size = m.embed_dim = m.c_attn.weight.shape[1] // 3
                m.head_dim = m.split_size // m.num_heads
            elif kind == "llama":
                _sync_llama_attention(m)
            elif kind == "mlp":
                up = _mlp_input_layer(m)
                if hasattr(m, "intermediate_size"):
                    m.intermediate_size = _out_features(up)
                if hasattr(m, "hidden_size"):
                    m.hidden_size = _in_features(up)
        if config is not None:
            self._sync_hf_config(model, config, warn)

    def _sync_hf_config(self, model: nn.Module, config, warn: bool) -> None:
        """``config`` of a GPT-2 or Llama-style model after pruning (the first layer's counts)."""
        emb, out = _embeddings(model)
        width = None if emb is None else int(emb.weight.shape[1])
        if self.tied and width is not None:
            if out is not None and out.weight.shape == emb.weight.shape:
                out.weight = emb.weight  # both were pruned with the same hidden channels
        llama = [m for k, m in self.modules if k == "llama"]
        gpt2 = [m for k, m in self.modules if k == "gpt2"]
        mlps = [m for k, m in self.modules if k == "mlp"]
        if (llama or gpt2) and width is not None:
            config.hidden_size = width  # GPT-2's config maps hidden_size to n_embd
        if mlps and (llama or gpt2):
            inner = _out_features(_mlp_input_layer(mlps[0]))
            if gpt2:
                config.n_inner = inner
            else:
                config.intermediate_size = inner
        if llama:
            a = llama[0]
            config.num_attention_heads = a.q_proj.out_features // a.head_dim
            config.num_key_value_heads = a.k_proj.out_features // a.head_dim
            config.head_dim = a.head_dim
        per_layer = {
            "attention widths": [m.q_proj.out_features for m in llama]
            + [m.c_attn.weight.shape[1] for m in gpt2],
            "MLP widths": [_out_features(_mlp_input_layer(m)) for m in mlps],
        }
        differ = [f"{k} {v}" for k, v in per_layer.items() if len(set(v)) > 1]
        if differ and warn:
            warnings.warn(
                f"the pruned layers differ ({'; '.join(differ)}): the model runs, but its "
                "config holds the first layer's numbers and cannot rebuild it "
                "(save it with torch.save, not save_pretrained)",
                UserWarning,
                stacklevel=3,
            )
        bert = [m for k, m in self.modules if k == "bert"]
        if bert:
            if emb is not None and hasattr(config, "hidden_size"):
                config.hidden_size = emb.weight.shape[1]
            if hasattr(config, "num_attention_heads"):
                config.num_attention_heads = bert[0].num_attention_heads


def _in_features(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else int(m.weight.shape[0])


def _out_features(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else int(m.weight.shape[1])


def _is_mlp(m: nn.Module) -> bool:
    """A Llama-style (gate/up/down Linear) or GPT-2 (c_fc/c_proj Conv1D) MLP."""
    gated = ("gate_proj", "up_proj", "down_proj")
    if all(isinstance(getattr(m, n, None), nn.Linear) for n in gated):
        return True
    return is_conv1d(getattr(m, "c_fc", None)) and is_conv1d(getattr(m, "c_proj", None))


def _mlp_input_layer(m: nn.Module) -> nn.Module:
    """``gate_proj`` of a Llama-style MLP, ``c_fc`` of GPT-2's."""
    return m.gate_proj if isinstance(getattr(m, "gate_proj", None), nn.Linear) else m.c_fc


def _embeddings(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """A Hugging Face model's input and output embeddings (None where it has none)."""
    found = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            m = getattr(model, getter)() if hasattr(model, getter) else None
        except (NotImplementedError, AttributeError):
            m = None
        found.append(m if isinstance(getattr(m, "weight", None), nn.Parameter) else None)
    return found[0], found[1]


def _sync_llama_attention(m: nn.Module) -> None:
    """The head counts of a Llama-style attention module after whole heads were pruned."""
    q_heads = m.q_proj.out_features // m.head_dim
    kv_heads = m.k_proj.out_features // m.head_dim
    m.num_key_value_groups = q_heads // kv_heads
    if hasattr(m, "num_heads"):
        m.num_heads = q_heads
    if hasattr(m, "num_key_value_heads"):
        m.num_key_value_heads = kv_heads
    if hasattr(m, "hidden_size"):
        m.hidden_size = m.q_proj.out_features  # as Torch-Pruning's LLM example sets it


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
    emb, out = _embeddings(model)
    plan.tied = emb is not None and out is not None and out.weight is emb.weight
    dims_kinds = []
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
            outs = [p.out_features for p in (m.q_proj, m.k_proj, m.v_proj)]
            if any(o % d for o in outs) or outs[1] != outs[2] or (outs[0] // d) % (outs[1] // d):
                raise ValueError(
                    f"prune(): '{name}': q_proj/k_proj/v_proj widths {outs} are not whole "
                    f"heads of head_dim {d} with key/value heads dividing the query heads"
                )
            plan.modules.append(("llama", m))
        elif _is_mlp(m):
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
    return plan


def _is_bert_attention(m: nn.Module) -> bool:
    return (
        isinstance(getattr(m, "num_attention_heads", None), int)
        and isinstance(getattr(m, "attention_head_size", None), int)
        and all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value"))
    )
