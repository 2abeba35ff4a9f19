"""Hostile and careless inputs found by an adversarial pass over the public API (issue 11):
each gets a clear error naming the argument, raised before long work, with the model and the
process left as found; CLI user errors are one line on stderr and exit status 2."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from nets import pooled_cnn

import causalprune_fast as cf
from causalprune_fast.cli.command import main
from causalprune_fast.pruning.importance import CausalImportance
from causalprune_fast.pruning.nn_prune import causal_structured

SHAPE = (3, 8, 8)
# /proc takes no new files, even from root (for whom chmod does not make a folder unwritable).
NEEDS_PROC = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc")
FAST = {"samples": 4, "progress": False}


def _net() -> nn.Module:
    return pooled_cnn(4, 4, 3)


def _state(model: nn.Module) -> tuple:
    """Everything a failed call must leave as found: parameters, buffers, flags, hooks, RNG."""
    return (
        {k: v.clone() for k, v in model.state_dict().items() if not v.is_meta},
        [m.training for m in model.modules()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        torch.get_rng_state(),
        random.getstate(),
        np.random.get_state()[1].copy(),
    )


def _assert_same(a: tuple, b: tuple) -> None:
    assert a[0].keys() == b[0].keys()
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1:3] == b[1:3]
    assert torch.equal(a[3], b[3]) and a[4] == b[4] and (a[5] == b[5]).all()


# ------------------------------------------------------------------ score_model arguments
SCORE_MODEL_CASES = [
    ({"seed": 2**70}, r"seed must be in \[-2\*\*63"),
    ({"seed": -(2**63) - 1}, r"seed must be in"),
    ({"input_range": (0.0, 1e300)}, r"input_range=.*does not fit the noise dtype torch.float32"),
    ({"input_range": (-3e38, 3e38)}, r"input_range=.*width hi - lo"),
    (
        {"input_dtype": torch.long, "input_range": (0.2, 0.8)},
        r"input_range=\(0.2, 0.8\): integer noise \(torch.int64\)",
    ),
    ({"input_dtype": torch.uint8, "input_range": (0, 300)}, r"does not fit .* torch.uint8"),
    ({"layers": lambda name: 1 / 0}, r"layers: the callable .* raised on the layer name '0'"),
    ({"example_input": torch.zeros(1, *SHAPE, dtype=torch.bool)}, r"example_input must hold real"),
    ({"example_input": torch.zeros(1, *SHAPE, dtype=torch.complex64)}, r"example_input must"),
]


@pytest.mark.parametrize("kwargs,match", SCORE_MODEL_CASES)
def test_score_model_rejects_before_running_and_leaves_state(kwargs, match):
    model = _net().train()
    before = _state(model)
    shape = None if "example_input" in kwargs else SHAPE
    with pytest.raises(ValueError, match=match):
        cf.score_model(model, shape, **FAST, **kwargs)
    _assert_same(before, _state(model))


def test_input_shape_too_large_to_allocate_names_input_shape():
    model = _net()
    before = _state(model)
    with pytest.raises(ValueError, match=r"input_shape=\(3, 1099511627776, 8\): a noise batch"):
        cf.score_model(model, (3, 2**40, 8), **FAST)
    _assert_same(before, _state(model))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_backend_is_named_before_the_model_runs():
    calls = []
    model = _net()
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(ValueError, match="backend 'cuda' is not available here"):
        cf.score_model(model, SHAPE, backend="cuda", **FAST)
    assert calls == []


def test_seed_bounds_are_torch_manual_seeds():
    cf.score_model(_net(), SHAPE, seed=2**64 - 1, layers="7", **FAST)
    cf.score_model(_net(), SHAPE, seed=-(2**63), layers="7", **FAST)


# ------------------------------------------------------------------ meta-device models
def _meta_net() -> nn.Module:
    return _net().to("meta")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: cf.score_model(m, SHAPE, **FAST),
        lambda m: cf.prune(m, 0.5, SHAPE, **FAST),
        lambda m: CausalImportance(m, SHAPE),
    ],
    ids=["score_model", "prune", "CausalImportance"],
)
def test_meta_device_model_is_a_clear_error(call):
    with pytest.raises(ValueError, match=r"model has its parameter '0.weight' on the 'meta'"):
        call(_meta_net())


def test_meta_device_scores_for_causal_structured():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="scores are on the 'meta' device"):
        causal_structured(conv, scores=torch.ones(4, device="meta"), amount=0.5)
    assert "weight" in conv._parameters  # untouched: no weight_orig / weight_mask


# ------------------------------------------------------------------ CausalImportance
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bins": 1}, r"bins must be in \[2, 256\]"),
        ({"samples": 0}, r"examples \(noise examples; old name samples\)"),
        ({"mode": "x"}, r"mode must be one of"),
        ({"layers": "zzz"}, r"layers='zzz' matches no Conv/Linear layer"),
        ({"input_range": (1, 0)}, r"input_range must be finite"),
        ({"seed": 0.5}, r"seed must be an int"),
        ({"backend": "gpu"}, r"backend must be one of"),
        ({"reduction": "avg"}, r"reduction must be one of"),
    ],
)
def test_causal_importance_checks_score_model_arguments_at_construction(kwargs, match):
    model = _net()
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        CausalImportance(model, SHAPE, **kwargs)
    _assert_same(before, _state(model))


# ------------------------------------------------------------------ files
@pytest.fixture(scope="module")
def scores() -> cf.CausalScores:
    return cf.score_model(_net(), SHAPE, **FAST)


def test_plot_with_an_unknown_extension_names_the_path(scores, tmp_path):
    target = tmp_path / "fig.xyz"
    with pytest.raises(ValueError, match=r"path .*fig.xyz.*cannot write .xyz files"):
        scores.plot(target)
    assert not target.exists()


def test_save_failure_is_an_oserror_naming_the_path(scores, monkeypatch, tmp_path):
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise safetensors.SafetensorError("I/O error: no space left")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    with pytest.raises(OSError, match=r"s.safetensors' could not be written: I/O error"):
        scores.save(tmp_path / "s.safetensors")
    assert os.listdir(tmp_path) == []


def _damage(scores, tmp_path, mutate) -> str:
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = str(tmp_path / "good.safetensors")
    scores.save(good)
    with safe_open(good, "pt") as f:
        meta = json.loads(f.metadata()["causalprune"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    mutate(meta, tensors)
    bad = str(tmp_path / "bad.safetensors")
    save_file(tensors, bad, metadata={"causalprune": json.dumps(meta)})
    return bad


def _set_incoming(value):
    def mutate(meta, tensors):
        key = "layer/0/incoming"
        tensors[key] = value(tensors[key])

    return mutate


@pytest.mark.parametrize(
    "mutate,match",
    [
        (_set_incoming(lambda t: t.view(2, 2)), r"layer '0': incoming must be a 1-D float"),
        (_set_incoming(lambda t: t.long()), r"layer '0': incoming must be a 1-D float"),
        (
            _set_incoming(lambda t: torch.full_like(t, float("nan"))),
            r"layer '0': incoming holds NaN",
        ),
        (
            lambda meta, tensors: meta["layers"]["0"].__setitem__("samples", "many"),
            r"layer '0': samples must be a non-negative int",
        ),
    ],
    ids=["2-D", "int", "nan", "samples-str"],
)
def test_damaged_scores_file_fails_on_load(scores, tmp_path, mutate, match):
    bad = _damage(scores, tmp_path, mutate)
    with pytest.raises(ValueError, match=r"is not a valid causalprune_fast scores file: " + match):
        cf.CausalScores.load(bad)


# ------------------------------------------------------------------ CLI
def _cli(*argv: str) -> subprocess.CompletedProcess:
    """The real command in a fresh process (slow: used for a few cases only)."""
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "causalprune_fast", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _one_line(stderr: str, match: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["score", "m:f", "--input-shape", "3,a"], r"^causalprune score: error: argument --input"),
        (["score", "torchvision:resnet18", "--input-shape", "3,8,8", "--seed", str(2**70)], "seed"),
    ],
)
def test_cli_subprocess_one_line_exit_2(argv, match):
    result = _cli(*argv)
    assert result.returncode == 2, result.stderr
    _one_line(result.stderr, match)


@pytest.mark.parametrize(
    "argv,match",
    [
        ([], r"^causalprune: error: the following arguments are required: command"),
        (["frobnicate"], r"invalid choice: 'frobnicate'"),
        (["score", "m:f"], r"^causalprune score: error: .*required: --input-shape"),
        (["score", "m:f", "--input-shape", "3,8,8", "--bins", "x"], r"argument --bins: invalid"),
        (["score", "m:f", "--input-shape", "3,8,8", "--mode", "x"], r"argument --mode"),
        (["summary", "f", "--direction", "x"], r"argument --direction: invalid choice"),
        (["backends", "extra"], r"unrecognized arguments: extra"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    _one_line(capsys.readouterr().err, match)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--plot", "{tmp}/fig.xyz"], r"--plot .*fig.xyz.*cannot write .xyz files"),
        (["--weights", "{tmp}"], r"--weights .* is a directory"),
        pytest.param(
            ["--out", "/proc/s.safetensors"],
            r"--out '/proc/s.safetensors': cannot write in the folder",
            marks=NEEDS_PROC,
        ),
        pytest.param(
            ["--plot", "/proc/fig.png"],
            r"--plot '/proc/fig.png': cannot write in the folder",
            marks=NEEDS_PROC,
        ),
        (["--num-classes", "0"], r"--num-classes must be a positive int, got 0"),
        (["--num-classes", "-3"], r"--num-classes must be a positive int, got -3"),
        (["--input-range", "0,1e300"], r"input_range=.*does not fit"),
        (["--device", "meta"], r"on the 'meta' device"),
    ],
)
def test_cli_user_errors_before_scoring_are_one_line_exit_2(tmp_path, capsys, extra, match):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    argv = ["score", "torchvision:resnet18", "--input-shape", "3,8,8", "--samples", "2", *extra]
    assert main(argv) == 2
    captured = capsys.readouterr()
    _one_line(captured.err, r"^causalprune: error: .*" + match)
    assert "causal scores" not in captured.out + captured.err  # no scoring started
