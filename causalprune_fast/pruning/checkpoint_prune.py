"""Pruning a checkpoint larger than memory, from shards to shards: :func:`prune_checkpoint`.

1. The checkpoint is scored block by block
   (:func:`~causalprune_fast.scoring.score_checkpoint.score_checkpoint`; or give ``scores``).
2. The channels to remove are chosen from the scores with the rules of ``prune()``'s
   Torch-Pruning plan (:mod:`causalprune_fast.pruning.checkpoint_plan`): whole query heads
   (Llama) or head dims (GPT-2), the hidden size and the MLP width, ``ratio`` of each.
3. A second pass reads the checkpoint one tensor at a time, keeps the chosen channels of
   every dimension that carries them
   (:func:`~causalprune_fast.pruning.checkpoint_layout.tensor_cuts`) and writes a new
   checkpoint directory with its updated config, one shard at a time, into a temporary
   directory next to ``out`` that is renamed to ``out`` only when complete: an interrupted or
   failed prune leaves nothing under ``out``.

The result equals what ``prune()`` makes of the model held in memory with the same arguments:
the same kept channels, so the same tensors (GPT-2's queries rescaled for the new head size,
as ``prune()`` does). Mistral, Qwen2 and GPT-2 checkpoints load back with ``from_pretrained``,
Llama ones where the pruned hidden size is still a multiple of the heads (transformers'
``LlamaConfig`` refuses the others); :func:`load_pruned` builds them all.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

from causalprune_fast.base.checkpoint_io import Checkpoint, CheckpointWriter, check_destination
from causalprune_fast.base.validation import check_ratio
from causalprune_fast.model.block_layouts import Family, family_of
from causalprune_fast.model.checkpoint_model import CheckpointModel
from causalprune_fast.pruning.checkpoint_layout import (
    buildable_config,
    finish_pruned_model,
    pruned_config,
    scale_queries,
    tensor_cuts,
)
from causalprune_fast.pruning.checkpoint_plan import ShardPlan, plan_checkpoint_pruning
from causalprune_fast.pruning.report import PruneReport, shortfall_message, wanted_removals
from causalprune_fast.results.causal_scores import CausalScores
from causalprune_fast.results.channel_scores import DIRECTIONS

SHORTFALL = ("warn", "raise", "ignore")


def _check(ratio, direction, group_reduction, normalizer, on_shortfall) -> float:
    ratio = check_ratio(ratio)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if group_reduction not in ("sum", "mean", "max"):
        raise ValueError(f"group_reduction must be 'sum', 'mean' or 'max', got {group_reduction!r}")
    from causalprune_fast.pruning.importance import _check_normalizer

    _check_normalizer(normalizer)
    if on_shortfall not in SHORTFALL:
        raise ValueError(f"on_shortfall must be one of {SHORTFALL}, got {on_shortfall!r}")
    return ratio


def _check_no_scoring_arguments(scores, input_shape, device, dtype, score_model_kwargs) -> None:
    """With ``scores`` given nothing is scored: arguments that only scoring reads would be
    silently ignored, so they are an error naming them."""
    unused = sorted(score_model_kwargs)
    unused += [name for name, value in (("device", device), ("dtype", dtype)) if value is not None]
    shape = scores.config.get("input_shape")
    if input_shape is not None and (shape is None or tuple(input_shape) != tuple(shape)):
        unused.append(f"input_shape={tuple(input_shape)} (the scores were made with {shape})")
    if unused:
        raise ValueError(
            "scores were given, so nothing is scored here and these scoring arguments would "
            f"have no effect: {', '.join(unused)}"
        )


def prune_checkpoint(
    path: str | os.PathLike,
    ratio: float,
    out: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    *,
    direction: str = "auto",
    group_reduction: str = "sum",
    normalizer="mean",
    on_shortfall: str = "warn",
    scores: CausalScores | None = None,
    max_shard_size: int | str = "2GB",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | str | None = None,
    progress: bool = True,
    **score_model_kwargs,
) -> PruneReport:
    """Prune the model of a Hugging Face checkpoint directory into a new one, block by block
    and shard by shard (module docstring).

    Args:
        path: a Llama-layout (``llama``, ``mistral``, ``qwen2``) or GPT-2 checkpoint directory.
        ratio: fraction of every group's channels to remove, in [0, 1).
        out: the new checkpoint directory; must not exist (nothing is overwritten).
        input_shape: one example's shape for scoring, e.g. ``(64,)`` tokens.
        direction, group_reduction, normalizer: as for :func:`~causalprune_fast.prune`.
        on_shortfall: ``"warn"``, ``"raise"`` (nothing is written) or ``"ignore"`` when fewer
            channels go than asked for.
        scores: scores of this checkpoint from ``score_checkpoint`` (default: scored here).
        max_shard_size: bytes (or ``"2GB"``) per written shard; the writing pass holds one
            shard (twice while it is written) and one tensor (checked against ``max_memory``
            first).
        device, dtype, max_memory, progress, **score_model_kwargs: for scoring, see
            :func:`~causalprune_fast.scoring.score_checkpoint.score_checkpoint`. The written
            tensors keep the checkpoint's dtype.

    Returns:
        :class:`~causalprune_fast.PruneReport` (MACs: the projections' multiply-adds for one
        example of ``input_shape``).

    Raises:
        FileExistsError, FileNotFoundError, ValueError: ``out`` exists or its folder does not,
            a bad checkpoint or argument (naming it), a tensor the layout does not know, a
            shortfall with ``on_shortfall="raise"``: all before anything is written.
    """
    ratio = _check(ratio, direction, group_reduction, normalizer, on_shortfall)
    dest = check_destination(out, "out")
    ckpt = Checkpoint(path)
    family = family_of(ckpt.config, str(ckpt.path / "config.json"))
    cm = CheckpointModel(ckpt)
    family.check(cm.model)
    cm.check_complete()
    cuts = {name: tensor_cuts(family, name) for name in ckpt.tensors}
    _check_write_memory(ckpt, max_shard_size, max_memory)
    if scores is None:
        from causalprune_fast.scoring.score_checkpoint import score_checkpoint

        scores = score_checkpoint(
            path,
            input_shape,
            device=device,
            dtype=dtype,
            max_memory=max_memory,
            progress=progress,
            **score_model_kwargs,
        )
        rescored = 1
    else:
        _check_scores(scores, cm.model)
        _check_no_scoring_arguments(scores, input_shape, device, dtype, score_model_kwargs)
        rescored = 0
    plan = plan_checkpoint_pruning(
        family,
        cm.model,
        scores,
        ratio,
        direction=direction,
        group_reduction=group_reduction,
        normalizer=normalizer,
    )
    tokens = math.prod(scores.config.get("input_shape") or [1])
    report = _report(family, cm, plan, scores, ratio, rescored, tokens)
    message = shortfall_message(report, False)
    if message and on_shortfall == "raise":
        raise ValueError(message + "; nothing was written")
    config = pruned_config(family, ckpt.config, _widths(family, cm.model, plan))
    if message and on_shortfall == "warn":
        warnings.warn(message, UserWarning, stacklevel=2)
    _write(ckpt, family, dest, cuts, plan, config, max_shard_size, progress)
    return report


def _check_write_memory(ckpt: Checkpoint, max_shard_size, max_memory) -> None:
    """The second pass holds one output shard (up to ``max_shard_size``, never more than the
    checkpoint, at least its largest tensor; twice while safetensors serialises it) and one
    tensor read from the checkpoint and its cut copy: ValueError before any work where
    ``max_memory`` (default: the memory available now) cannot hold them."""
    from causalprune_fast.base.checkpoint_io import parse_size
    from causalprune_fast.scoring.walk_memory import resolve_max_memory

    largest = max(info.nbytes for info in ckpt.tensors.values())
    total = sum(info.nbytes for info in ckpt.tensors.values())
    shard = max(min(parse_size(max_shard_size), total), largest)
    budget = resolve_max_memory(max_memory, torch.device("cpu"))
    if 2 * shard + 2 * largest > budget:
        raise ValueError(
            f"max_memory={budget} bytes cannot hold one output shard ({shard} bytes: "
            f"max_shard_size={parse_size(max_shard_size)}, twice while it is written) beside "
            f"the largest tensor read and cut ({largest} bytes, twice); lower max_shard_size "
            "or raise max_memory"
        )


def _check_scores(scores: CausalScores, model: nn.Module) -> None:
    """Scores given to prune_checkpoint must be of this model (its layers and widths)."""
    if not isinstance(scores, CausalScores):
        raise ValueError(f"scores must be CausalScores, got {type(scores).__name__}")
    names = {n for n, _ in model.named_modules()}
    for name, layer in scores.layers.items():
        if name not in names:
            raise ValueError(f"scores hold layer {name!r}, which this checkpoint does not have")
        m = model.get_submodule(name)
        width = m.out_features if isinstance(m, nn.Linear) else int(m.weight.shape[1])
        if len(layer.incoming) != width:
            raise ValueError(
                f"scores of layer {name!r} have {len(layer.incoming)} channels, the "
                f"checkpoint's layer {width}: they are not scores of this checkpoint"
            )


def _widths(family: Family, model: nn.Module, plan: ShardPlan) -> dict[str, int]:
    """The widths the pruned config records; ValueError where blocks ended up different
    (one config cannot describe them; prune() warns in that case)."""
    blocks = range(len(family.block_names(model)))
    per_block = {
        "mlp": {len(plan.kept[("mlp", k)]) for k in blocks},
        "attention": {
            len(plan.kept[("q" if family.name == "llama" else "attn", k)]) for k in blocks
        },
    }
    differ = [f"{k} widths {sorted(v)}" for k, v in per_block.items() if len(v) > 1]
    if differ:
        raise ValueError(
            f"the pruned blocks would differ ({'; '.join(differ)}): one config.json cannot "
            "describe them; nothing was written"
        )
    widths = {"hidden": len(plan.kept["hidden"]), "mlp": len(plan.kept[("mlp", 0)])}
    if family.name == "llama":
        hd = model.get_submodule(f"{family.blocks}.0.self_attn").head_dim
        widths.update(
            heads=len(plan.kept[("q", 0)]) // hd, kv_heads=len(plan.kept[("kv", 0)]) // hd,
            head_dim=hd,
        )  # fmt: skip
    else:
        widths["attn"] = len(plan.kept[("attn", 0)])
    return widths


def _out_after(family: Family, name: str, plan: ShardPlan, before: int) -> int:
    """Output channels of measured layer ``name`` after pruning."""
    if name == "lm_head":
        return before
    k = int(name.split(".")[2])
    leaf = name.split(".", 3)[3]
    what = {
        "self_attn.q_proj": "q", "self_attn.k_proj": "kv", "self_attn.v_proj": "kv",
        "self_attn.o_proj": "hidden", "mlp.gate_proj": "mlp", "mlp.up_proj": "mlp",
        "mlp.down_proj": "hidden", "attn.c_attn": "qkv", "attn.c_proj": "hidden",
        "mlp.c_fc": "mlp", "mlp.c_proj": "hidden",
    }[leaf]  # fmt: skip
    return len(plan.keep(what, k))


def _report(family, cm, plan, scores, ratio, rescored, tokens) -> PruneReport:
    model = cm.model
    stored = {cm.stored_name(n) for n in cm.aliases}
    params_before = sum(math.prod(cm.ckpt.tensors[n].shape) for n in stored)
    params_after = 0
    macs_before = macs_after = 0.0
    for n in stored:
        shape = list(cm.ckpt.tensors[n].shape)
        for dim, what, block in tensor_cuts(family, n):
            shape[dim] = len(plan.keep(what, block))
        params_after += math.prod(shape)
    channels = {}
    for name in scores.layers:
        m = model.get_submodule(name)
        w = m.weight
        i, o = (w.shape[1], w.shape[0]) if isinstance(m, nn.Linear) else tuple(w.shape)
        after_o = _out_after(family, name, plan, o)
        after_i = len(plan.kept["hidden"]) if name == "lm_head" else _in_after(family, name, plan)
        channels[name] = (o, after_o)
        macs_before += tokens * i * o
        macs_after += tokens * after_i * after_o
    short = {}
    for root, (w, after) in plan.groups.items():
        g = plan.group_channel_groups[root]
        if w - after < wanted_removals(w, ratio) - (g - 1):
            short[root] = wanted_removals(w, ratio)
    total = sum(w for w, _ in plan.groups.values())
    removed = sum(w - a for w, a in plan.groups.values())
    return PruneReport(
        params_before=int(params_before),
        params_after=int(params_after),
        macs_before=float(macs_before),
        macs_after=float(macs_after),
        channels=channels,
        rescored=rescored,
        groups=dict(plan.groups),
        ratio=ratio,
        achieved=removed / total if total else 0.0,
        short=short,
    )


def _in_after(family: Family, name: str, plan: ShardPlan) -> int:
    k = int(name.split(".")[2])
    leaf = name.split(".", 3)[3]
    what = {
        "self_attn.o_proj": "q", "mlp.down_proj": "mlp", "attn.c_proj": "attn",
        "mlp.c_proj": "mlp",
    }.get(leaf, "hidden")  # fmt: skip
    return len(plan.keep(what, k))


def _write(ckpt, family, dest, cuts, plan, config, max_shard_size, progress) -> None:
    """The second pass: every tensor read, cut and written, one shard at a time, into a
    temporary directory renamed to ``dest`` at the end."""
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ckpt.tensors), desc="writing", unit="tensor", leave=False)
        except ImportError:
            pass
    try:
        with CheckpointWriter(dest, max_shard_size) as writer:
            for name, t in ckpt.iter_tensors(sorted(ckpt.tensors, key=_natural)):
                for dim, what, block in cuts[name]:
                    t = t.index_select(dim, torch.tensor(plan.keep(what, block)))
                t = scale_queries(family, name, t, plan.query_scale)
                writer.add(name, t)
                del t
                if bar is not None:
                    bar.update(1)
            writer.finish(config, side_files_from=ckpt.path)
    finally:
        if bar is not None:
            bar.close()


def _natural(name: str) -> tuple:
    """Tensor names in model order: block numbers compared as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def load_pruned(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """The model of a checkpoint directory written by :func:`prune_checkpoint` (or any
    checkpoint of the families it prunes), built from its config and weights, in eval mode.

    ``from_pretrained`` loads a pruned Mistral, Qwen2 or GPT-2 checkpoint, and a pruned Llama
    one whose hidden size is still a multiple of its attention heads; transformers'
    ``LlamaConfig`` refuses the others, which this builds
    (:func:`~causalprune_fast.pruning.checkpoint_layout.buildable_config`)."""
    from causalprune_fast.model.checkpoint_model import model_class

    ckpt = Checkpoint(path)
    family = family_of(ckpt.config, str(ckpt.path / "config.json"))
    config = buildable_config(family, model_class(ckpt).config_class, ckpt.config)
    cm = CheckpointModel(ckpt, dtype, config=config)
    cm.load("", torch.device(device))
    finish_pruned_model(family, cm.model, ckpt.config)
    return cm.model.eval()
