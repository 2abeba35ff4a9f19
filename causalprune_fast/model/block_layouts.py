"""What the block walker knows about each Hugging Face model family: where its blocks and
embeddings are, and the channel groups of its layers (docs/method.md section 6.2) without
Torch-Pruning's graph, which needs the whole model in memory.

Families:

- ``llama``: the Llama layout (``model.layers[k].self_attn.{q,k,v,o}_proj``,
  ``model.layers[k].mlp.{gate,up,down}_proj``, RMSNorms, ``model.embed_tokens``,
  ``model.norm``, ``lm_head``), shared by ``mistral`` and ``qwen2`` checkpoints.
- ``gpt2``: ``transformer.h[k].attn.{c_attn,c_proj}``, ``transformer.h[k].mlp.{c_fc,c_proj}``
  (transformers ``Conv1D``), LayerNorms, ``transformer.wte``/``wpe``, ``transformer.ln_f``,
  ``lm_head`` (tied to ``wte``).

Channel groups (:meth:`Family.groups`) are those that
:func:`~causalprune_fast.model.channel_graph.build_groups` reads from Torch-Pruning's
dependency graph of the model held in memory, member for member and in the same order (the
order fixes the float64 summation order of a channel's entries, so the channel scores are
bit-identical); the tests compare the two on small models of every family. They follow from
the layout:

- The residual stream: every layer that adds into it (``o_proj`` and ``down_proj``; GPT-2's
  two ``c_proj``) is a producer of every hidden channel, and every layer that reads it
  (``q/k/v_proj``, ``gate/up_proj``, ``lm_head``; ``c_attn``, ``c_fc``, ``lm_head``) a
  consumer, one-to-one. Torch-Pruning's walk from a root producer lists, after the root and
  the readers that follow it, every later producer with the readers that follow it, then
  every earlier one, nearest first.
- The MLP: ``gate_proj`` and ``up_proj`` produce the MLP channels (multiplied together),
  ``down_proj`` consumes them; GPT-2: ``c_fc`` produces, ``mlp.c_proj`` consumes.
- Llama attention (as traced for Torch-Pruning, see ``llm_graph.traceable``):
  ``q_proj``'s channels are consumed by ``o_proj``; without grouped-query attention
  ``k_proj`` and ``v_proj`` are coupled to them one-to-one, with it they stand alone.
- GPT-2 attention: Torch-Pruning's bounded walk (channel 0 first, then the others, through
  the split mapping of ``model/llm_index_maps.py``) couples ``c_attn``'s query channel 0 with
  value channel ``2E`` and key channel ``E``, and ``attn.c_proj``'s input channel ``j`` with
  root channel ``j`` of ``c_attn``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from causalprune_fast.model.channel_members import Member, identity_indices
from causalprune_fast.model.families import is_conv1d

_LLAMA_TYPES = ("llama", "mistral", "qwen2")


def identity_member(layer: str, role: str, n: int) -> Member:
    r = identity_indices(n)  # shared: see identity_indices
    return Member(layer, role, r, r)


def out_features(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else int(m.weight.shape[1])


@dataclass(frozen=True)
class Family:
    """The layout of one model family (module docstring)."""

    name: str
    model_types: tuple[str, ...]
    blocks: str  # the ModuleList of decoder blocks
    embedding_names: tuple[str, ...]  # input embeddings (run before the first block)
    attention: str  # the attention module inside a block
    mlp: str  # the MLP module inside a block
    projections: tuple[str, ...]  # measured layers inside a block, relative to it
    check_layer: Callable[[nn.Module], bool]  # the type every projection must have

    def block_names(self, model: nn.Module) -> list[str]:
        """Qualified names of the decoder blocks, in order."""
        return [f"{self.blocks}.{k}" for k in range(len(model.get_submodule(self.blocks)))]

    def embeddings(self, model: nn.Module) -> list[str]:
        return [n for n in self.embedding_names if _has(model, n)]

    def check(self, model: nn.Module) -> None:
        """ValueError naming the first module that does not have this family's layout."""
        for block in self.block_names(model):
            for p in self.projections:
                name = f"{block}.{p}"
                if not _has(model, name) or not self.check_layer(model.get_submodule(name)):
                    raise ValueError(
                        f"'{name}' is missing or not of the type the {self.name} family has; "
                        f"the block walker cannot follow this {type(model).__name__}"
                    )
        config = getattr(model, "config", None)
        if getattr(config, "add_cross_attention", False):
            raise ValueError(f"{self.name} with cross-attention is not supported")

    # ------------------------------------------------------------------ groups
    def _stream(self, model: nn.Module) -> tuple[list[str], list[list[str]]]:
        """The residual stream: its producers in forward order (the embeddings first, as
        ``""``) and the readers that follow each producer."""
        blocks = self.block_names(model)
        producers, readers = [""], []
        if self.name == "llama":
            for b in blocks:
                readers.append([f"{b}.self_attn.{p}_proj" for p in "qkv"])
                producers.append(f"{b}.self_attn.o_proj")
                readers.append([f"{b}.mlp.gate_proj", f"{b}.mlp.up_proj"])
                producers.append(f"{b}.mlp.down_proj")
        else:
            for b in blocks:
                readers.append([f"{b}.attn.c_attn"])
                producers.append(f"{b}.attn.c_proj")
                readers.append([f"{b}.mlp.c_fc"])
                producers.append(f"{b}.mlp.c_proj")
        readers.append(["lm_head"] if _has(model, "lm_head") else [])
        return producers, readers

    def stream_group(self, model: nn.Module, producer: str) -> list[Member]:
        """Every member of the residual stream's group walked from ``producer`` (one of the
        layers that add into the stream), in the order of Torch-Pruning's walk."""
        producers, readers = self._stream(model)
        hidden = out_features(model.get_submodule(producers[1]))
        r = producers.index(producer)
        order = list(range(r, len(producers))) + list(range(r - 1, -1, -1))
        out = []
        for j in order:
            if producers[j]:
                out.append(identity_member(producers[j], "producer", hidden))
            out += [identity_member(n, "consumer", hidden) for n in readers[j]]
        return out

    def stream_producers(self, model: nn.Module) -> list[str]:
        """The layers that add into the residual stream, in forward order."""
        return self._stream(model)[0][1:]

    def groups(self, model: nn.Module, measured: list[str]) -> dict[str, list[Member]]:
        """The members of every measured layer's output-channel group (module docstring),
        restricted to the measured layers, as ``build_groups`` gives them."""
        keep = set(measured)
        width = {n: out_features(model.get_submodule(n)) for n in measured}
        out: dict[str, list[Member]] = {}
        for producer in self.stream_producers(model):
            if producer in keep:
                out[producer] = [m for m in self.stream_group(model, producer) if m.layer in keep]
        for block in self.block_names(model):
            out.update(self._block_groups(model, block, keep, width))
        if "lm_head" in keep:
            out["lm_head"] = [identity_member("lm_head", "producer", width["lm_head"])]
        return {n: out[n] for n in measured}

    def _block_groups(self, model, block: str, keep: set[str], width: dict[str, int]) -> dict:
        out = {}

        def group(root: str, entries: list[tuple[str, str]]) -> None:
            if root in keep:
                n = width[root]
                out[root] = [identity_member(m, role, n) for m, role in entries if m in keep]

        if self.name == "llama":
            a, m = f"{block}.self_attn", f"{block}.mlp"
            q, k, v, o = (f"{a}.{p}_proj" for p in "qkvo")
            gqa = out_features(model.get_submodule(k)) < out_features(model.get_submodule(q))
            if gqa:
                group(q, [(q, "producer"), (o, "consumer")])
                group(k, [(k, "producer")])
                group(v, [(v, "producer")])
            else:
                group(q, [(q, "producer"), (o, "consumer"), (v, "producer"), (k, "producer")])
                group(k, [(k, "producer"), (o, "consumer"), (v, "producer"), (q, "producer")])
                group(v, [(v, "producer"), (o, "consumer"), (k, "producer"), (q, "producer")])
            g, u, d = f"{m}.gate_proj", f"{m}.up_proj", f"{m}.down_proj"
            group(g, [(g, "producer"), (u, "producer"), (d, "consumer")])
            group(u, [(u, "producer"), (d, "consumer"), (g, "producer")])
            return out
        fc, proj = f"{block}.mlp.c_fc", f"{block}.mlp.c_proj"
        group(fc, [(fc, "producer"), (proj, "consumer")])
        c_attn, c_proj = f"{block}.attn.c_attn", f"{block}.attn.c_proj"
        if c_attn in keep:
            e = width[c_attn] // 3
            first = [0, 2 * e, e]
            rest = [i for i in range(1, 3 * e) if i not in (e, 2 * e)]
            entries = [Member(c_attn, "producer", tuple(first + rest), tuple([0, 0, 0] + rest))]
            if c_proj in keep:
                entries.append(Member(c_proj, "consumer", tuple(range(e)), tuple(range(e))))
            out[c_attn] = entries
        return out


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


LLAMA = Family(
    name="llama",
    model_types=_LLAMA_TYPES,
    blocks="model.layers",
    embedding_names=("model.embed_tokens",),
    attention="self_attn",
    mlp="mlp",
    projections=tuple(
        [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    ),
    check_layer=lambda m: isinstance(m, nn.Linear),
)
GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    blocks="transformer.h",
    embedding_names=("transformer.wte", "transformer.wpe"),
    attention="attn",
    mlp="mlp",
    projections=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    check_layer=is_conv1d,
)
FAMILIES = (LLAMA, GPT2)


def family_of(config: dict, where: str = "config.json") -> Family:
    """The family of a checkpoint's ``config.json`` (its ``model_type``); ValueError naming
    the family and the ones the block walker knows."""
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ValueError(
        f"{where}: model_type {model_type!r} is not a family the block walker knows ({known}); "
        "load the model in memory and use score_model/prune instead"
    )
