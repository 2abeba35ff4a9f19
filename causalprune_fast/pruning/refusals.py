"""Which models ``prune()`` can prune: refusals raised before the model is touched.

``prune()`` removes channels through Torch-Pruning 1.6.1's dependency graph. Where that graph
cannot prune a model, ``prune()`` says so with a ``ValueError`` naming the module and the
reason, before any change and (for the structures below) before any long work:

- :func:`check_structures` (first, no forward pass): structures for which Torch-Pruning's own
  pruner fails or leaves a model that no longer runs (its
  ``examples/torchvision_models`` lists ShuffleNetV2 and Swin as failure cases):

  - channel shuffle (torchvision ShuffleNetV2's ``InvertedResidual``): the
    ``view``/``transpose`` that interleaves the channels of two branches; Torch-Pruning's
    reshape mapping divides by zero on it.
  - window attention with window partitioning (timm and torchvision Swin, MaxViT): the
    window reshapes are mapped as flattenings; on Swin the pruned LayerNorms and Linears
    disagree (timm ``swin_tiny_patch4_window7_224``: a LayerNorm of 355 channels fed 268),
    on MaxViT the group search of one channel creates ~1e6 index entries (MemoryError).
  - LeViT attention (timm): ``qkv`` is split per head into q, k and v of different widths
    (``key_dim``, ``key_dim``, ``val_dim``), which Torch-Pruning's head pruning does not model
    (its own pruner raises IndexError) and it caches the attention biases.
  - CoaT's convolutional relative position encoding (timm ``ConvRelPosEnc``): the value is
    split into head groups, each convolved on its own, and concatenated; Torch-Pruning's concat
    mapping fails on it (TypeError).

- :func:`check_channel_groups` (after the cheap checks, before Torch-Pruning's own unbounded group
  search): any other model whose dependency graph cannot be built, or where the group of a
  prunable layer cannot be found within the bounded walk of
  :func:`causalprune_fast.model.channel_graph.find_groups` (memory and time), is refused naming the
  layers; Torch-Pruning's own search of those groups would fail or exhaust memory.

Whatever passes both and still leaves a model that fails on the example input is put back as
it was and reported by ``prune()`` (docs/method.md section 8).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from causalprune_fast.model.channel_graph import find_groups

# (module path of the class, class name) -> why Torch-Pruning 1.6.1 cannot prune it.
_SHUFFLE = (
    "channel shuffle (a view/transpose interleaving the channels of two branches): "
    "Torch-Pruning 1.6.1 cannot map channels through it (its reshape mapping divides by zero; "
    "its torchvision example lists ShuffleNetV2 as a failure case)"
)
_WINDOWS = (
    "window attention with window partitioning (Swin, MaxViT): Torch-Pruning 1.6.1 maps the "
    "window reshapes as flattenings, so its groups either leave LayerNorms and Linears of "
    "different widths (the pruned model does not run) or its group search of one channel "
    "creates millions of indices and exhausts memory (its torchvision example lists Swin as a "
    "failure case)"
)
_LEVIT = (
    "LeViT attention (qkv split per head into q, k and v of different widths, cached "
    "attention biases): Torch-Pruning 1.6.1's head pruning does not model that layout (its "
    "own pruner raises IndexError on LeViT)"
)
_COAT = (
    "CoaT's convolutional relative position encoding (the value split into head groups, each "
    "convolved on its own, then concatenated): Torch-Pruning 1.6.1's concat mapping fails on "
    "it (TypeError)"
)
UNSUPPORTED: dict[tuple[str, str], str] = {
    ("torchvision.models.shufflenetv2", "InvertedResidual"): _SHUFFLE,
    ("torchvision.models.swin_transformer", "ShiftedWindowAttention"): _WINDOWS,
    ("torchvision.models.swin_transformer", "ShiftedWindowAttentionV2"): _WINDOWS,
    ("torchvision.models.maxvit", "PartitionAttentionLayer"): _WINDOWS,
    ("timm.models.swin_transformer", "WindowAttention"): _WINDOWS,
    ("timm.models.swin_transformer_v2", "WindowAttention"): _WINDOWS,
    ("timm.models.swin_transformer_v2_cr", "WindowMultiHeadAttention"): _WINDOWS,
    ("timm.models.maxxvit", "PartitionAttentionCl"): _WINDOWS,
    ("timm.models.maxxvit", "PartitionAttention2d"): _WINDOWS,
    ("timm.models.maxxvit", "ParallelPartitionAttention"): _WINDOWS,
    ("timm.models.levit", "Attention"): _LEVIT,
    ("timm.models.levit", "AttentionDownsample"): _LEVIT,
    ("timm.models.coat", "ConvRelPosEnc"): _COAT,
}


def _refusal(found: dict[str, list[str]], what: str) -> str:
    parts = []
    for why, names in found.items():
        shown = ", ".join(f"'{n}'" for n in names[:4]) + (" ..." if len(names) > 4 else "")
        parts.append(f"{len(names)} {what} ({shown}): {why}")
    return "; ".join(parts)


def check_structures(model: nn.Module) -> None:
    """Raise a ValueError naming the modules of ``model`` that Torch-Pruning 1.6.1 cannot
    prune (:data:`UNSUPPORTED`, module docstring), before anything else is done."""
    found: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        why = UNSUPPORTED.get((type(m).__module__, type(m).__name__))
        if why is not None:
            found.setdefault(why, []).append(name or "<model>")
    if found:
        raise ValueError(
            f"prune(): {_refusal(found, 'module(s)')}; the model was not changed "
            "(score it with score_model instead)"
        )


def check_channel_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    layer_names: list[str],
    *,
    index_budget: int | None = None,
    time_limit: float | None = None,
) -> None:
    """Raise a ValueError where Torch-Pruning cannot build the dependency graph of ``model``
    or where the group of one of ``layer_names`` cannot be found within the bounded walk of
    :func:`~causalprune_fast.model.channel_graph.find_groups`: Torch-Pruning's own unbounded search
    of it would raise or exhaust memory. Nothing of the model is changed."""
    found = find_groups(
        model, example_input, layer_names, index_budget=index_budget, time_limit=time_limit
    )
    if found.graph_error:
        raise ValueError(
            f"prune(): Torch-Pruning cannot build the dependency graph of this model "
            f"({found.graph_error}); the model was not changed (score it with score_model "
            "instead)"
        )
    if found.uncoupled:
        by_reason: dict[str, list[str]] = {}
        for n, why in found.uncoupled.items():
            by_reason.setdefault(why, []).append(n)
        raise ValueError(
            "prune(): channel groups that cannot be found within the memory and time bounds "
            "(Torch-Pruning's own group search would exhaust memory or not end): "
            f"{_refusal(by_reason, 'layer(s)')}; the model was not changed (score it with "
            "score_model instead)"
        )
