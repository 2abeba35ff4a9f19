"""``causalprune prune MODEL --ratio R --out DEST``: prune any model spec the command line
takes. A Hugging Face checkpoint directory is pruned from shards to shards into a new
checkpoint directory (``cli/checkpoint_command.py``); a torchvision, timm or factory model is
built, pruned in memory with :func:`~causalprune_fast.prune` and written whole with
``torch.save`` (atomically: to a temporary name, renamed when complete)."""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from causalprune_fast.cli.options import (
    add_direction_option,
    add_model_options,
    add_noise_options,
    check_device,
    noise_kwargs,
)

LOADING = """loading the result:
  a checkpoint directory is written as a new checkpoint directory:
    model = causalprune_fast.load_pruned("DEST")          # any pruned Llama/Mistral/Qwen2/GPT-2
    model = AutoModelForCausalLM.from_pretrained("DEST")  # Mistral, Qwen2, GPT-2; Llama whose
                                                          # pruned hidden size is a multiple of
                                                          # its heads
  any other model is written whole with torch.save (torchvision/timm must be importable):
    model = torch.load("DEST", weights_only=False)        # only for files you trust
"""

NORMALIZERS = ("none", "mean", "max", "sum", "standarization", "gaussian", "lamp")


def add_prune_parser(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model (or a checkpoint directory) and write the result",
        description="Remove --ratio of the channels of every prunable group, lowest causal "
        "score first, and write the pruned model to --out (which must not exist). A Hugging "
        "Face checkpoint directory (Llama, Mistral, Qwen2, GPT-2) is scored and pruned one "
        "block in memory at a time and written as a new checkpoint directory, shard by shard; "
        "any other model is pruned in memory and saved with torch.save.",
        epilog=LOADING,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    p.add_argument("--ratio", type=float, required=True, help="fraction to remove, in [0, 1)")
    p.add_argument("--out", required=True, help="where the pruned model goes (must not exist)")
    add_noise_options(p)
    add_direction_option(p)
    p.add_argument(
        "--reduction",
        choices=["sum", "mean", "max"],
        default="sum",
        help="reduction over a group's coupled layers (prune()'s group_reduction)",
    )
    p.add_argument(
        "--normalizer",
        choices=NORMALIZERS,
        default="mean",
        help="Torch-Pruning's normalizer of each group's scores (default mean; only global "
        "pruning compares groups)",
    )
    p.add_argument("--sequential", action="store_true", help="score and prune group by group")
    p.add_argument(
        "--global-pruning",
        action="store_true",
        help="rank channels across layers (with --correction miller-madow unless --correction "
        "is given)",
    )
    p.add_argument(
        "--on-shortfall",
        choices=["warn", "raise", "ignore"],
        default="warn",
        help="when fewer channels go than asked for (raise: nothing is written)",
    )
    p.add_argument(
        "--scores",
        help="checkpoint directories: a scores file of this checkpoint ('causalprune score "
        "... --out FILE') to prune by, instead of scoring it again",
    )
    p.add_argument(
        "--max-shard-size",
        help="checkpoint directories: bytes (or 2GB, ...) per written shard (default 2GB)",
    )


def _check_out_file(out: str) -> None:
    if os.path.exists(out):
        raise FileExistsError(f"--out {out!r} already exists; give a new file name")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {out!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"--out {out!r}: the folder {folder!r} is not writable")


def prune_command(args) -> int:
    from causalprune_fast.cli.checkpoint_command import (
        check_in_memory_only,
        prune_checkpoint_command,
    )
    from causalprune_fast.cli.model_specs import build_model, is_checkpoint_dir, load_weights

    device = check_device(args.device)
    normalizer = None if args.normalizer == "none" else args.normalizer
    if is_checkpoint_dir(args.model):
        return prune_checkpoint_command(args, device, normalizer)
    check_in_memory_only(args)
    _check_out_file(args.out)
    if args.weights and not os.path.isfile(args.weights):
        raise FileNotFoundError(f"--weights {args.weights!r} does not exist")
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = build_model(args.model, **kwargs)
    if args.weights:
        load_weights(model, args.weights)
    model = model.to(device)
    from causalprune_fast.pruning.prune_model import prune

    model, report = prune(
        model,
        args.ratio,
        args.input_shape,
        direction=args.direction,
        group_reduction=args.reduction,
        normalizer=normalizer,
        sequential=args.sequential,
        global_pruning=args.global_pruning,
        on_shortfall=args.on_shortfall,
        **noise_kwargs(args, args.input_range or (-1.0, 1.0)),
    )
    print(report.summary())
    folder = os.path.dirname(os.path.abspath(args.out))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(args.out)}.partial-", dir=folder)
    os.close(fd)
    try:
        torch.save(model, tmp)
        os.replace(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    print(
        f"pruned model written to {args.out} (load it with torch.load({args.out!r}, "
        "weights_only=False))"
    )
    return 0
