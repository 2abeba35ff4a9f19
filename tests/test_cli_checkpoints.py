"""The command line on Hugging Face checkpoint directories (score block by block, prune shards
to shards) and ``causalprune prune`` on torchvision and timm models (written with torch.save,
loaded back); bad input is one line on stderr with exit status 2, and nothing is written."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("torch_pruning")

import causalprune_fast as cf  # noqa: E402
from causalprune_fast.cli.command import main  # noqa: E402
from causalprune_fast.cli.model_specs import build_model  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoints import MODELS, VOCAB, save  # noqa: E402
from test_cli import one_line_error  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")

T = 8
NOISE = ["--examples", "6", "--batch-size", "4", "--samples-per-layer", "700", "--seed", "3"]
KW = dict(input_range=(0, VOCAB), examples=6, batch_size=4, samples_per_layer=700, seed=3)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "llama"
    save(MODELS["llama"](), path)
    return path


def test_score_a_checkpoint_directory(llama_dir, tmp_path, capsys):
    out = tmp_path / "scores.safetensors"
    argv = ["score", str(llama_dir), "--input-shape", str(T), *NOISE, "--device", "cpu",
            "--no-progress", "--out", str(out), "--max-memory", "4GB"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in printed and f"scores written to {out}" in printed
    saved = cf.CausalScores.load(out)
    # The default noise box of a checkpoint directory is its token ids, [0, vocab_size).
    assert saved.config["input_range"] == [0, VOCAB]
    assert saved.config["model"] == str(llama_dir)
    direct = cf.score_checkpoint(llama_dir, (T,), progress=False, **KW)
    for name in direct:
        assert torch.equal(saved[name], direct[name]), name


def test_prune_a_checkpoint_directory(llama_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    argv = ["prune", str(llama_dir), "--ratio", "0.3", "--out", str(out), "--input-shape",
            str(T), *NOISE, "--device", "cpu", "--no-progress",
            "--max-shard-size", "8KB"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "channels removed: 37.5%" in printed and f"written to {out}" in printed
    loaded = cf.load_pruned(out)
    ids = torch.zeros(1, T, dtype=torch.long)
    pruned, _ = cf.prune(MODELS["llama"](), 0.3, example_input=ids, progress=False, **KW)
    for k, v in pruned.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize(
    ("spec", "shape"), [("torchvision:resnet18", "3,32,32"), ("timm:resnet10t", "3,32,32")]
)
def test_prune_torchvision_and_timm_to_a_loadable_file(spec, shape, tmp_path, capsys):
    pytest.importorskip(spec.split(":")[0])
    out = tmp_path / "pruned.pt"
    argv = ["prune", spec, "--num-classes", "4", "--ratio", "0.3", "--out", str(out),
            "--input-shape", shape, "--examples", "4", "--samples-per-layer", "512",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    torch.manual_seed(0)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "params" in printed and "weights_only=False" in printed
    loaded = torch.load(out, weights_only=False)
    torch.manual_seed(0)
    model = build_model(spec, num_classes=4)
    dims = tuple(int(d) for d in shape.split(","))
    pruned, _ = cf.prune(model, 0.3, dims, examples=4, samples_per_layer=512, progress=False)
    state = loaded.state_dict()
    assert state.keys() == pruned.state_dict().keys()
    for k, v in pruned.state_dict().items():
        assert torch.equal(state[k], v), k
    x = torch.rand(2, *dims)
    with torch.no_grad():
        assert loaded.eval()(x).shape == (2, 4)
    assert sorted(os.listdir(tmp_path)) == ["pruned.pt"]  # no temporary file left


def _copy(src, dest, skip=()):
    dest.mkdir()
    for f in os.listdir(src):
        if f not in skip:
            os.link(src / f, dest / f)
    return dest


def test_bad_checkpoints_are_one_line_errors(llama_dir, tmp_path, capsys):
    shards = sorted(f for f in os.listdir(llama_dir) if f.endswith(".safetensors"))
    no_config = _copy(llama_dir, tmp_path / "no_config", skip=("config.json",))
    missing = _copy(llama_dir, tmp_path / "missing", skip=(shards[0],))
    other = _copy(llama_dir, tmp_path / "other", skip=("config.json",))
    config = json.loads((llama_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, model_type="falcon")))
    base = ["--input-shape", str(T), *NOISE, "--device", "cpu", "--no-progress"]
    cases = [
        (["score", str(no_config)], "has no config.json"),
        (["score", str(missing)], shards[0]),
        (["score", str(other)], "model_type 'falcon' is not a family"),
        (["score", str(tmp_path / "nowhere" / "ckpt")], "does not exist"),
        (["score", str(llama_dir), "--max-memory", "1040000", "--memory-budget", "1000000"],
         "cannot hold block 'model.layers.0'"),
        (["score", str(llama_dir), "--weights", str(llama_dir / "config.json")],
         "--weights does not apply"),
        (["score", "torch.nn:Identity", "--max-memory", "1GB"], "--max-memory applies to"),
        (["prune", str(missing), "--ratio", "0.3", "--out", str(tmp_path / "o")], shards[0]),
        (["prune", str(llama_dir), "--ratio", "0.3", "--out", str(tmp_path / "no_config")],
         "already exists"),
        (["prune", str(llama_dir), "--ratio", "1.5", "--out", str(tmp_path / "o")], "ratio"),
        (["prune", str(llama_dir), "--ratio", "0.3", "--out", str(tmp_path / "o"),
          "--sequential"], "--sequential is not supported"),
        (["prune", str(llama_dir), "--ratio", "0.3", "--out", str(tmp_path / "o"),
          "--max-memory", "1040000", "--memory-budget", "1000000"],
         "cannot hold block 'model.layers.0'"),
        (["prune", "torch.nn:Identity", "--ratio", "0.3", "--out", str(tmp_path / "o"),
          "--max-shard-size", "1GB"], "--max-shard-size applies to"),
    ]  # fmt: skip
    before = sorted(os.listdir(tmp_path))
    for argv, match in cases:
        assert main(argv + base) == 2, argv
        one_line_error(capsys, match)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_prune_from_a_scores_file(llama_dir, tmp_path, capsys):
    """Score once (--out), prune from the file (--scores): the same checkpoint as pruning
    with scoring, and the report says it did not score."""
    scores = tmp_path / "s.safetensors"
    base = ["--input-shape", str(T), *NOISE, "--device", "cpu", "--no-progress"]
    assert main(["score", str(llama_dir), "--out", str(scores), *base]) == 0
    assert (
        main(["prune", str(llama_dir), "--ratio", "0.3", "--out", str(tmp_path / "a"), *base]) == 0
    )
    argv = ["prune", str(llama_dir), "--ratio", "0.3", "--out", str(tmp_path / "b"),
            "--scores", str(scores), "--input-shape", str(T), "--no-progress"]  # fmt: skip
    capsys.readouterr()
    for ignored in (NOISE[4:6], ["--input-range", "0,10"], ["--pairs-per-unit", "3"]):
        assert main(argv + ignored) == 2  # nothing is scored: an option of scoring is an error
        one_line_error(capsys, "would have no effect")
        assert not (tmp_path / "b").exists()
    assert main(argv) == 0
    assert "scored 0 time(s)" in capsys.readouterr().out
    a, b = cf.load_pruned(tmp_path / "a").state_dict(), cf.load_pruned(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("correction", [None, "none"])
def test_cli_global_pruning_has_the_defaults_of_prune(correction, tmp_path, capsys):
    """--global-pruning scores with Miller-Madow as cf.prune(global_pruning=True) does, unless
    --correction is given (``none``: the plug-in estimate)."""
    pytest.importorskip("torchvision")
    out = tmp_path / "pruned.pt"
    argv = ["prune", "torchvision:resnet18", "--num-classes", "4", "--ratio", "0.3",
            "--out", str(out), "--input-shape", "3,32,32", "--examples", "4",
            "--samples-per-layer", "512", "--device", "cpu", "--no-progress",
            "--global-pruning"]  # fmt: skip
    argv += [] if correction is None else ["--correction", correction]
    torch.manual_seed(0)
    assert main(argv) == 0
    loaded = torch.load(out, weights_only=False).state_dict()
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", num_classes=4)
    kw = {} if correction is None else {"correction": None}
    kw.update(examples=4, samples_per_layer=512, progress=False, on_shortfall="ignore")
    pruned, _ = cf.prune(model, 0.3, (3, 32, 32), global_pruning=True, **kw)
    state = pruned.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
