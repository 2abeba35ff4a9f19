"""The language-model quality study's bookkeeping (``benchmarks/quality/lm_study.py``): merging
runs over seeds, models and testbeds, and its paired statistics."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

pytest.importorskip("scipy", reason="the study's statistics need scipy")
pytest.importorskip("torch_pruning", reason="torch-pruning is not installed")
pytest.importorskip("transformers", reason="transformers is not installed")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks", "quality"))

import lm_report as R  # noqa: E402
import lm_study  # noqa: E402

SETTINGS = dict(
    ratios=[0.2], train={"steps": 1}, finetune=None, corpus={"sha256": "x"}, versions={}
)


def _run(path, model_losses: dict, testbed: str, methods: list[str]) -> str:
    """A run folder: (model, seed) -> {method: loss} at ratio 0.2."""
    os.makedirs(path)
    rows = [
        dict(
            seed=seed,
            model=model,
            testbed=testbed,
            method=m,
            ratio=0.2,
            loss=loss,
            loss_ft=math.nan,
            dense_loss=1.0,
            dense_loss_ft=math.nan,
            params=10,
            dense_params=20,
            prune_seconds=0.1,
        )
        for (model, seed), losses in model_losses.items()
        for m, loss in losses.items()
    ]
    R.write_runs(os.path.join(path, "runs.csv"), rows)
    config = dict(
        SETTINGS,
        command="c",
        date="d",
        machine={},
        revision="r",
        seeds=sorted({s for _, s in model_losses}),
        models=list(dict.fromkeys(m for m, _ in model_losses)),
        testbeds=[testbed],
        methods=methods,
        ft_methods=[],
        per_seed=[{"model": m, "seed": s} for m, s in model_losses],
        total_seconds=1.0,
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


def test_merge_keeps_one_model_and_pairs_trained_and_testbed_runs(tmp_path):
    both = {("llama", 0): {"l2": 2.0, "random": 2.5}, ("gpt2", 0): {"l2": 9.0, "random": 9.0}}
    a = _run(tmp_path / "a", both, "trained", ["l2", "random"])
    b = _run(
        tmp_path / "b", {("llama", 1): {"l2": 2.2, "random": 2.4}}, "trained", ["l2", "random"]
    )
    c = _run(tmp_path / "c", {("llama", 0): {"l2": 2.1}}, "rescaled", ["l2"])
    out = str(tmp_path / "m")
    lm_study.merge([str(a), str(b), str(c)], out, ["llama"])
    rows = R.read_runs(os.path.join(out, "runs.csv"))
    assert {r["model"] for r in rows} == {"llama"} and len(rows) == 5
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["models"] == ["llama"] and config["testbeds"] == ["trained", "rescaled"]
    assert config["seeds"] == [0, 1] and all(i["model"] == "llama" for i in config["per_seed"])
    rec = {(s["testbed"], s["method"]): s for s in R.summarise(rows) if s["model"] == "llama"}
    assert rec[("trained", "random")]["loss_vs_l2_mean"] == pytest.approx((0.5 + 0.2) / 2)
    assert rec[("trained", "random")]["loss_vs_l2_worse"] == 2
    tables = open(os.path.join(out, "tables.md")).read()
    assert "`rescaled` minus `trained`" in tables  # the invariance table pairs the testbeds


def test_merge_refuses_overlapping_or_different_runs(tmp_path):
    one = {("llama", 0): {"l2": 2.0}}
    a = _run(tmp_path / "a", one, "trained", ["l2"])
    b = _run(tmp_path / "b", one, "trained", ["l2"])
    with pytest.raises(SystemExit, match="overlap"):
        lm_study.merge([str(a), str(b)], str(tmp_path / "m"))
    c = _run(tmp_path / "c", {("llama", 1): {"l2": 2.0}}, "trained", ["l2"])
    with open(os.path.join(c, "config.json")) as f:
        config = json.load(f)
    config["ratios"] = [0.3]
    with open(os.path.join(c, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(SystemExit, match="ratios"):
        lm_study.merge([str(a), str(c)], str(tmp_path / "m"))


def test_paired_statistics():
    st = R.paired([-1.0, -2.0, -3.0, 1.0])
    assert st["n"] == 4 and st["better"] == 3 and st["worse"] == 1
    assert st["mean"] == pytest.approx(-1.25)
    assert 0 < st["p_w"] <= 1 and 0 < st["p_t"] <= 1 and st["ci"] > 0
