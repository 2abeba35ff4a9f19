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

import torch


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return values


def _floats(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'lo,hi', got {text!r}") from None
    return lo, hi


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    from causalprune_fast.results.channel_scores import DIRECTIONS
    from causalprune_fast.scoring.score import DEFAULT_EXAMPLES, DEFAULT_SAMPLES_PER_LAYER

    p = _Parser(
        prog="causalprune",
        description="Data-free causal channel scores. Errors in what you give (a bad option, "
        "a missing file, a model that cannot be built) end with one line on stderr and exit "
        "status 2.",
    )
    sub = p.add_subparsers(dest="command", required=True, help="what to do")

    s = sub.add_parser("score", help="score every prunable channel of a model")
    s.add_argument("model", help="torchvision:NAME, timm:NAME or package.module:factory")
    s.add_argument("--input-shape", type=_ints, required=True, help="one example, e.g. 3,224,224")
    s.add_argument("--weights", help="local state-dict file (default: random init)")
    s.add_argument("--num-classes", type=int, help="passed to the model factory")
    s.add_argument(
        "--input-range", type=_floats, default=(-1.0, 1.0), help="noise box lo,hi (default -1,1)"
    )
    s.add_argument(
        "--mode",
        choices=["local", "propagated"],
        default="local",
        help="local: fresh noise at every layer's input; propagated: noise at the model input",
    )
    s.add_argument(
        "--taps",
        choices=["all", "center"],
        default="all",
        help="input units: every (channel, kernel tap), or the kernel centre only",
    )
    s.add_argument("--bins", type=int, default=16, help="bins per variable, 2..256")
    s.add_argument(
        "--examples",
        type=int,
        help=f"noise examples through the whole network (default {DEFAULT_EXAMPLES}): local "
        "mode's calibration pass, propagated mode's measured examples",
    )
    s.add_argument("--samples", type=int, help="old name of --examples")
    s.add_argument(
        "--samples-per-layer",
        type=int,
        help=f"sample rows each layer is measured on (default {DEFAULT_SAMPLES_PER_LAYER}): "
        "exactly this many in local mode, a cap on (example, position) rows in propagated mode",
    )
    s.add_argument("--max-samples-per-layer", type=int, help="old name of --samples-per-layer")
    s.add_argument("--batch-size", type=int, help="noise examples per forward pass")
    s.add_argument("--seed", type=int, default=0, help="seed of the noise and subsampling")
    s.add_argument("--layers", help="regular expression on qualified layer names")
    s.add_argument(
        "--direction",
        choices=list(DIRECTIONS),
        default="auto",
        help="channel score: MI into the channel, out of it, both, or auto (the default: 'in' "
        "for conv channels, 'out' for the others; docs/method.md 6.3)",
    )
    s.add_argument(
        "--reduction",
        choices=["sum", "mean", "max"],
        default="sum",
        help="reduction over a channel's coupled producers/consumers",
    )
    s.add_argument(
        "--correction",
        choices=["miller-madow"],
        default=None,
        help="bias correction of the MI estimate (default none)",
    )
    s.add_argument("--backend", default="auto", help="estimator backend (see 'backends')")
    s.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to score on (default cuda if available, else cpu)",
    )
    s.add_argument("--memory-budget", type=int, help="bytes of working memory")
    s.add_argument("--matrices", action="store_true", help="keep the full MI matrices")
    s.add_argument("--out", help="write the scores here (.safetensors)")
    s.add_argument("--plot", help="also write a plot of the scores here (.png)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    return p


def _check_device(text: str) -> torch.device:
    """The torch device named by ``--device``, which must exist here."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {text!r} is not a torch device ({e})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text!r}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {text!r}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text!r}: MPS is not available here; use --device cpu")
    return device


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
    from causalprune_fast.cli.model_specs import build_model, load_weights
    from causalprune_fast.scoring.score import score_model

    _check_args(args)
    device = _check_device(args.device)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = build_model(args.model, **kwargs)
    if args.weights:
        load_weights(model, args.weights)
    rank = 0
    if args.distributed:
        import datetime

        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=args.timeout),
        )
        rank = dist.get_rank()
    model = model.to(device)
    scores = score_model(
        model,
        args.input_shape,
        input_range=args.input_range,
        mode=args.mode,
        taps=args.taps,
        bins=args.bins,
        **_given(
            examples=args.examples,
            samples=args.samples,
            samples_per_layer=args.samples_per_layer,
            max_samples_per_layer=args.max_samples_per_layer,
        ),
        batch_size=args.batch_size,
        seed=args.seed,
        layers=re.compile(args.layers) if args.layers else None,
        direction=args.direction,
        reduction=args.reduction,
        correction=args.correction,
        backend=args.backend,
        memory_budget=args.memory_budget,
        return_matrices=args.matrices,
        progress=not args.no_progress,
        distributed=args.distributed,
    )
    if args.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank != 0:
        return 0
    scores.config["model"] = args.model
    if args.weights:
        scores.config["weights"] = args.weights
    print(scores.summary())
    if args.out:
        scores.save(args.out)
        print(f"scores written to {args.out}")
    if args.plot:
        scores.plot(args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _given(**options: object) -> dict:
    """The options given on the command line (an old and a new name of one option that
    disagree are an error of score_model, naming both)."""
    return {k: v for k, v in options.items() if v is not None}


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
