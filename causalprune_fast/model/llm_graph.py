"""What Torch-Pruning needs to build the dependency graph of Hugging Face language models: GPT-2's
``Conv1D``, attention with rotary embeddings (Llama, Qwen2, Mistral, Gemma, Phi-3, GPT-NeoX) and
fused projections (docs/method.md section 9). What its pruner is told besides is in
``pruning/llm_pruning.py``.

- ``Conv1D`` (GPT-1/GPT-2; ``weight`` is ``[in, out]``): :func:`conv1d_pruner` is a
  Torch-Pruning custom pruner (``tp.pruner.function.BasePruningFunc``, Torch-Pruning's documented
  extension mechanism), registered through ``customized_pruners`` with ``Conv1D`` among the
  ``root_module_types`` (:func:`torch_pruning_extensions`).
- Rotary embeddings: Torch-Pruning 1.6 maps channel indices through the slice / neg / cat of
  ``rotate_half`` as if the slices were along the channel dimension, so every lap of the cycle
  ``q -> rotate_half -> q * cos + rotate_half(q) * sin`` shifts the indices by half a head
  (32, 64, 96, ...) and its group search never ends. With scaled-dot-product attention it also
  couples the query channels one-to-one to the fewer key/value channels of grouped-query
  attention. While Torch-Pruning traces the model (:func:`traceable`), each rotary attention
  module's (:func:`rotary_attention_modules`) ``apply_rotary_pos_emb`` returns ``q`` and ``k``
  unchanged and the model uses the ``"eager"`` attention, whose ``repeat_kv`` maps query heads
  to their key/value head. The traced graph then has exactly the couplings of the real model at
  the granularity that is pruned: whole heads (a rotation mixes channels only within a head)
  and the hidden size; Torch-Pruning's own LLM example (``examples/LLMs/prune_llm.py``) prunes
  these and keeps the head dims (``prune_head_dims=False``) "so that we don't need to prune the
  ROPE". Only the trace sees the change; both are put back when it ends. The stand-ins are
  module globals (transformers' modeling module, Torch-Pruning's ``index_mapping``): another
  thread that runs the same model class during a trace would see them too.
- Splits and concatenations of projection features along the last dimension (GPT-2's
  ``c_attn(x).split(E, dim=2)``, Phi-3's ``gate_up_proj`` chunks, GPT-NeoX's per-head
  ``[heads, 3, head_dim]`` query/key/value layout) are given index mappings
  (:mod:`causalprune_fast.model.llm_index_maps`); Torch-Pruning 1.6 maps them only along dim
  1.
- The key/value cache is off while Torch-Pruning traces (its concat index mapping fails on the
  cache's ``torch.cat``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

import torch.nn as nn

from causalprune_fast.base.model_state import traced_with_grad
from causalprune_fast.model.families import is_conv1d
from causalprune_fast.model.llm_index_maps import concat_mapping, split_mapping

__all__ = [
    "conv1d_pruner",
    "is_rotary_attention",
    "rotary_attention_modules",
    "torch_pruning_extensions",
    "traceable",
]


_CONV1D_PRUNER = None


def conv1d_pruner():
    """The Torch-Pruning pruner for transformers ``Conv1D`` (one instance: its bound methods
    identify its dependencies in every graph). Made on first use, so that this module imports
    without Torch-Pruning."""
    global _CONV1D_PRUNER
    if _CONV1D_PRUNER is None:
        import torch_pruning as tp

        class Conv1DPruner(tp.pruner.function.BasePruningFunc):
            """Torch-Pruning pruner for transformers ``Conv1D``: ``y = x @ weight + bias`` with
            ``weight`` ``[nx, nf]`` (in, out). Output channels are columns of ``weight`` and
            entries of ``bias``, input channels rows of ``weight``; ``nf`` and ``nx`` follow."""

            TARGET_MODULES = None  # transformers' class, recognised by is_conv1d

            def check(self, layer: nn.Module, idxs: Sequence[int], to_output: bool) -> None:
                if not is_conv1d(layer):
                    raise AssertionError(f"Conv1DPruner cannot prune {type(layer).__name__}")
                super().check(layer, idxs, to_output)

            def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
                drop = {int(i) for i in idxs}
                keep = [i for i in range(layer.weight.shape[1]) if i not in drop]
                layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
                if layer.bias is not None:
                    layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
                layer.nf = len(keep)
                return layer

            def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
                drop = {int(i) for i in idxs}
                keep = [i for i in range(layer.weight.shape[0]) if i not in drop]
                layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
                if hasattr(layer, "nx"):
                    layer.nx = len(keep)
                return layer

            def get_out_channels(self, layer: nn.Module) -> int:
                return int(layer.weight.shape[1])

            def get_in_channels(self, layer: nn.Module) -> int:
                return int(layer.weight.shape[0])

        _CONV1D_PRUNER = Conv1DPruner()
    return _CONV1D_PRUNER


def torch_pruning_extensions(model: nn.Module) -> dict:
    """Keyword arguments that teach Torch-Pruning the model's ``Conv1D`` layers and the
    structures of :mod:`causalprune_fast.model.structures` (window attention, patch
    merging, LeViT and CoaT attention): ``customized_pruners`` (for
    ``DependencyGraph.build_dependency`` and the pruners) and ``root_module_types`` (for the
    pruners); empty where the model has none."""
    from causalprune_fast.model.structures import graph_extensions

    kinds = {type(m) for m in model.modules() if is_conv1d(m)}
    structures = graph_extensions(model)
    return {
        "customized_pruners": {**{k: conv1d_pruner() for k in kinds}, **structures.pruners},
        "root_module_types": [*sorted(kinds, key=lambda k: k.__qualname__), *structures.roots],
    }


def is_rotary_attention(m: nn.Module) -> bool:
    """Llama-style attention (``q_proj``/``k_proj``/``v_proj`` Linear layers and ``head_dim``)
    whose module applies rotary embeddings through a module-level ``apply_rotary_pos_emb``."""
    d = getattr(m, "head_dim", None)
    return (
        isinstance(d, int)
        and d > 0
        and all(isinstance(getattr(m, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj"))
        and callable(getattr(sys.modules.get(type(m).__module__), "apply_rotary_pos_emb", None))
    )


def rotary_attention_modules(model: nn.Module) -> set:
    """The Python modules (transformers' ``modeling_*``) whose attention modules in ``model``
    apply rotary embeddings through a module-level ``apply_rotary_pos_emb``: every module with
    a head size (``head_dim`` or ``head_size``) and Linear projections whose class is defined
    there (Llama-style ``q_proj``/``k_proj``/``v_proj``, Phi-3's fused ``qkv_proj``,
    GPT-NeoX's ``query_key_value`` with partial rotary)."""
    found = set()
    for m in model.modules():
        mod = sys.modules.get(type(m).__module__)
        if mod in found or not callable(getattr(mod, "apply_rotary_pos_emb", None)):
            continue
        d = getattr(m, "head_dim", None) or getattr(m, "head_size", None)
        if isinstance(d, int) and d > 0 and any(isinstance(c, nn.Linear) for c in m.children()):
            found.add(mod)
    return found


def _identity_rotary(q, k, *args, **kwargs):
    """Stand-in for ``apply_rotary_pos_emb`` while Torch-Pruning traces (see the module doc)."""
    return q, k


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """While Torch-Pruning traces ``model``: no key/value cache (``config.use_cache = False``:
    Torch-Pruning 1.6's concat mapping fails on the cache's ``torch.cat``), rotary attention
    without the rotation and with the ``"eager"`` attention (:func:`rotary_attention_modules`),
    and splits and concatenations of projection features along the last dimension mapped
    (:mod:`causalprune_fast.model.llm_index_maps`); see the module doc; and the structures of
    :mod:`causalprune_fast.model.structures` traced as their pruners expect
    (:func:`~causalprune_fast.model.structures.trace.structure_trace`); gradients on for every
    parameter (:func:`~causalprune_fast.base.model_state.traced_with_grad`: Torch-Pruning traces
    through autograd, so frozen layers would drop out of the graph). Puts everything back on
    exit, also on an error. Graphs built inside need
    :func:`~causalprune_fast.model.structures.extend_graph` once built."""
    from torch_pruning.dependency import index_mapping

    from causalprune_fast.model.structures import graph_extensions
    from causalprune_fast.model.structures.trace import structure_trace

    rotary = rotary_attention_modules(model)
    configs = {}  # id -> (config, its instance attributes): the properties may set several
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "use_cache") and id(c) not in configs:
            configs[id(c)] = (c, dict(vars(c)))
    saved = {mod: mod.apply_rotary_pos_emb for mod in rotary}
    split = index_mapping.update_split_index_mapping
    concat = index_mapping.update_concat_index_mapping
    try:
        index_mapping.update_split_index_mapping = split_mapping(split)
        index_mapping.update_concat_index_mapping = concat_mapping(concat)
        for mod in rotary:
            mod.apply_rotary_pos_emb = _identity_rotary
        for c, _ in configs.values():
            c.use_cache = False
            if rotary and hasattr(c, "_attn_implementation"):
                c._attn_implementation = "eager"
        with structure_trace(graph_extensions(model)), traced_with_grad(model):
            yield
    finally:
        index_mapping.update_split_index_mapping = split
        index_mapping.update_concat_index_mapping = concat
        for mod, fn in saved.items():
            mod.apply_rotary_pos_emb = fn
        for c, attributes in configs.values():
            vars(c).clear()
            vars(c).update(attributes)
