"""LeViT attention (timm ``levit.Attention`` and ``AttentionDownsample``).

``qkv`` is split per head into q, k and v of different widths (``key_dim``, ``key_dim``,
``val_dim``), the attention biases are per head, and the down-sampling attention computes q
from sub-sampled tokens. Each attention is one node (:class:`~.pruners.StreamPruner`) that
reads one stream (the input columns of ``qkv``, or of ``kv`` and ``q``'s projection) and writes
one (the output rows of ``proj``'s Linear and BatchNorm); its heads, key dims and value dims
stay, and so do its attention biases (the cache of them that the traced forward fills is put
back as found). The streams, the MLPs and the stem are pruned.
"""

from __future__ import annotations

import torch.nn as nn

from causalprune_fast.model.structures.pruners import StreamPruner

_PRUNERS: dict[str, StreamPruner] = {}


def _pruner(kind: str) -> StreamPruner:
    if kind not in _PRUNERS:
        outputs = ["proj.ln.linear", "proj.ln.bn"]
        inputs = ["qkv.linear"] if kind == "Attention" else ["kv.linear", "q.ln.linear"]
        _PRUNERS[kind] = StreamPruner(inputs, outputs)
    return _PRUNERS[kind]


def _attention(ext, module: nn.Module) -> None:
    ext.add_pruner(module, _pruner(type(module).__name__))
    if isinstance(getattr(module, "attention_bias_cache", None), dict):
        ext.caches.append((module, "attention_bias_cache"))  # filled by the traced forward


HANDLERS = {"Attention": _attention, "AttentionDownsample": _attention}
