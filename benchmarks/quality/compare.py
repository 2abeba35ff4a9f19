"""Side by side: a previous run of the quality study against the current one.

For every criterion present in both ``runs.csv`` files, the test accuracy averaged over seeds and
ratios under each protocol, before and now, and the change; then, per ratio, the BN-re-estimated
accuracy before and now. Criteria in only one of the files are listed by name.

    git show <commit>:benchmarks/quality/results/runs.csv > /tmp/previous_runs.csv
    python benchmarks/quality/compare.py /tmp/previous_runs.csv \\
        benchmarks/quality/results/runs.csv --out benchmarks/quality/results/compare_previous.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study  # noqa: E402


def means(rows: list[dict]) -> dict[tuple[str, float], dict[str, float]]:
    """``{(method, ratio): {protocol: mean over seeds}}``."""
    by: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        by.setdefault((r["method"], r["ratio"]), []).append(r)
    return {
        k: {p: statistics.fmean(r[p] for r in v) for p in study.PROTOCOLS} for k, v in by.items()
    }


def compare(previous: list[dict], current: list[dict]) -> str:
    """The markdown comparison of two runs' rows."""
    seeds = sorted({r["seed"] for r in current} & {r["seed"] for r in previous})
    old = means([r for r in previous if r["seed"] in seeds])
    new = means([r for r in current if r["seed"] in seeds])
    methods_old = list(dict.fromkeys(m for m, _ in old))
    methods_new = list(dict.fromkeys(m for m, _ in new))
    ratios = sorted({r for _, r in new} & {r for _, r in old})
    common = [m for m in methods_new if all((m, r) in old and (m, r) in new for r in ratios)]
    keys = [k for k in study.measured(current) if k in study.measured(previous)]
    head = "| method | " + " | ".join(f"{study.SHORT[p]}: before | now | change" for p in keys)
    lines = [
        f"Test accuracy (%) averaged over seeds {seeds} and ratios "
        f"{', '.join(f'{r:.1f}' for r in ratios)}: previous run (before) and this one (now)",
        "",
        head + " |",
        "|---" * (1 + 3 * len(keys)) + "|",
    ]
    for m in common:
        cells = []
        for p in keys:
            a = 100 * statistics.fmean(old[m, r][p] for r in ratios)
            b = 100 * statistics.fmean(new[m, r][p] for r in ratios)
            cells += [f"{a:.1f}", f"{b:.1f}", f"{b - a:+.1f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "BN re-estimated test accuracy (%) per ratio, before -> now",
        "",
        "| method | " + " | ".join(f"{r:.1f}" for r in ratios) + " |",
        "|---" * (1 + len(ratios)) + "|",
    ]
    for m in common:
        cells = [
            f"{100 * old[m, r]['acc_bn']:.1f} -> {100 * new[m, r]['acc_bn']:.1f}" for r in ratios
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    only_old = [m for m in methods_old if m not in common]
    only_new = [m for m in methods_new if m not in common]
    lines += ["", f"Only in the previous run: {only_old or 'none'}; only in this one: {only_new}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("previous", help="runs.csv of the previous run")
    p.add_argument("current", help="runs.csv of this run")
    p.add_argument("--out", help="write the markdown here (default: print only)")
    args = p.parse_args(argv)
    text = compare(study.read_runs(args.previous), study.read_runs(args.current))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
