"""How much memory a block walk needs, checked against ``max_memory`` before any work.

At any time the walk holds one piece's weights (the input embeddings, one block, or the
modules after the last block), the hidden states of every calibration example (kept between
blocks), one batch's working memory inside the piece, and the estimator's ``memory_budget``
(local mode's tiles of one layer, within it). The estimate of the working memory is an upper
bound of what a decoder block allocates for one batch: its input and output, the attention's
q, k, v and scores, the MLP's intermediate activations (and for the output head its logits).
"""

from __future__ import annotations

import math
import os

import torch

from causalprune_fast.base.memory import parse_bytes


def available_memory(device: torch.device) -> int:
    """Bytes of memory available now on ``device`` (CUDA: free device memory; CPU: the
    kernel's MemAvailable, or the physical memory where that cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no cap


def resolve_max_memory(max_memory: int | str | None, device: torch.device) -> int:
    """``max_memory`` in bytes (an int, or text such as ``"8GB"``), default what
    :func:`available_memory` reports."""
    if max_memory is None:
        return available_memory(device)
    if isinstance(max_memory, bool) or not isinstance(max_memory, int | str):
        raise ValueError(f"max_memory must be bytes or a size such as '8GB', got {max_memory!r}")
    if isinstance(max_memory, str):
        return parse_bytes(max_memory, "max_memory")
    if max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    return max_memory


def _config_dims(config) -> dict[str, int]:
    hidden = int(config.hidden_size)
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return {
        "hidden": hidden,
        "inter": int(inter or 4 * hidden),
        "heads": int(config.num_attention_heads),
        "vocab": int(config.vocab_size),
    }


def walk_needs(cm, family, plan, blocks: list[str], tail_params: list[str]) -> list[tuple]:
    """``(piece, weight bytes, activation bytes, working bytes)`` of every piece."""
    dims = _config_dims(cm.model.config)
    dtype = cm.dtype or next(cm.model.parameters()).dtype
    size = dtype.itemsize
    tokens = math.prod(plan.input_shape)
    kept = plan.examples * tokens * dims["hidden"] * size
    batch = plan.batch_size * tokens
    block_work = batch * (6 * dims["hidden"] + 3 * dims["inter"]) * size + (
        plan.batch_size * dims["heads"] * tokens * tokens * 4
    )
    head_names = [n for e in family.embeddings(cm.model) for n in cm.names(e)]
    out = [("the input embeddings", cm.nbytes(head_names), kept, batch * dims["hidden"] * size)]
    for b in blocks:
        out.append((f"block '{b}'", cm.nbytes(cm.names(b)), kept, block_work))
    tail_work = batch * (dims["vocab"] + 2 * dims["hidden"]) * max(size, 4)
    out.append(("the modules after the last block", cm.nbytes(tail_params), kept, tail_work))
    return out


def check_walk_memory(cm, family, plan, blocks, tail_params, max_memory: int) -> None:
    """ValueError naming the first piece that does not fit ``max_memory`` with the kept
    activations, its working memory and ``memory_budget``."""
    for piece, weights, kept, work in walk_needs(cm, family, plan, blocks, tail_params):
        need = weights + kept + work + plan.memory_budget
        if need > max_memory:
            raise ValueError(
                f"max_memory={max_memory} bytes cannot hold {piece}: its weights take "
                f"{weights} bytes, the kept hidden states of the {plan.examples} calibration "
                f"examples {kept}, one batch's working memory about {work} and memory_budget "
                f"{plan.memory_budget} ({need} in all); raise max_memory, or lower examples, "
                "batch_size or memory_budget"
            )
