"""benchmarks/checkpoint_scale.py end to end on a tiny generated checkpoint (so the script
behind benchmarks/RESULTS.md's "Checkpoints larger than memory" keeps working): it generates,
scores and prunes under /usr/bin/time, writes its JSON and plot, and leaves no checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.exists("/usr/bin/time"), reason="needs /usr/bin/time")
def test_checkpoint_scale_smoke(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    work, out = tmp_path / "work", tmp_path / "scale.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "checkpoint_scale.py"), "--sizes",
           "tiny", "--smoke", "--work", str(work), "--json", str(out), "--plot",
           str(tmp_path / "scale.png")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["params"] == 106816 and row["score_peak_rss"] > 0 and row["prune_cpu_s"] > 0
    assert row["pruned_bytes"] < row["checkpoint_bytes"]
    assert (tmp_path / "scale.png").stat().st_size > 1000
    assert os.listdir(work) == []  # generated checkpoints deleted
