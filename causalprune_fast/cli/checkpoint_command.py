"""``causalprune score`` and ``causalprune prune`` on a Hugging Face checkpoint directory:
scored one decoder block in memory at a time
(:func:`~causalprune_fast.scoring.score_checkpoint.score_checkpoint`) and pruned from shards
to shards (:func:`~causalprune_fast.pruning.checkpoint_prune.prune_checkpoint`)."""

from __future__ import annotations

import re

import torch

from causalprune_fast.cli.options import (
    noise_kwargs,
    scoring_options_given,
    start_distributed,
    write_scores,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_in_memory_only(args) -> None:
    """Options that apply to checkpoint directories only, given for another model spec."""
    for option, value in (
        ("--max-memory", args.max_memory),
        ("--dtype", args.dtype),
        ("--max-shard-size", getattr(args, "max_shard_size", None)),
        ("--scores", getattr(args, "scores", None)),
    ):
        if value is not None:
            raise ValueError(
                f"{option} applies to Hugging Face checkpoint directories only, not to "
                f"{args.model!r}"
            )


def _checkpoint_kwargs(args) -> dict:
    """What a checkpoint directory is scored with: the noise options (token ids in
    ``[0, vocab)`` by default), where and in what dtype. Options that make no sense for a
    checkpoint directory are errors."""
    from causalprune_fast.base.checkpoint_io import Checkpoint

    for option, value in (("--weights", args.weights), ("--num-classes", args.num_classes)):
        if value is not None:
            raise ValueError(
                f"{option} does not apply to a checkpoint directory ({args.model!r} holds its "
                "own weights and config)"
            )
    ckpt = Checkpoint(args.model)  # the directory checked (config, index, shards) first
    vocab = ckpt.config.get("vocab_size")
    if args.input_range is None and not isinstance(vocab, int):
        raise ValueError(
            f"{args.model!r}: config.json has no vocab_size; give --input-range 0,VOCAB"
        )
    input_range = args.input_range or (0, vocab)
    return dict(
        noise_kwargs(args, input_range),
        dtype=_DTYPES.get(args.dtype),
        max_memory=args.max_memory,
    )


def score_checkpoint_command(args, device: torch.device) -> int:
    """``causalprune score CHECKPOINT_DIR ...``: scores printed, and written to ``--out``."""
    from causalprune_fast.scoring.score_checkpoint import score_checkpoint

    kwargs = _checkpoint_kwargs(args)
    rank = 0
    if args.distributed:
        device, rank = start_distributed(device, args.timeout)
    try:
        scores = score_checkpoint(
            args.model,
            args.input_shape,
            device=device,
            layers=re.compile(args.layers) if args.layers else None,
            direction=args.direction,
            reduction=args.reduction,
            return_matrices=args.matrices,
            distributed=args.distributed,
            **kwargs,
        )
    finally:
        if args.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    return write_scores(args, scores) if rank == 0 else 0


def prune_checkpoint_command(args, device: torch.device, normalizer) -> int:
    """``causalprune prune CHECKPOINT_DIR --ratio R --out DIR``: the report printed."""
    from causalprune_fast.pruning.checkpoint_prune import prune_checkpoint

    for option, value in (
        ("--sequential", args.sequential),
        ("--global-pruning", args.global_pruning),
    ):
        if value:
            raise ValueError(
                f"{option} is not supported for a checkpoint directory: it is pruned block by "
                "block with every group's own ratio (local pruning, one step)"
            )
    kwargs = _checkpoint_kwargs(args)
    if args.scores:
        from causalprune_fast.results.causal_scores import CausalScores

        given = scoring_options_given(args)
        if args.input_range is not None:
            given.append("--input-range")
        if given:
            raise ValueError(
                f"--scores: nothing is scored, so {', '.join(given)} would have no effect"
            )
        kwargs = dict(
            scores=CausalScores.load(args.scores),
            max_memory=args.max_memory,
            progress=not args.no_progress,
        )
        device = None
    report = prune_checkpoint(
        args.model,
        args.ratio,
        args.out,
        args.input_shape,
        direction=args.direction,
        group_reduction=args.reduction,
        normalizer=normalizer,
        on_shortfall=args.on_shortfall,
        max_shard_size=args.max_shard_size or "2GB",
        device=device,
        **kwargs,
    )
    print(report.summary())
    print(
        f"pruned checkpoint written to {args.out} (load it with "
        "causalprune_fast.load_pruned, or from_pretrained where transformers' config can "
        "describe it)"
    )
    return 0
