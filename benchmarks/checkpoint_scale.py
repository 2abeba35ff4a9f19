"""Checkpoints larger than memory (issue 20): time and peak resident memory of
``causalprune score`` and ``causalprune prune`` on Llama-style checkpoint directories of growing
size, against the size of the model.

    python benchmarks/checkpoint_scale.py --sizes 0.1B,0.5B,1.5B --work /work/tmp-ckpt \\
        --json benchmarks/results/cpu/checkpoint_scale.json \\
        --plot benchmarks/checkpoint-scale-cpu.png

For every size a checkpoint with random weights (normal, std 0.02; norms 1; bfloat16; shards of
``--shard`` bytes) is generated on the fly, one tensor at a time, into ``--work`` (never
committed), then scored and pruned by the command line in a child process run under
``/usr/bin/time -v`` (its "Maximum resident set size" is the peak RSS), and deleted. A child
that only imports the package gives the resident memory every run pays before any model.
``--sizes tiny --smoke`` runs the whole pipeline on a 2-block model in a few seconds (a test
keeps this script from rotting).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Llama-style, grouped-query attention, untied embeddings, vocabulary 32000.
SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=256),
    "0.1B": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, intermediate_size=2048, vocab_size=32000),
    "0.5B": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=4, intermediate_size=4608, vocab_size=32000),
    "1.5B": dict(hidden_size=2048, num_hidden_layers=30, num_attention_heads=16,
                 num_key_value_heads=4, intermediate_size=5632, vocab_size=32000),
}  # fmt: skip


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a LlamaForCausalLM with config ``c``, in model order."""
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": (v, h)}
    for k in range(c["num_hidden_layers"]):
        p = f"model.layers.{k}."
        out.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })  # fmt: skip
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (v, h)
    return out


def generate(path: str, c: dict, shard: str, seed: int = 0) -> int:
    """A checkpoint directory at ``path`` with random bfloat16 weights; its parameter count."""
    import transformers

    from causalprune_fast.base.checkpoint_io import CheckpointWriter

    ids = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    config = transformers.LlamaConfig(
        **c, **ids, max_position_embeddings=4096, tie_word_embeddings=False
    )
    config = dict(config.to_dict(), architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")
    gen = torch.Generator().manual_seed(seed)
    params = 0
    with CheckpointWriter(path, shard) as writer:
        for name, shape in tensor_shapes(c).items():
            if len(shape) == 1:
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
            params += t.numel()
            writer.add(name, t)
            del t
        writer.finish(config)
    return params


def timed(cmd: list[str]) -> dict:
    """``cmd`` under /usr/bin/time -v: wall seconds, peak RSS (bytes), exit status, output."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = sum(
        float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
        for kind in ("User", "System")
    )
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "peak_rss": int(m.group(1)) * 1024,
        "stdout": proc.stdout,
    }


def revision() -> str:
    """The code's git revision (short hash, ``+dirty`` with uncommitted changes), or
    ``"unknown"`` outside a git checkout (give ``--revision`` for a copy of one)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def run_size(name: str, args) -> dict:
    c = SIZES[name]
    path = os.path.join(args.work, f"llama-{name}")
    out = path + "-pruned"
    for p in (path, out):
        shutil.rmtree(p, ignore_errors=True)
    if os.path.exists(path + ".scores.safetensors"):
        os.remove(path + ".scores.safetensors")
    t0 = time.perf_counter()
    params = generate(path, c, args.shard)
    gen_s = time.perf_counter() - t0
    disk = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    noise = ["--input-shape", str(args.tokens), "--examples", str(args.examples),
             "--samples-per-layer", str(args.samples_per_layer), "--memory-budget",
             str(args.memory_budget), "--device", "cpu", "--no-progress"]  # fmt: skip
    py = [sys.executable, "-m", "causalprune_fast"]
    scores = path + ".scores.safetensors"
    score = timed([*py, "score", path, *noise, "--out", scores])
    shards = ["--max-shard-size", args.shard]
    from_scores = ["--input-shape", str(args.tokens), "--no-progress"]  # nothing is scored
    prune = timed(
        [*py, "prune", path, "--ratio", "0.3", "--out", out, "--scores", scores, *shards,
         *from_scores]
    )  # fmt: skip
    pruned_disk = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    summary = [ln for ln in prune["stdout"].splitlines() if ln.startswith("params")]
    stages = [ln for ln in score["stdout"].splitlines() if ln.startswith("time: ")]
    if not args.keep:
        for p in (path, out):
            shutil.rmtree(p, ignore_errors=True)
        os.remove(scores)
    h = c["hidden_size"]
    block_params = sum(math.prod(s) for n, s in tensor_shapes(c).items() if ".layers.0." in n)
    return {
        "size": name,
        "config": c,
        "params": params,
        "checkpoint_bytes": disk,
        "block_bytes": block_params * 2,
        "head_bytes": c["vocab_size"] * h * 2,
        "pruned_bytes": pruned_disk,
        "pairs": sum(math.prod(s) for n, s in tensor_shapes(c).items() if n.endswith("proj.weight"))
        + c["vocab_size"] * h,
        "generate_s": gen_s,
        "score_s": score["seconds"],
        "score_cpu_s": score["cpu_seconds"],
        "score_peak_rss": score["peak_rss"],
        "prune_s": prune["seconds"],
        "prune_cpu_s": prune["cpu_seconds"],
        "prune_peak_rss": prune["peak_rss"],
        "prune_report": summary[0] if summary else "",
        "score_stages": stages[-1] if stages else "",
    }


# Llama 3 8B and 70B (grouped-query attention, vocabulary 128256), for the projection.
PROJECTED = {
    "8B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=14336, vocab_size=128256),
    "70B": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, intermediate_size=28672, vocab_size=128256),
}  # fmt: skip


