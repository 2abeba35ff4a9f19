"""Command-line options shared by ``causalprune score`` and ``causalprune prune``: the model,
the noise and where it runs, and how they are parsed and checked."""

from __future__ import annotations

import argparse
import os

import torch


def ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return values


def floats(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'lo,hi', got {text!r}") from None
    return lo, hi


def add_model_options(s: argparse.ArgumentParser) -> None:
    """The model to build and the noise box at its input (``score`` and ``prune``)."""
    s.add_argument(
        "model",
        help="torchvision:NAME, timm:NAME, package.module:factory, or a Hugging Face "
        "checkpoint directory",
    )
    s.add_argument(
        "--input-shape", type=ints, required=True, help="one example, e.g. 3,224,224 (or T tokens)"
    )
    s.add_argument("--weights", help="local state-dict file (default: random init)")
    s.add_argument("--num-classes", type=int, help="passed to the model factory")
    s.add_argument(
        "--input-range",
        type=floats,
        help="noise box lo,hi (default -1,1; for a checkpoint directory 0,VOCAB token ids)",
    )


def add_noise_options(s: argparse.ArgumentParser) -> None:
    """How the noise is made and measured, where, and within what memory."""
    from causalprune_fast.scoring.score import DEFAULT_EXAMPLES, DEFAULT_SAMPLES_PER_LAYER

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
    s.add_argument(
        "--correction",
        choices=["none", "miller-madow"],
        default=None,
        help="bias correction of the MI estimate (default none; prune --global-pruning: "
        "miller-madow)",
    )
    s.add_argument(
        "--pairs-per-unit",
        type=int,
        help="estimate each unit's MI sum from this many random partner units (with standard "
        "errors) instead of measuring every pair of a layer",
    )
    s.add_argument("--backend", default="auto", help="estimator backend (see 'backends')")
    s.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to score on (default cuda if available, else cpu)",
    )
    s.add_argument("--memory-budget", type=int, help="bytes of working memory")
    s.add_argument(
        "--max-memory",
        help="checkpoint directories: bytes (or 8GB, ...) that one block, the kept activations "
        "and --memory-budget may take together (default: the memory available now); checked "
        "before any work",
    )
    s.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="checkpoint directories: the weights' dtype while scoring (default: as stored)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_direction_option(s: argparse.ArgumentParser) -> None:
    """``--direction``, the channel score's direction, with the default of ``score_model`` and
    ``prune`` (``score`` and ``prune``)."""
    from causalprune_fast.results.channel_scores import DIRECTIONS

    s.add_argument(
        "--direction",
        choices=list(DIRECTIONS),
        default="auto",
        help="channel score: MI into the channel, out of it, both, or auto (the default: 'in' "
        "for conv channels, 'out' for the others; docs/method.md 6.3)",
    )


def check_device(text: str) -> torch.device:
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


def _none(value: str) -> str | None:
    return None if value == "none" else value


def given(**options: object) -> dict:
    """The options given on the command line (an old and a new name of one option that
    disagree are an error of score_model, naming both)."""
    return {k: v for k, v in options.items() if v is not None}


def start_distributed(device: torch.device, timeout: int) -> tuple[torch.device, int]:
    """Join the torch.distributed job that torchrun started (nccl on GPUs, gloo on CPUs):
    this rank's device and its rank."""
    import datetime

    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(seconds=timeout),
    )
    return device, dist.get_rank()


def noise_kwargs(args, input_range: tuple[float, float]) -> dict:
    """The score_model arguments of the noise options (``add_noise_options``)."""
    return dict(
        input_range=input_range,
        mode=args.mode,
        taps=args.taps,
        bins=args.bins,
        **given(
            examples=args.examples,
            samples=args.samples,
            samples_per_layer=args.samples_per_layer,
            max_samples_per_layer=args.max_samples_per_layer,
            pairs_per_unit=args.pairs_per_unit,
        ),
        **({} if args.correction is None else {"correction": _none(args.correction)}),
        batch_size=args.batch_size,
        seed=args.seed,
        backend=args.backend,
        memory_budget=args.memory_budget,
        progress=not args.no_progress,
    )


def write_scores(args, scores) -> int:
    """What ``causalprune score`` does with the scores on rank 0: the model spec (and
    ``--weights``) recorded in their config, the summary printed, ``--out`` and ``--plot``
    written. Returns the exit status."""
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


def scoring_options_given(args) -> list[str]:
    """The options of ``add_noise_options`` that only scoring reads and that were given a
    value other than their default (``--max-memory`` and ``--no-progress`` apply to the
    writing pass too and are left out)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_noise_options(parser)
    defaults = vars(parser.parse_args([]))
    return [
        "--" + dest.replace("_", "-")
        for dest, default in defaults.items()
        if dest not in ("max_memory", "no_progress") and getattr(args, dest) != default
    ]
