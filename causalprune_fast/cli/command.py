"""The ``causalprune`` command.

causalprune score torchvision:resnet50 --input-shape 3,224,224 --out scores.safetensors
causalprune summary scores.safetensors [--direction both]
causalprune plot scores.safetensors --out fig.png
causalprune backends
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from causalprune_fast.cli.checkpoint_command import check_in_memory_only, score_checkpoint_command
from causalprune_fast.cli.options import (
    add_direction_option,
    add_model_options,
    add_noise_options,
    check_device,
    noise_kwargs,
    start_distributed,
    write_scores,
)
from causalprune_fast.cli.prune_command import add_prune_parser, prune_command


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    from causalprune_fast.results.channel_scores import DIRECTIONS

    p = _Parser(
        prog="causalprune",
        description="Data-free causal channel scores. Errors in what you give (a bad option, "
        "a missing file, a model that cannot be built) end with one line on stderr and exit "
        "status 2.",
    )
    sub = p.add_subparsers(dest="command", required=True, help="what to do")

    s = sub.add_parser(
        "score",
        help="score every prunable channel of a model",
        description="Score every prunable channel of a model. MODEL is torchvision:NAME, "
        "timm:NAME, package.module:factory, or a Hugging Face checkpoint directory "
        "(config.json and safetensors shards, as save_pretrained writes them; Llama, Mistral, "
        "Qwen2 or GPT-2), which is scored one decoder block in memory at a time.",
    )
    add_model_options(s)
    add_noise_options(s)
    s.add_argument("--layers", help="regular expression on qualified layer names")
    add_direction_option(s)
    s.add_argument(
        "--reduction",
        choices=["sum", "mean", "max"],
        default="sum",
        help="reduction over a channel's coupled producers/consumers",
    )
    s.add_argument("--matrices", action="store_true", help="keep the full MI matrices")
    s.add_argument("--out", help="write the scores here (.safetensors)")
    s.add_argument("--plot", help="also write a plot of the scores here (.png)")
    s.add_argument(
        "--distributed",
        action="store_true",
        help="score across the processes started by torchrun (nccl on GPUs, gloo on CPUs); "
        "rank 0 prints and writes the results",
    )
    s.add_argument("--timeout", type=int, default=600, help="seconds a collective may wait")

    m = sub.add_parser("summary", help="print the per-layer table of a scores file")
    m.add_argument("file", help="a scores file written by 'score --out'")
    m.add_argument(
        "--direction",
        choices=list(DIRECTIONS),
        help="rescore under this direction (default: the file's)",
    )

    g = sub.add_parser("plot", help="plot per-layer score distributions of a scores file")
    g.add_argument("file", help="a scores file written by 'score --out'")
    g.add_argument("--out", required=True, help="image file, e.g. fig.png")
    g.add_argument(
        "--direction",
        choices=list(DIRECTIONS),
        help="rescore under this direction (default: the file's)",
    )

    sub.add_parser("backends", help="list the estimator backends and whether they work here")
    add_prune_parser(sub)
    return p


def _check_args(args) -> None:
    """Everything about the ``score`` arguments that can be checked before the long work."""
    from causalprune_fast.base.validation import check_image_path
    from causalprune_fast.results.file_format import check_scores_path

    if args.out:
        check_scores_path(args.out, "--out", try_write=True)
    if args.plot:
        check_image_path(args.plot, "--plot", try_write=True)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    if args.timeout < 1:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.weights and os.path.isdir(args.weights):
        raise IsADirectoryError(f"--weights {args.weights!r} is a directory, not a weights file")
    if args.weights and not os.path.isfile(args.weights):
        raise FileNotFoundError(f"--weights {args.weights!r} does not exist")
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes must be a positive int, got {args.num_classes}")
    if args.layers:
        try:
            re.compile(args.layers)
        except re.error as e:
            raise ValueError(
                f"--layers {args.layers!r} is not a regular expression ({e})"
            ) from None


def _score(args) -> int:
    from causalprune_fast.cli.model_specs import build_model, is_checkpoint_dir, load_weights
    from causalprune_fast.scoring.score import score_model

    _check_args(args)
    device = check_device(args.device)
    if is_checkpoint_dir(args.model):
        return score_checkpoint_command(args, device)
    check_in_memory_only(args)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = build_model(args.model, **kwargs)
    if args.weights:
        load_weights(model, args.weights)
    rank = 0
    if args.distributed:
        device, rank = start_distributed(device, args.timeout)
    model = model.to(device)
    scores = score_model(
        model,
        args.input_shape,
        **noise_kwargs(args, args.input_range or (-1.0, 1.0)),
        layers=re.compile(args.layers) if args.layers else None,
        direction=args.direction,
        reduction=args.reduction,
        return_matrices=args.matrices,
        distributed=args.distributed,
    )
    if args.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return write_scores(args, scores) if rank == 0 else 0


# What a user can get wrong: bad values (ValueError, TypeError from the argument checks),
# files that are missing, are folders or cannot be written (OSError), missing optional
# packages (ImportError). These end with one line on stderr and exit status 2; anything else
# is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run the ``causalprune`` command; returns the exit status (2 on a user error)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except USER_ERRORS as e:
        print(f"causalprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("causalprune: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    if args.command == "score":
        return _score(args)
    if args.command == "prune":
        return prune_command(args)
    from causalprune_fast.estimator.backends import available_backends
    from causalprune_fast.results.causal_scores import CausalScores

    if args.command == "backends":
        for name, status in available_backends().items():
            print(f"{name:10s} {'yes' if status.available else 'no ':3s} {status.detail}")
        return 0
    if args.command == "plot":
        from causalprune_fast.base.validation import check_image_path

        check_image_path(args.out, "--out", try_write=True)
    scores = CausalScores.load(args.file)
    if args.direction:
        scores = scores.with_direction(args.direction)
    if args.command == "summary":
        print(scores.summary())
    else:
        scores.plot(args.out)
        print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
