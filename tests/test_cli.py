"""The causalprune command: score (with local weights), summary, plot, backends, errors."""

from __future__ import annotations

import pytest
import torch

import causalprune_fast as cf
from causalprune_fast.cli.command import main
from causalprune_fast.cli.model_specs import build_model, load_weights
from causalprune_fast.scoring import score as score_module

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")


def test_score_with_weights_then_summary_and_plot(tmp_path, capsys):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", num_classes=4)
    weights = tmp_path / "r18.pt"
    torch.save({"state_dict": model.state_dict()}, weights)
    out = tmp_path / "scores.safetensors"
    argv = [
        "score",
        "torchvision:resnet18",
        "--num-classes",
        "4",
        "--weights",
        str(weights),
        "--input-shape",
        "3,32,32",
        "--examples",
        "4",
        "--samples-per-layer",
        "1024",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "layer1.0.conv1" in printed and f"scores written to {out}" in printed
    saved = cf.CausalScores.load(out)
    assert saved.config["model"] == "torchvision:resnet18"
    assert saved.config["weights"] == str(weights)
    assert saved.config["examples"] == 4 and saved.config["samples_per_layer"] == 1024
    direct = cf.score_model(model, (3, 32, 32), examples=4, samples_per_layer=1024, progress=False)
    for name in direct:
        torch.testing.assert_close(saved[name], direct[name])

    assert main(["summary", str(out), "--direction", "both"]) == 0
    assert "direction=both" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    fig = tmp_path / "fig.png"
    assert main(["plot", str(out), "--out", str(fig)]) == 0
    assert fig.stat().st_size > 1000


def test_backends_command(capsys):
    assert main(["backends"]) == 0
    text = capsys.readouterr().out
    assert "reference  yes" in text and "cpu" in text


@pytest.mark.parametrize(
    "argv,match",
    [
        (["score", "resnet18", "--input-shape", "3,8,8"], "model spec must look like"),
        (["score", "torchvision:nonet", "--input-shape", "3,8,8"], "torchvision has no model"),
        (["score", "timm:nonet", "--input-shape", "3,8,8"], "timm has no model"),
        (
            ["score", "torchvision:resnet18", "--input-shape", "3,8,8", "--weights", "/nope.pt"],
            "does not exist",
        ),
    ],
)
def test_errors_exit_2_with_a_message(argv, match, capsys):
    assert main(argv + ["--no-progress"]) == 2
    assert match in capsys.readouterr().err


def test_weights_that_do_not_fit(tmp_path):
    pytest.importorskip("torchvision")
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit the model"):
        load_weights(build_model("torchvision:resnet18"), path)


# ----------------------------------------------------------------------------- user errors


def never_score(*args, **kwargs):
    raise AssertionError("scoring started although the arguments were bad")


def one_line_error(capsys, match: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("causalprune: error:"), err
    assert "Traceback" not in err
    assert match in err, err
    return err


def score_argv(*extra: str) -> list[str]:
    return ["score", "torch.nn:Identity", "--input-shape", "4", "--no-progress", *extra]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--out", "{tmp}/missing/s.safetensors"], "does not exist"),
        (["--plot", "{tmp}/missing/fig.png"], "does not exist"),
        (["--out", "{tmp}"], "is a directory"),
        (["--out", "{tmp}/scores.png"], "not as a .png image"),
        (["--layers", "("], "not a regular expression"),
        (["--device", "nonsense"], "not a torch device"),
        (["--timeout", "0"], "--timeout must be a positive"),
        (["--weights", "{tmp}/none.pt"], "does not exist"),
    ],
)
def test_score_checks_arguments_before_any_work(tmp_path, capsys, monkeypatch, extra, match):
    monkeypatch.setattr(score_module, "score_model", never_score)
    argv = score_argv(*[e.format(tmp=tmp_path) for e in extra])
    assert main(argv) == 2
    one_line_error(capsys, match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(score_module, "score_model", never_score)
    assert main(score_argv("--device", "cuda")) == 2
    one_line_error(capsys, "CUDA is not available")


def test_bad_values_caught_by_score_model_exit_2(capsys):
    assert main(score_argv("--device", "cpu", "--bins", "1")) == 2
    one_line_error(capsys, "bins must be in")


def test_factory_that_rejects_the_arguments(capsys):
    argv = ["score", "torch.nn:ReLU", "--input-shape", "4", "--num-classes", "3"]
    assert main(argv + ["--device", "cpu"]) == 2
    one_line_error(capsys, "cannot be called with")


def test_summary_and_plot_of_missing_or_invalid_files(tmp_path, capsys):
    missing = str(tmp_path / "none.safetensors")
    assert main(["summary", missing]) == 2
    one_line_error(capsys, "no scores file at")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    assert main(["summary", str(junk)]) == 2
    one_line_error(capsys, "not a valid causalprune_fast scores file")
    # plot checks --out before reading the scores
    assert main(["plot", missing, "--out", str(tmp_path / "no" / "f.png")]) == 2
    one_line_error(capsys, "does not exist")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", "torch.nn:Identity", "--input-shape", "3,0"])
    assert e.value.code == 2
    assert "expected positive sizes" in capsys.readouterr().err


def test_every_option_of_every_subcommand_has_help():
    import argparse

    from causalprune_fast.cli.command import _parser

    parser = _parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subparsers) == 1
    commands = subparsers[0].choices
    assert set(commands) == {"score", "prune", "summary", "plot", "backends"}
    missing = [
        f"{name} {action.dest}"
        for name, sub in [("causalprune", parser), *commands.items()]
        for action in sub._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []
    helps = {a.dest: a.help for a in commands["score"]._actions}
    assert "--out" not in helps and helps["out"] and helps["device"]


def test_old_and_new_sample_flags_reach_score_model(monkeypatch, capsys):
    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(score_module, "score_model", record)
    assert main(score_argv("--samples", "3", "--max-samples-per-layer", "64")) == 2
    assert (seen["samples"], seen["max_samples_per_layer"]) == (3, 64)
    assert "examples" not in seen and "samples_per_layer" not in seen
    one_line_error(capsys, "stop here")
    seen.clear()
    assert main(score_argv("--examples", "5", "--samples-per-layer", "128")) == 2
    assert (seen["examples"], seen["samples_per_layer"]) == (5, 128)
    assert "samples" not in seen and "max_samples_per_layer" not in seen
    one_line_error(capsys, "stop here")
