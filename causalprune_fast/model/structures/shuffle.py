"""ShuffleNetV2's channel shuffle (torchvision ``shufflenetv2.InvertedResidual``).

``channel_shuffle(x, groups)`` interleaves the channels of the two branches: output channel
``p`` is input channel ``(p % groups) * (C // groups) + p // groups``. Torch-Pruning 1.6.1 maps
its view/transpose/view as reshapes (and divides by zero); here it is traced as one node whose
index maps are that permutation (:func:`~.trace.permuted`), so every channel of a stage's
stream keeps its own producer and consumers through the shuffles, for scores and for pruning.

What is pruned: the stem's output, every ``branch2`` bottleneck (its first 1x1 conv, the
depthwise conv, the second 1x1 conv's inputs) and the last 1x1 conv before the classifier.
The stage streams stay: ``x.chunk(2)`` needs equal halves and the shuffle pairs channel ``k``
of one branch with channel ``k`` of the other, so removing a stream channel would need the
matching channel of every branch it meets, which through the shuffles of a stage is all of
them. The layers writing into the streams (each branch's last 1x1 conv) are ignored layers.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

from causalprune_fast.model.structures.trace import permuted

WHY_KEPT = (
    "channel shuffle: a ShuffleNetV2 stage's stream keeps its width (its chunks need equal "
    "halves and the shuffle pairs the channels of the two branches)"
)


def shuffle_permutation(x: torch.Tensor, groups: int) -> list[int]:
    """Input channel of every output channel of ``channel_shuffle(x, groups)``."""
    c = int(x.shape[1])
    per = c // groups
    return [(p % groups) * per + p // groups for p in range(c)]


def _last_conv(branch: nn.Module) -> nn.Module | None:
    convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _inverted_residual(ext, block: nn.Module) -> None:
    ext.split_chunks = True  # x.chunk(2, dim=1): see trace._ChunksAsSplits
    ext.add_function(
        sys.modules[type(block).__module__],
        "channel_shuffle",
        lambda fn: permuted(fn, shuffle_permutation),
    )
    for branch in (getattr(block, "branch1", None), getattr(block, "branch2", None)):
        conv = None if branch is None else _last_conv(branch)
        if conv is not None:
            ext.ignored[conv] = WHY_KEPT


HANDLERS = {"InvertedResidual": _inverted_residual}
