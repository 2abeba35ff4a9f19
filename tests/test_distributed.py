"""Distributed scoring on torch.distributed (issue 6): torchrun with 2 gloo ranks on the CPU
gives the scores of one process with the same seed and samples; a failing rank makes every
rank exit with an error naming it, and no result file appears."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import causalprune_fast as cf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed.models import SETTINGS, build  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` on the CPU, captured."""
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def worker(*args: str) -> subprocess.CompletedProcess:
    return torchrun(os.path.join(HERE, "distributed", "worker.py"), *args)


@pytest.mark.parametrize("model", ["cnn", "cnn-local", "block"])
@pytest.mark.parametrize("path", ["counts", "sharded"])
def test_two_ranks_equal_one_process(tmp_path, model, path):
    if model == "block":
        pytest.importorskip("timm")
    out = tmp_path / "scores.safetensors"
    # Too small for any layer's counts (and, in local mode, still enough for one tile of rows).
    sharded_budget = SETTINGS[model].get("sharded_budget", 100000)
    budget = [] if path == "counts" else ["--budget", str(sharded_budget)]
    proc = worker(model, str(out), *budget)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist_scores = cf.CausalScores.load(out)
    net, shape = build(model)
    kw = dict(SETTINGS[model]["kw"], **SETTINGS[model].get("single", {}))
    if path == "sharded":
        kw["memory_budget"] = sharded_budget
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same BLAS paths, bit-identical activations
    try:
        one = cf.score_model(net, shape, **kw)
    finally:
        torch.set_num_threads(threads)
    assert dist_scores.config["world_size"] == 2
    for name, layer in one.layers.items():
        other = dist_scores.layers[name]
        assert other.samples == layer.samples
        # Ranges come from activations that went through BLAS (one thread in every process,
        # but each rank runs its own batch shapes): equal up to float rounding. Where they are
        # bit-equal, the codes are too and the MI agrees to float64 summation order; where a
        # range moved by an ulp, a value on a bin edge may change bin, so only closeness holds.
        torch.testing.assert_close(other.x_ranges, layer.x_ranges, rtol=1e-5, atol=1e-6)
        exact = torch.equal(other.x_ranges, layer.x_ranges)
        tol = dict(rtol=0, atol=1e-6) if exact else dict(rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(other.incoming, layer.incoming, **tol)
        torch.testing.assert_close(other.outgoing, layer.outgoing, **tol)
        if layer.matrix is not None:
            torch.testing.assert_close(other.matrix, layer.matrix, **tol)


def test_failing_rank_stops_every_rank_with_its_name(tmp_path):
    out = tmp_path / "scores.safetensors"
    proc = worker("cnn", str(out), "--fail-rank", "1")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    # Both ranks raise, naming the failing rank and its layer (here already in the probe pass).
    for rank in (0, 1):
        assert (
            f"[rank{rank}]: causalprune_fast.base.distributed.DistributedScoringError: "
            "rank 1 failed" in text
        )
    assert "at layer '3'" in text and "injected failure" in text
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_under_torchrun(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "r18.safetensors"
    proc = torchrun(
        "-m",
        "causalprune_fast",
        "score",
        "torchvision:resnet18",
        "--num-classes",
        "4",
        "--input-shape",
        "3,32,32",
        "--examples",
        "4",
        "--samples-per-layer",
        "512",
        "--device",
        "cpu",
        "--distributed",
        "--no-progress",
        "--out",
        str(out),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("scores written to") == 1  # rank 0 only
    assert cf.CausalScores.load(out).config["world_size"] == 2
