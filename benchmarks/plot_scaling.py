"""Plot throughput vs. size per backend from bench_scaling.py's JSON.

python benchmarks/plot_scaling.py scaling.json --out benchmarks/scaling.png
"""

from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("json")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.json) as f:
        data = json.load(f)
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if "sweep" not in e or "pair_samples_per_s" not in e:
            continue
        series.setdefault(e["sweep"], {}).setdefault(e["backend"], []).append(
            (e["size"], e["pair_samples_per_s"])
        )
    labels = {
        "samples": "samples S (64 x 64 pairs, 16 bins)",
        "pairs": "pairs (4096 samples, 16 bins)",
        "bins": "bins (16384 samples, 128 x 128 pairs)",
    }
    sweeps = [s for s in ("samples", "pairs", "bins") if s in series]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4), squeeze=False)
    machine = data["machine_info"]
    where = machine.get("gpu") or machine.get("cpu", {}).get("brand_raw", "")
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        for backend, points in sorted(series[sweep].items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=backend)
        ax.set_xscale("log", base=2 if sweep == "bins" else 10)
        ax.set_yscale("log")
        ax.set_xlabel(labels[sweep])
        ax.set_ylabel("pair-samples / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"pairwise_mi throughput ({where}, {data['datetime'][:10]})")
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
