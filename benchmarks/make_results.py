"""Regenerate benchmarks/RESULTS.md (or a section for another machine) from fresh runs.

    python benchmarks/make_results.py --out benchmarks/RESULTS.md --json-dir benchmarks/results/cpu

Runs the kernel suite (bench_pairwise_mi.py), the whole-model suite (bench_models.py) and the
seed-stability study (stability.py), keeps their full JSON in --json-dir, and writes the
markdown. Nothing in RESULTS.md is typed by hand.

The model zoo sweep (``benchmarks/zoo.py``, hours on a CPU) is not run from here: its section
is written from ``--json-dir/zoo.json`` when that file exists, and ``--zoo-only`` rewrites just
that section of ``--out``, leaving the others as they are. Likewise the checkpoint scaling run
(``benchmarks/checkpoint_scale.py``): ``--checkpoint-only`` writes its section from
``--json-dir/checkpoint_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from local_overhead import MODELS as LOCAL_MODELS  # noqa: E402
from report import report  # noqa: E402

ANCHORS = ("numpy_sklearn_loop", "deep_ei_parts", "torch_onehot_matmul")


RERUN: set[str] = set()


def _run(cmd: list[str], name: str, output: str) -> str:
    """Run ``cmd`` (unless ``name`` is not to be rerun and ``output`` exists)."""
    if name in RERUN or not os.path.exists(output):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return " ".join(cmd)


def _machine(data: dict) -> str:
    info = data["machine_info"]
    cpu = info.get("cpu", {}).get("brand_raw", "?")
    return f"{cpu}, {info.get('torch_threads')} threads" + (
        f", {info['gpu']}" if info.get("gpu") else ""
    )


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _anchor_rates(kernels: dict) -> dict[str, float]:
    rates = {}
    for b in kernels["benchmarks"]:
        for a in ANCHORS:
            if b["name"] == f"test_anchor_{a}":
                rates[a] = b["extra_info"]["pair_samples_per_s"]
    return rates


def models_section(models: dict, kernels: dict, command: str) -> str:
    rates = _anchor_rates(kernels)
    head = [
        "model",
        "layers",
        "total",
        "forward",
        "capture",
        "binning",
        "MI",
        "pair-samples",
        "MI rate",
    ]
    head += [f"{a} (projected)" for a in rates]
    lines = [
        f"- date: {models['datetime'][:10]}; machine: {_machine(models)}",
        f"- command: `{command}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for b in models["benchmarks"]:
        e = b["extra_info"]
        st = e["stages_s"]
        row = [e["model"], str(e["layers"]), f"{e['total_s']:.1f} s"]
        row += [f"{st[k]:.1f} s" for k in ("forward", "capture", "binning", "mi")]
        row += [f"{e['pair_samples']:.3g}", f"{(e['mi_pair_samples_per_s'] or 0) / 1e9:.2f} G/s"]
        row += [f"{e['pair_samples'] / r / 3600:.3g} h" for r in rates.values()]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Projected columns: the same pair-samples at the rate each alternative reached on "
        "this machine in the kernel table above (same codes, same bins); they were not run on "
        "whole models.",
        "",
    ]
    for b in models["benchmarks"]:
        e = b["extra_info"]
        lines += [
            f"<details><summary>per-layer time and samples: {e['model']}</summary>",
            "",
            "| layer | ms | samples |",
            "|---|---|---|",
        ]
        for name, ms in e["per_layer_ms"].items():
            lines.append(f"| `{name}` | {ms} | {e['per_layer_samples'][name]} |")
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def stability_section(stab: dict, command: str) -> str:
    lines = [
        f"- command: `{command}`",
        "- settings: "
        + json.dumps({k: stab["config"][k] for k in ("samples", "max_samples_per_layer", "bins")}),
        f"- seconds per run: {', '.join(f'{s:.1f}' for s in stab['seconds_per_run'])}",
        "",
        "| direction | min Spearman over prunable layers |",
        "|---|---|",
    ]
    for d, v in stab["min_over_prunable_layers"].items():
        lines.append(f"| {d} | {v:.3f} |")
    outs = ", ".join(
        f"`{n}` {stab['spearman']['in'][n]:.3f} ({stab['samples_per_layer'][n]} samples)"
        for n in stab["model_output_layers"]
    )
    lines += [
        "",
        f"Model-output layers (classes, not prunable), direction in: {outs}.",
        "",
        "<details><summary>per layer</summary>",
        "",
        "| layer | samples | in | out | both |",
        "|---|---|---|---|---|",
    ]
    for n in stab["spearman"]["in"]:
        vals = " | ".join(f"{stab['spearman'][d][n]:.3f}" for d in ("in", "out", "both"))
        lines.append(f"| `{n}` | {stab['samples_per_layer'][n]} | {vals} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def ceiling_section(ceiling: dict, command: str) -> str:
    lines = [
        f"- date: {ceiling['datetime'][:10]}; machine: {_machine(ceiling)}",
        f"- command: `{command}`",
        "",
    ]
    for b in ceiling["benchmarks"]:
        e = b["extra_info"]
        if e.get("kind") == "cpu":
            lines += [
                f"CPU, {e['bins']} bins, S={e['samples']}, {e['pairs']} pairs: the AND + "
                "popcount micro-kernel on L1-resident masks with every thread is the ceiling; "
                "a pair-sample costs (bins - 1)^2 bit pairs.",
                "",
                "| path | ceiling (bit pairs/s) | = pair-samples/s at these bins | kernel "
                "pair-samples/s | fraction of ceiling |",
                "|---|---|---|---|---|",
            ]
            for path, v in e["paths"].items():
                lines.append(
                    f"| {path} ({v['isa']}) | {v['ceiling_bit_pairs_per_s'] / 1e9:.0f} G | "
                    f"{v['ceiling_pair_samples_per_s_at_B'] / 1e9:.2f} G | "
                    f"{v['kernel_pair_samples_per_s'] / 1e9:.2f} G | "
                    f"{v['fraction_of_ceiling']:.0%} |"
                )
        elif e.get("kind") == "gpu":
            lines.append(
                f"GPU: int8 tensor cores {e['int8_ops_per_s'] / 1e12:.0f} TOPS, copy "
                f"{e['copy_bytes_per_s'] / 1e12:.2f} TB/s"
            )
            for k, v in e["kernels"].items():
                lines.append(
                    f"- {k}: {v['pair_samples_per_s'] / 1e9:.1f} G pair-samples/s, "
                    f"{v['fraction_of_int8_peak']:.0%} of int8 peak"
                )
    lines.append("")
    return "\n".join(lines)


def _loads(data: dict) -> str:
    """The 1-minute load averages recorded after the runs, where they were."""
    loads = [r["load"] for r in data["runs"] if "load" in r]
    return f" (load average {min(loads):.1f} to {max(loads):.1f})" if loads else ""


def _seconds(value: float | None) -> str:
    """A time in seconds, or '-' where a run did not record it."""
    return "-" if value is None else f"{value:.1f} s"


def local_overhead_section(data: dict) -> str:
    """Local mode's total time against its MI time, before and after, from
    local_overhead.py's JSON (one run, side by side)."""
    dates = sorted(r["date"] for r in data["runs"])
    together = {bool(r.get("parallel")) for r in data["runs"]}
    how = {True: "at the same time", False: "one after the other"}
    how = (
        how[together.pop()] if len(together) == 1 else f"{how[False]} ({how[True]} with --parallel)"
    )
    if data.get("idle"):  # set by hand where nothing else ran: the loads are the runs' own
        load = f"No other job ran during the measurement{_loads(data)}"
    else:
        load = (
            f"The machine was shared with other jobs running at the same time{_loads(data)}, "
            "so absolute times are inflated and noisy"
        )
    lines = [
        f"- date: {dates[0]} to {dates[-1]}; machine: {data['cpu']}, {data['cores']} logical "
        f"cores, torch threads {data['torch_threads']}. {load}: compare the ratios of one "
        f"model's before and after rows at the same settings, which ran {how}",
        "- commands: " + "; ".join(f"`{c}`" for c in data["commands"]),
        *([f"- {data['note']}"] if data.get("note") else []),
        "",
        "| model | settings | code | total | forward | of which calibration | capture | binning "
        "| MI | other | total / MI | (total - other) / MI | samples per layer | paths |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        st = r["stages_s"]
        samples = f"{r['samples_min']}" + (
            f"-{r['samples_max']}" if r["samples_max"] != r["samples_min"] else ""
        )
        settings = ", ".join(f"{k}={v}" for k, v in r.get("settings", {}).items()) or "defaults"
        lines.append(
            f"| {r['model']} | {settings} | {r['tree']} ({r['commit']}) | {r['total_s']:.1f} s | "
            f"{st['forward']:.1f} s | {_seconds(r.get('calibration_s'))} | "
            + " | ".join(f"{st[k]:.1f} s" for k in ("capture", "binning", "mi"))
            + f" | {r['other_s']:.1f} s | {r['total_s'] / st['mi']:.2f} | "
            f"{(r['total_s'] - r['other_s']) / st['mi']:.2f} | {samples} | "
            f"{', '.join(p for p in r['paths'] if p != 'None') or '-'} |"
        )
    done = {(r["model"], r["tree"]) for r in data["runs"]}
    missing = [m for m in LOCAL_MODELS if not {(m, "before"), (m, "after")} <= done]
    if missing:
        lines += ["", f"Not measured in this run (time ran out): {', '.join(missing)}."]
    lines += [
        "",
        "forward: the calibration pass (its forward passes and hooks) plus each layer's own "
        "noise rows and layer run; capture: the response and the sample rows taken from full "
        "tensors; other: the probe pass, the channel graph (with its imports) and what is not "
        "timed, a fixed cost per call that weighs more where the settings are smaller than "
        "the defaults; (total - other) / MI: the overhead of the per-layer work alone.",
        "",
    ]
    return "\n".join(lines)


LOCAL_TITLE = "## Local mode: whole-model time against MI time, before and after"
ZOO_TITLE = "## Model zoo sweep: coverage, time, memory and prune(0.3)"


def _cell(text: object) -> str:
    """Table-safe text."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _zoo_prune(r: dict) -> str:
    prune = r.get("prune")
    if prune is None:
        return "not run"
    if not prune.get("ok"):
        return f"error: {_cell(prune.get('error', '?'))}"
    p = r.get("pruned", {})
    return f"ok, {p.get('achieved', 0):.0%} removed, params {r['params'] / 1e6:.3g}M -> " + (
        f"{p.get('params', 0) / 1e6:.3g}M"
    )


def _zoo_forward(r: dict) -> str:
    fwd = r.get("pruned_forward")
    if fwd is None:
        return "not run"
    if not fwd.get("ok"):
        return f"error: {_cell(fwd.get('error', '?'))}"
    p = r["pruned"]
    if not p.get("output_shape_kept"):
        return f"runs, but output {r.get('output_shape')} -> {p.get('output_shape')}"
    return "yes" if p.get("finite", True) else "yes, non-finite outputs"


def zoo_section(zoo: dict, json_path: str) -> str:
    """The "Model zoo sweep" section from ``benchmarks/zoo.py``'s JSON."""
    models = zoo["models"]
    runs = zoo.get("runs", [])
    last = runs[-1] if runs else {}
    settings = zoo.get("settings", {})
    ok_score = [k for k, r in models.items() if r.get("score", {}).get("ok")]
    complete = [k for k in ok_score if not models[k].get("unaccounted")]
    ok_prune = [k for k, r in models.items() if r.get("prune", {}).get("ok")]
    ok_fwd = [
        k
        for k, r in models.items()
        if r.get("pruned_forward", {}).get("ok") and r["pruned"].get("output_shape_kept")
    ]
    lines = [
        f"- machine: {last.get('cpu', '?')}, {last.get('cores', '?')} cores, "
        f"{last.get('memory_gb', '?')} GB (shared), torch threads {last.get('torch_threads')}",
        f"- versions: {json.dumps(last.get('versions', {}))}",
        f"- settings: {json.dumps(settings)}; random init; one model at a time, each in its own "
        "subprocess under an address-space cap (RLIMIT_AS) and a wall-clock timeout",
        "- runs (the JSON accumulates them with `--resume`):",
    ]
    for run in runs:
        lines.append(
            f"  - {run['date']}, revision {run.get('git_revision', '?')}, "
            f"{len(run.get('models', []))} models: `{run['command']}`"
        )
    lines += [
        f"- full records (every unsupported module with its reason, tracebacks, warnings): "
        f"`{json_path}`",
        "",
        f"Of {len(zoo.get('requested', models))} models requested, {len(models)} were run: "
        f"{len(ok_score)} scored ({len(complete)} with every layer with weights either measured "
        f"or listed unsupported with a reason), prune(0.3) ran on {len(ok_prune)}, and "
        f"{len(ok_fwd)} pruned models ran with outputs of the original shape.",
        "",
        "Columns: *measured / with weights*: layers in the CausalScores / modules with "
        "parameters of their own, norms (BatchNorm, LayerNorm, GroupNorm, RMSNorm, PReLU: "
        "pruned with their channel group) counted apart in *norms*; *unaccounted*: layers with "
        "weights neither measured nor listed unsupported (the rule is that there are none); "
        "*peak RSS*: the worker process's maximum resident memory (build, score, prune and "
        "rerun together).",
        "",
        "| model | input | params | measured / with weights | norms | unaccounted | "
        "unsupported (count x kind) | score s | prune s | peak RSS | prune(0.3) | "
        "pruned model runs | status | revision |",
        "|" + "---|" * 14,
    ]
    for key in sorted(models, key=lambda k: (k.split(":")[0], k)):
        r = models[key]
        score = r.get("score", {})
        kinds = "; ".join(
            f"{n} x {_cell(kind)}" for kind, n in sorted(r.get("unsupported_kinds", {}).items())
        )
        if not score:
            measured, kinds, unacc = "not finished", "-", "-"
        elif not score.get("ok"):
            measured = f"score error: {_cell(score.get('error', '?'))}"
            kinds = unacc = "-"
        else:
            measured = f"{r['measured']} / {r['layers_with_weights']}"
            unacc = str(len(r.get("unaccounted", []))) if r.get("unaccounted") else "0"
        shape = "x".join(map(str, r.get("input_shape", []))) or "?"
        if key.startswith("hf:") and r.get("input_shape"):
            shape = f"{shape} tokens"
        row = [
            f"`{key}`",
            shape,
            f"{r['params'] / 1e6:.3g}M" if "params" in r else "?",
            measured,
            str(r.get("norms", "?")),
            unacc,
            kinds or "none",
            f"{score['seconds']:.1f}" if "seconds" in score else "-",
            f"{r['prune']['seconds']:.1f}" if "prune" in r else "-",
            f"{r.get('peak_rss_mb', 0) / 1024:.2f} GB",
            _zoo_prune(r),
            _zoo_forward(r),
            _cell(r.get("status", "?")),
            r.get("revision", "?"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    not_run = [k for k in zoo.get("requested", []) if k not in models]
    if not_run:
        reasons = zoo.get("not_run", {})
        by_reason: dict[str, list[str]] = {}
        for k in not_run:
            by_reason.setdefault(reasons.get(k, "not reached before the sweep stopped"), [])
            by_reason[reasons.get(k, "not reached before the sweep stopped")].append(k)
        lines += [
            "",
            f"Not run ({len(not_run)} models; `python benchmarks/zoo.py --models all --out "
            f"{json_path} --resume` sweeps them and keeps the records above):",
            "",
        ]
        for reason, keys in by_reason.items():
            lines.append(f"- {reason}: " + ", ".join(f"`{k}`" for k in keys))
    lines.append("")
    return "\n".join(lines)


CHECKPOINT_TITLE = "## Checkpoints larger than memory: score and prune block by block"
# Pair-samples per second the projection assumes for one GPU: NOT measured here (no GPU was
# lent to the run that wrote this): 30% of an H100's dense int8 tensor-core peak (1979 TOPS,
# about 990e12 multiply-adds/s) at 256 int8 multiply-adds per pair-sample (16 bins,
# bench_ceiling.py's cost model of the fused kernels).
GPU_ASSUMED_RATE = 0.3 * 990e12 / 256


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def checkpoint_section(data: dict, json_path: str, kernels: dict | None) -> str:
    """The "Checkpoints larger than memory" section from checkpoint_scale.py's JSON."""
    from checkpoint_scale import projection

    st = data["settings"]
    lines = [
        f"- date: {data['date']}; machine: {data['machine']}, torch threads "
        f"{data['torch_threads']}; load average at the end {data['load_average_at_end']}: "
        "the machine was shared with other jobs, so wall times are inflated; CPU times "
        "(user + system of the child, /usr/bin/time) are the fairer measure",
        f"- command: `python {data['command']}` at revision {data.get('revision', '?')} "
        f"(raw JSON: `{json_path}`)",
        f"- settings (reduced from the defaults to keep the CPU runs short): input "
        f"{st['tokens']} tokens, examples {st['examples']}, samples_per_layer "
        f"{st['samples_per_layer']}, memory_budget {_gib(st['memory_budget'])}, shards of "
        f"{st['shard']}; random weights (normal, std 0.02), bfloat16, Llama-style with "
        "grouped-query attention and an untied 32000-token head; each checkpoint generated on "
        "the fly, scored (`causalprune score DIR ... --out scores`), pruned at 0.3 from those "
        "scores (`causalprune prune DIR --scores scores ...`), then deleted",
        f"- a child that only imports causalprune_fast and transformers peaks at "
        f"{_gib(data['import_only_peak_rss'])} resident: the floor of every run",
        "",
        "| model | parameters | checkpoint | largest piece | score: CPU / wall | score: peak RSS "
        "| score: peak RSS above the import floor | walk's memory model | prune from scores: "
        "CPU / wall | prune: peak RSS | pruned checkpoint |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    floor = data["import_only_peak_rss"]
    within = []  # sizes whose peak RSS above the import floor stays within the memory model
    for r in data["rows"]:
        piece = max(r["block_bytes"], r["head_bytes"])
        hidden = 2 * st["examples"] * st["tokens"] * r["config"]["hidden_size"]  # bfloat16
        lines.append(
            f"| {r['size']} | {r['params'] / 1e9:.3f} B | {_gib(r['checkpoint_bytes'])} | "
            f"{_gib(piece)} | {r['score_cpu_s']:.0f} s / {r['score_s']:.0f} s | "
            f"{_gib(r['score_peak_rss'])} | {_gib(r['score_peak_rss'] - floor)} | "
            f"{_gib(piece + hidden + st['memory_budget'])} | {r['prune_cpu_s']:.0f} s / "
            f"{r['prune_s']:.0f} s | {_gib(r['prune_peak_rss'])} | {_gib(r['pruned_bytes'])} |"
        )
        if r["score_peak_rss"] - floor <= piece + hidden + st["memory_budget"]:
            within.append(r["size"])
    lines += [
        "",
        "The walk's memory model (docs/method.md section 2.5): the largest piece plus the kept "
        "hidden states plus memory_budget, without one batch's activations inside a piece.",
    ]
    png = data.get("plot")
    if png is None and os.path.exists(os.path.join(HERE, "checkpoint-scale-cpu.png")):
        png = "checkpoint-scale-cpu.png"  # runs that did not record their plot's name
    if png:
        lines += ["", f"![time and memory against model size]({png})"]
    last = data["rows"][-1]
    e2e = last["pairs"] * st["samples_per_layer"] / last["score_cpu_s"]
    rates = {"e2e": e2e, "gpu": GPU_ASSUMED_RATE}
    kernel, kernel_when = None, ""
    if kernels is not None:
        for b in kernels.get("benchmarks", []):
            if b["name"] == "test_cpu_cpp_codes[native]":
                kernel = b["extra_info"]["pair_samples"] / b["stats"]["min"]
                rates["kernel"] = kernel
                kernel_when = (
                    f", {str(kernels.get('datetime', '?'))[:10]}, revision "
                    f"{kernels.get('machine_info', {}).get('git_revision', '?')}, kernels.json"
                )
    rows = projection(rates, 16384, 64, 64, 64)
    lines += [
        "",
        "### Projection to 8B and 70B on paper (not measured)",
        "",
        "Llama 3 8B and 70B layouts at the defaults (samples_per_layer 16384, 64 calibration "
        "examples of 64 tokens), bfloat16. Nothing in this table was run at 8B or 70B.",
        "",
        "- Measured on this machine: the CPU kernel's rate (`pairwise_mi`, native path"
        + (f", {kernel / 1e9:.2f} G pair-samples/s{kernel_when}" if kernel else "")
        + f"); the whole `causalprune score` run above at {last['size']} ({e2e / 1e9:.2f} G "
        "pair-samples per CPU second, everything included: at its samples_per_layer of "
        f"{st['samples_per_layer']} the forward passes and the reading weigh more than at "
        "16384, so that column overstates the time); the walk's peak memory against model "
        "size (the table above).",
        "- Assumed: the MI work is `pairs x samples_per_layer` pair-samples and its time is "
        "proportional to it (docs/method.md section 7.1); one GPU computes "
        f"{GPU_ASSUMED_RATE / 1e12:.2f} T pair-samples/s (30% of an H100's dense int8 "
        "tensor-core peak at 256 int8 multiply-adds per pair-sample; no GPU was available to "
        "measure it), and the GPU column counts the MI only (not reading the checkpoint, once, "
        "nor the forward passes); memory on the device is the largest piece (a block, or the "
        "128256-token head) plus the kept hidden states plus memory_budget, the walk's memory "
        "model (docs/method.md section 2.5): the CPU runs above stayed within it at "
        + (", ".join(within) if within else "none of the sizes")
        + f" (of {', '.join(r['size'] for r in data['rows'])}; their peak RSS above the "
        "import floor), nothing larger was run.",
        "- `pairs_per_unit=64` columns: the sampled mode's pairs (docs/method.md section 5.4).",
        "",
        "| model | parameters | checkpoint | largest piece | kept hidden states | pairs | MI: "
        "CPU kernel | MI: whole run, this CPU | MI: one GPU (assumed rate) | pairs_per_unit=64: "
        "pairs / GPU time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = f"{r['mi_s_kernel'] / 3600:.1f} h" if "mi_s_kernel" in r else "-"
        lines.append(
            f"| {r['model']} | {r['params'] / 1e9:.2f} B | {_gib(r['bf16_bytes'])} | "
            f"{_gib(r['largest_piece_bytes'])} | {_gib(r['kept_hidden_bytes'])} | "
            f"{r['pairs'] / 1e9:.2f} G | {cpu} | {r['mi_s_e2e'] / 3600:.1f} h | "
            f"{r['mi_s_gpu'] / 60:.1f} min | {r['pairs_sampled'] / 1e9:.3f} G / "
            f"{r['mi_s_gpu_k64']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def write_checkpoint_section(out: str, json_dir: str) -> None:
    """Put the checkpoint section from ``json_dir/checkpoint_scale.json`` into ``out``."""
    path = os.path.join(json_dir, "checkpoint_scale.json")
    data = _load(path)
    kj = os.path.join(json_dir, "kernels.json")
    kernels = _load(kj) if os.path.exists(kj) else None
    with open(out) as f:
        text = f.read()
    with open(out, "w") as f:
        f.write(replace_section(text, CHECKPOINT_TITLE, checkpoint_section(data, path, kernels)))


def replace_section(text: str, title: str, body: str) -> str:
    """``text`` with the section headed ``title`` (up to the next ``## `` heading) replaced by
    ``title`` + ``body``, or with it appended; every other section is left as it was."""
    block = f"{title}\n\n{body}"
    start = text.find(title + "\n")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + block
    end = text.find("\n## ", start + len(title))
    return text[:start] + block + ("" if end < 0 else text[end:])


def write_zoo_section(out: str, json_dir: str) -> None:
    """Put the zoo section from ``json_dir/zoo.json`` into the markdown file ``out``."""
    path = os.path.join(json_dir, "zoo.json")
    with open(path) as f:
        zoo = json.load(f)
    with open(out) as f:
        text = f.read()
    with open(out, "w") as f:
        f.write(replace_section(text, ZOO_TITLE, zoo_section(zoo, path)))


def write_local_section(out: str, json_dir: str) -> None:
    """Put the local-mode overhead section from ``json_dir/local_overhead.json`` into the
    markdown file ``out``."""
    data = _load(os.path.join(json_dir, "local_overhead.json"))
    with open(out) as f:
        text = f.read()
    with open(out, "w") as f:
        f.write(replace_section(text, LOCAL_TITLE, local_overhead_section(data)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="markdown file to write")
    p.add_argument("--json-dir", required=True, help="where to keep the raw JSON")
    p.add_argument("--title", default="CPU")
    p.add_argument(
        "--rerun",
        default="kernels,models,stability,ceiling,scaling,local",
        help="comma-separated parts to run again; the others reuse their JSON in --json-dir",
    )
    p.add_argument(
        "--before",
        help="for the local part: a checkout of the code before the change, extension built",
    )
    p.add_argument(
        "--zoo-only",
        action="store_true",
        help="only (re)write the model zoo section of --out from --json-dir/zoo.json "
        "(the sweep itself is `python benchmarks/zoo.py`); the other sections stay as they are",
    )
    p.add_argument(
        "--checkpoint-only",
        action="store_true",
        help="only (re)write the checkpoint section of --out from "
        "--json-dir/checkpoint_scale.json (`python benchmarks/checkpoint_scale.py`)",
    )
    p.add_argument(
        "--local-only",
        action="store_true",
        help="only (re)write the local-mode overhead section of --out from "
        "--json-dir/local_overhead.json (`python benchmarks/local_overhead.py`); the other "
        "sections stay as they are",
    )
    args = p.parse_args(argv)
    if args.checkpoint_only:
        write_checkpoint_section(args.out, args.json_dir)
        print(f"wrote the checkpoint section of {args.out}")
        return 0
    if args.local_only:
        write_local_section(args.out, args.json_dir)
        print(f"wrote the local-mode overhead section of {args.out}")
        return 0
    if args.zoo_only:
        write_zoo_section(args.out, args.json_dir)
        print(f"wrote the zoo section of {args.out}")
        return 0
    RERUN.update(args.rerun.split(","))
    os.makedirs(args.json_dir, exist_ok=True)
    py = sys.executable
    kj, mj, sj = (
        os.path.join(args.json_dir, f) for f in ("kernels.json", "models.json", "stability.json")
    )
    bench = [py, "-m", "pytest", "-q"]
    kcmd = _run(
        [*bench, "benchmarks/bench_pairwise_mi.py", f"--benchmark-json={kj}"], "kernels", kj
    )
    mcmd = _run([*bench, "benchmarks/bench_models.py", f"--benchmark-json={mj}"], "models", mj)
    scmd = _run([py, "benchmarks/stability.py", "--json", sj], "stability", sj)
    cj, gj = (
        os.path.join(args.json_dir, "ceiling.json"),
        os.path.join(args.json_dir, "scaling.json"),
    )
    ccmd = _run([*bench, "benchmarks/bench_ceiling.py", f"--benchmark-json={cj}"], "ceiling", cj)
    gcmd = _run([*bench, "benchmarks/bench_scaling.py", f"--benchmark-json={gj}"], "scaling", gj)
    lj = os.path.join(args.json_dir, "local_overhead.json")
    before = ["--before", args.before] if args.before else []
    _run([py, "benchmarks/local_overhead.py", *before, "--json", lj], "local", lj)
    png = os.path.join(os.path.dirname(args.out), f"scaling-{args.title.lower()}.png")
    pcmd = _run([py, "benchmarks/plot_scaling.py", gj, "--out", png], "scaling", png)
    with open(kj) as f:
        kernels = json.load(f)
    with open(mj) as f:
        models = json.load(f)
    with open(sj) as f:
        stab = json.load(f)
    text = [
        f"# Benchmark results ({args.title})",
        "",
        "Generated by `python benchmarks/make_results.py` "
        f"(`--out {args.out} --json-dir {args.json_dir}`, last with `--rerun {args.rerun}`; "
        "the other parts reuse their JSON, each section names its own run's date and command); "
        f"raw pytest-benchmark JSON in `{args.json_dir}`. Do not edit by hand: rerun.",
        "",
        "## pairwise_mi: backends beside the alternatives (same codes)",
        "",
        report(kj, kcmd),
        "## score_model on whole networks (default settings, random init)",
        "",
        models_section(models, kernels, mcmd),
        "## Ranking stability: two seeds, resnet18, 224 x 224, default settings",
        "",
        stability_section(stab, scmd),
        "## Ceilings: how close the kernels get to the machine's limit",
        "",
        ceiling_section(_load(cj), ccmd),
        LOCAL_TITLE,
        "",
        local_overhead_section(_load(lj)),
        "## Scaling: throughput as the work grows",
        "",
        f"![throughput vs size]({os.path.basename(png)}) (`{pcmd}`)",
        "",
        report(gj, gcmd),
    ]
    zj = os.path.join(args.json_dir, "zoo.json")
    if os.path.exists(zj):  # the sweep is run by benchmarks/zoo.py, not from here (hours)
        with open(zj) as f:
            text += [ZOO_TITLE, "", zoo_section(json.load(f), zj)]
    xj = os.path.join(args.json_dir, "checkpoint_scale.json")
    if os.path.exists(xj):  # run by benchmarks/checkpoint_scale.py, not from here
        text += [CHECKPOINT_TITLE, "", checkpoint_section(_load(xj), xj, kernels)]
    with open(args.out, "w") as f:
        f.write("\n".join(text))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