def layer_shapes(c: dict) -> list[tuple[int, int]]:
    """(inputs, outputs) of every measured layer of a Llama-style model with config ``c``."""
    return [
        (s[1], s[0])
        for n, s in tensor_shapes(c).items()
        if n.endswith("proj.weight") or n == "lm_head.weight"
    ]


def projection(rates: dict[str, float], samples: int, examples: int, tokens: int, k: int):
    """Rows of the 8B / 70B projection: pairs (exact and with pairs_per_unit=k), sizes, and
    MI time at each of ``rates`` (pair-samples per second)."""
    out = []
    for name, c in PROJECTED.items():
        shapes = layer_shapes(c)
        exact = sum(x * y for x, y in shapes)
        sampled = sum(min(k, x) * y + x * min(k, y) for x, y in shapes)
        params = sum(math.prod(s) for s in tensor_shapes(c).values())
        block = sum(math.prod(s) for n, s in tensor_shapes(c).items() if ".layers.0." in n)
        row = {
            "model": name,
            "params": params,
            "bf16_bytes": 2 * params,
            "largest_piece_bytes": 2 * max(block, c["vocab_size"] * c["hidden_size"]),
            "kept_hidden_bytes": 2 * examples * tokens * c["hidden_size"],
            "pairs": exact,
            "pairs_sampled": sampled,
        }
        for label, rate in rates.items():
            row[f"mi_s_{label}"] = exact * samples / rate
            row[f"mi_s_{label}_k{k}"] = sampled * samples / rate
        out.append(row)
    return out


def plot(rows: list[dict], baseline: int, path: str) -> None:
    import matplotlib.figure

    fig = matplotlib.figure.Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    params = [r["params"] / 1e9 for r in rows]
    gib = 2**30
    a.plot(params, [r["checkpoint_bytes"] / gib for r in rows], "k--o", label="checkpoint (bf16)")
    a.plot(
        params,
        [(r["checkpoint_bytes"] + baseline) / gib for r in rows],
        ":",
        color="gray",
        label="model in memory + import (lower bound of score_model)",
    )
    a.plot(params, [r["score_peak_rss"] / gib for r in rows], "o-", label="score: peak RSS")
    a.plot(params, [r["prune_peak_rss"] / gib for r in rows], "s-", label="prune: peak RSS")
    a.axhline(baseline / gib, color="gray", lw=0.8, label="import only")
    a.set_xlabel("parameters (billions)")
    a.set_ylabel("GiB")
    a.set_title("memory against model size")
    a.legend(fontsize=8)
    b.plot(params, [r["score_cpu_s"] / 60 for r in rows], "o-", label="score (CPU time)")
    b.plot(params, [r["score_s"] / 60 for r in rows], "o:", label="score (wall, shared machine)")
    b.plot(params, [r["prune_cpu_s"] / 60 for r in rows], "s-", label="prune from scores (CPU)")
    b.set_xlabel("parameters (billions)")
    b.set_ylabel("minutes")
    b.set_title("time against model size")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="0.1B,0.5B,1.5B", help=f"comma list of {list(SIZES)}")
    p.add_argument("--work", help="folder for the generated checkpoints")
    p.add_argument("--shard", default="200MB", help="shard size of the generated checkpoints")
    p.add_argument("--tokens", type=int, default=32, help="tokens per noise example")
    p.add_argument("--examples", type=int, default=8, help="calibration examples")
    p.add_argument("--samples-per-layer", type=int, default=256)
    p.add_argument("--memory-budget", type=int, default=256 * 2**20)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--plot", help="write the plot here (.png)")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    p.add_argument("--smoke", action="store_true", help="tiny settings (for the test)")
    p.add_argument("--plot-only", metavar="JSON", help="only redraw --plot from a run's JSON")
    p.add_argument(
        "--revision", help="the code's revision to record (default: git of this checkout)"
    )
    args = p.parse_args()
    if args.plot_only:
        with open(args.plot_only, encoding="utf-8") as f:
            done = json.load(f)
        plot(done["rows"], done["import_only_peak_rss"], args.plot)
        return 0
    if args.work is None:
        p.error("--work is required (but with --plot-only)")
    if args.smoke:
        args.examples, args.samples_per_layer, args.tokens, args.shard = 2, 256, 8, "20KB"
    os.makedirs(args.work, exist_ok=True)
    imports = timed([sys.executable, "-c", "import causalprune_fast, transformers"])
    rows = []
    for name in args.sizes.split(","):
        row = run_size(name, args)
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
        rows.append(row)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "load_average_at_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "revision": args.revision or revision(),
        "settings": {
            k: getattr(args, k)
            for k in ("tokens", "examples", "samples_per_layer", "memory_budget", "shard")
        },  # fmt: skip
        "import_only_peak_rss": imports["peak_rss"],
        "plot": os.path.basename(args.plot) if args.plot else None,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        plot(rows, imports["peak_rss"], args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
