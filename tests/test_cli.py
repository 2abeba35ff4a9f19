"""The causalprune command: score (with local weights), summary, plot, backends, errors."""

from __future__ import annotations

import pytest
import torch

import causalprune_fast as cf
from causalprune_fast.cli import main
from causalprune_fast.models import build_model, load_weights

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
        "--samples",
        "4",
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
    direct = cf.score_model(model, (3, 32, 32), samples=4, progress=False)
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
