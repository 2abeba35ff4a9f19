"""Turn pytest-benchmark JSON files into the markdown of benchmarks/RESULTS.md.

    python benchmarks/report.py --command "<the command that made the JSON>" out.json ...

Numbers are never edited by hand: rerun the benchmark and this script. Rates are
pair-samples per second (``extra_info``); ratios compare entries of one JSON file, i.e. one
run on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys

ANCHOR_PREFIX = "test_anchor_"


def _rate(bench: dict) -> float | None:
    return bench.get("extra_info", {}).get("pair_samples_per_s")


def _fmt_rate(r: float | None) -> str:
    if r is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if r >= scale:
            return f"{r / scale:.3g} {unit}/s"
    return f"{r:.3g} /s"


def _machine(info: dict) -> str:
    cpu = info.get("cpu", {})
    parts = [f"CPU: {cpu.get('brand_raw', info.get('processor', '?'))}"]
    parts.append(
        f"{cpu.get('count', '?')} logical cores, torch threads {info.get('torch_threads')}"
    )
    if info.get("gpu"):
        parts.append(f"GPU: {info['gpu']}")
    return "; ".join(parts)


def report(path: str, command: str) -> str:
    with open(path) as f:
        data = json.load(f)
    info = data["machine_info"]
    lines = [
        f"- date: {data['datetime'][:10]}",
        f"- machine: {_machine(info)}",
        f"- versions: python {info.get('python_version')}, torch {info.get('torch')}, "
        f"triton {info.get('triton')}, causalprune_fast {info.get('causalprune_fast')} "
        f"(git {info.get('git_revision')})",
        f"- backends: {info.get('backends')}",
        f"- command: `{command}`",
        "",
    ]
    groups: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        groups.setdefault(b.get("group") or "", []).append(b)
    for group, benches in groups.items():
        anchors = {b["name"]: _rate(b) for b in benches if b["name"].startswith(ANCHOR_PREFIX)}
        anchors = {k: v for k, v in anchors.items() if v}
        head = ["case", "pair-samples", "min time", "pair-samples/s"]
        head += [f"x {k[len(ANCHOR_PREFIX) :]}" for k in anchors]
        lines += [f"### {group}", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        for b in sorted(benches, key=lambda b: -(_rate(b) or 0)):
            r = _rate(b)
            row = [
                f"`{b['name']}`",
                f"{b['extra_info'].get('pair_samples', 0):.3g}",
                f"{b['stats']['min'] * 1e3:.1f} ms",
                _fmt_rate(r),
            ]
            row += [f"{r / a:.3g}" if r else "-" for a in anchors.values()]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("json", nargs="+")
    p.add_argument("--command", required=True, help="the command that produced the JSON")
    args = p.parse_args(argv)
    for path in args.json:
        sys.stdout.write(report(path, args.command) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
