"""What Torch-Pruning 1.6.1 must be told to build and walk the dependency graph of structures it
cannot map on its own (docs/method.md sections 6.2 and 6.5), through its public extension
points:

- **custom pruners** (``customized_pruners``, with ``root_module_types``) for whole modules
  whose inside Torch-Pruning must not trace: window attention (torchvision and timm Swin,
  MaxViT), Swin's patch merging, LeViT's attention, CoaT's factorised attention and
  convolutional position encodings. While Torch-Pruning traces the model, each such module's
  output is tied to its inputs through one autograd node (:mod:`.trace`), so the module is one
  node of the graph; its pruner prunes the layers inside it with the indices mapped as the
  module uses them (q, k and v rows of a fused projection, the four copies of a channel in
  patch merging) and keeps the attributes its forward reads.
- **channel-preserving functions** (window partition and reverse, CoaT's class-token concat
  and feature-map interpolation) traced as one element-wise node each: they move tokens, never
  channels, which is what Torch-Pruning assumes of an operation it does not know.
- **index maps** of permutations (ShuffleNetV2's channel shuffle), set on the two edges of the
  shuffle's node after the graph is built (:func:`extend_graph`); Torch-Pruning 1.6.1 has no
  registration point for a map of one's own. In such a graph its chunks along the channels are
  traced as splits (it cannot read a chunk's sizes under PyTorch 2) and the sizes and maps of
  its channel concats are set after the build (it infers them wrongly through the
  permutations): :func:`.trace.fix_chunks`.
- **ignored layers**: layers whose output channels a structure forbids to prune (the branches
  of a channel shuffle must keep equal halves).
- **unwrapped parameters**: CoaT's class tokens, pruned with their stream.

:func:`graph_extensions` collects all of it for a model; nothing here imports Torch-Pruning,
timm or torchvision until a model holds one of the :data:`CLAIMED` classes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

# (module path, class name) -> the family module that knows it.
CLAIMED: dict[tuple[str, str], str] = {
    ("torchvision.models.swin_transformer", "ShiftedWindowAttention"): "windows",
    ("torchvision.models.swin_transformer", "ShiftedWindowAttentionV2"): "windows",
    ("torchvision.models.swin_transformer", "PatchMerging"): "windows",
    ("torchvision.models.swin_transformer", "PatchMergingV2"): "windows",
    ("torchvision.models.maxvit", "RelativePositionalMultiHeadAttention"): "windows",
    ("torchvision.models.maxvit", "WindowPartition"): "windows",
    ("torchvision.models.maxvit", "WindowDepartition"): "windows",
    ("timm.models.swin_transformer", "WindowAttention"): "windows",
    ("timm.models.swin_transformer", "PatchMerging"): "windows",
    ("timm.models.swin_transformer", "SwinTransformerBlock"): "windows",
    ("timm.models.maxxvit", "AttentionCl"): "windows",
    ("timm.models.maxxvit", "PartitionAttentionCl"): "windows",
    ("torchvision.models.shufflenetv2", "InvertedResidual"): "shuffle",
    ("timm.models.levit", "Attention"): "levit",
    ("timm.models.levit", "AttentionDownsample"): "levit",
    ("timm.models.coat", "FactorAttnConvRelPosEnc"): "coat",
    ("timm.models.coat", "ConvRelPosEnc"): "coat",
    ("timm.models.coat", "ConvPosEnc"): "coat",
    ("timm.models.coat", "CoaT"): "coat",
    ("timm.models.coat", "ParallelBlock"): "coat",
}


def claim_of(module: nn.Module) -> str | None:
    """The family module that knows ``module``'s class, or None."""
    return CLAIMED.get((type(module).__module__, type(module).__name__))


@dataclass
class GraphExtensions:
    """Everything Torch-Pruning must be told about a model's structures (module docstring)."""

    pruners: dict[type, object] = field(default_factory=dict)  # customized_pruners
    roots: list[type] = field(default_factory=list)  # customized types that root a group
    opaque: list[nn.Module] = field(default_factory=list)  # one node each while traced
    functions: list[tuple[object, str, Callable]] = field(default_factory=list)  # owner, attr, wrap
    hidden: list[tuple[nn.Module, str]] = field(default_factory=list)  # parent, attribute
    ignored: dict[nn.Module, str] = field(default_factory=dict)  # layer -> why its outputs stay
    unwrapped: list[tuple[nn.Parameter, int]] = field(default_factory=list)
    caches: list[tuple[object, str]] = field(default_factory=list)  # put back after a trace
    claimed: list[nn.Module] = field(default_factory=list)
    split_chunks: bool = False  # chunks along the channels traced as splits (.trace)

    def add_pruner(self, module: nn.Module, pruner: object, *, root: bool = False) -> None:
        """``module`` is traced as one node (:mod:`.trace`) and pruned by ``pruner``."""
        self.pruners[type(module)] = pruner
        if root and type(module) not in self.roots:
            self.roots.append(type(module))
        if module not in self.opaque:
            self.opaque.append(module)

    def add_function(self, owner: object, attribute: str, wrap: Callable | None = None) -> None:
        """``owner.attribute`` (a module-level function, or a method of one model object) is
        traced as one channel-preserving node (``wrap``, default :func:`.trace.opaque`)."""
        if wrap is None:
            from causalprune_fast.model.structures.trace import opaque

            wrap = opaque
        if not any(o is owner and a == attribute for o, a, _ in self.functions):
            self.functions.append((owner, attribute, wrap))


def graph_extensions(model: nn.Module) -> GraphExtensions:
    """The :class:`GraphExtensions` of ``model`` (empty where it holds no claimed class)."""
    ext = GraphExtensions()
    families: dict[str, object] = {}
    for _, m in model.named_modules():
        family = claim_of(m)
        if family is None:
            continue
        if family not in families:
            families[family] = importlib.import_module(f"{__name__}.{family}")
        families[family].HANDLERS[type(m).__name__](ext, m)
        ext.claimed.append(m)
    # A module inside another traced-as-one module is never reached by Torch-Pruning's trace.
    inner = {id(sub) for m in ext.opaque for sub in m.modules() if sub is not m}
    ext.opaque = [m for m in ext.opaque if id(m) not in inner]
    return ext


def claimed_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose classes :data:`CLAIMED` knows (no import needed)."""
    return [m for m in model.modules() if claim_of(m) is not None]


def extend_graph(dg) -> None:
    """What Torch-Pruning's ``build_dependency`` cannot be told: the index maps of channel
    permutations (:func:`.trace.map_permutations`) and, in a graph with them, the real sizes of
    the splits and concats along the channels (:func:`.trace.fix_chunks`). Call it on every
    graph built under :func:`causalprune_fast.model.llm_graph.traceable`; other graphs are left
    as they are."""
    from torch_pruning.dependency import index_mapping

    from causalprune_fast.model.structures.trace import fix_chunks, map_permutations

    if fix_chunks(dg):
        index_mapping.update_index_mapping(dg)
    map_permutations(dg)
