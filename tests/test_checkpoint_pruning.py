"""Pruning a checkpoint from shards to shards (issue 20): the written checkpoint holds exactly
the tensors prune() leaves in the model held in memory (same kept channels, same values),
loads back (from_pretrained where transformers can describe it, load_pruned always) into a
model whose outputs equal the in-memory pruned model's, its report equals prune()'s, and a
failed or interrupted prune leaves nothing under the output name."""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("torch_pruning")

import causalprune_fast as cf  # noqa: E402
from causalprune_fast.base.checkpoint_io import Checkpoint  # noqa: E402
from causalprune_fast.pruning.checkpoint_prune import load_pruned, prune_checkpoint  # noqa: E402
from causalprune_fast.scoring.score_checkpoint import score_checkpoint  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoints import MODELS, VOCAB, save  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")

T = 8
KW = dict(input_range=(0, VOCAB), examples=6, batch_size=4, samples_per_layer=700, seed=3)


def _saved(name, tmp_path):
    model = MODELS[name]()
    save(model, tmp_path / "in")
    return model, tmp_path / "in"


def _compare(pruned: torch.nn.Module, loaded: torch.nn.Module) -> None:
    a, b = pruned.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert b[k].shape == v.shape, k
        assert torch.equal(b[k], v), k
    ids = torch.arange(T)[None] % VOCAB
    with torch.no_grad():
        assert torch.equal(pruned(ids).logits, loaded(ids).logits)


CASES = [
    ("llama", 0.3, {}),  # the defaults: direction="auto" on both sides
    ("llama", 0.3, {"direction": "in"}),
    ("llama", 0.7, {}),  # hidden 9, heads 2: LlamaConfig refuses it, load_pruned builds it
    ("llama-mha", 0.45, {}),
    ("llama-tied", 0.5, {}),
    ("mistral", 0.5, {"normalizer": "gaussian"}),
    ("qwen2", 0.3, {"direction": "both"}),
    ("gpt2", 0.3, {}),
    ("gpt2", 0.6, {"direction": "out", "group_reduction": "max"}),
]


@pytest.mark.parametrize(("name", "ratio", "extra"), CASES)
def test_equals_prune_in_memory(tmp_path, name, ratio, extra):
    import transformers

    model, path = _saved(name, tmp_path)
    out = tmp_path / "out"
    report = prune_checkpoint(
        path, ratio, out, (T,), max_shard_size="4KB", progress=False, **KW, **extra
    )
    ids = torch.zeros(1, T, dtype=torch.long)
    pruned, expected = cf.prune(model, ratio, example_input=ids, progress=False, **KW, **extra)
    written = Checkpoint(out)
    assert len({i.shard for i in written.tensors.values()}) > 1  # written in several shards
    _compare(pruned, load_pruned(out))
    config = pruned.config
    if not name.startswith("llama") or config.hidden_size % config.num_attention_heads == 0:
        _compare(pruned, transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval())
    for field in ("params_before", "params_after", "channels", "groups", "achieved", "short"):
        assert getattr(report, field) == getattr(expected, field), field
    if name.startswith(("llama", "mistral")):  # prune()'s counter skips GPT-2's Conv1D and
        assert report.macs_after == expected.macs_after  # counts Qwen2's biases once
    assert (out / "generation_config.json").is_file()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".out.partial")]


def test_precomputed_scores_and_their_check(tmp_path):
    model, path = _saved("llama", tmp_path)
    scores = score_checkpoint(path, (T,), progress=False, **KW)
    report = prune_checkpoint(path, 0.3, tmp_path / "out", scores=scores, progress=False)
    assert report.rescored == 0
    ids = torch.zeros(1, T, dtype=torch.long)
    pruned, _ = cf.prune(model, 0.3, example_input=ids, progress=False, **KW)
    _compare(pruned, load_pruned(tmp_path / "out"))
    (tmp_path / "g").mkdir()
    _, other = _saved("gpt2", tmp_path / "g")
    gpt2_scores = score_checkpoint(other, (T,), progress=False, **KW)
    with pytest.raises(ValueError, match="this checkpoint does not have"):
        prune_checkpoint(path, 0.3, tmp_path / "out2", scores=gpt2_scores, progress=False)
    # With scores nothing is scored: scoring arguments are errors, not silently ignored.
    for ignored in (dict(bins=8), dict(no_such_argument=1), dict(dtype=torch.float32)):
        with pytest.raises(ValueError, match=f"no effect: {next(iter(ignored))}"):
            prune_checkpoint(path, 0.3, tmp_path / "out2", scores=scores, **ignored)
    with pytest.raises(ValueError, match=r"input_shape=\(9,\) \(the scores were made with"):
        prune_checkpoint(path, 0.3, tmp_path / "out2", (T + 1,), scores=scores)
    assert not (tmp_path / "out2").exists()


def test_interrupted_prune_leaves_nothing(tmp_path, monkeypatch):
    _, path = _saved("llama", tmp_path)
    from causalprune_fast.base import checkpoint_io

    calls = {"n": 0}
    add = checkpoint_io.CheckpointWriter.add

    def interrupted(self, name, tensor):
        calls["n"] += 1
        if calls["n"] == 12:  # after a few shards were written
            raise KeyboardInterrupt
        add(self, name, tensor)

    monkeypatch.setattr(checkpoint_io.CheckpointWriter, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(path, 0.3, tmp_path / "out", (T,), max_shard_size="4KB",
                         progress=False, **KW)  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["in"]  # no output, no temporary directory


def test_bad_input_before_anything_is_written(tmp_path):
    _, path = _saved("llama", tmp_path)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        prune_checkpoint(path, 0.3, tmp_path / "exists", (T,), **KW)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prune_checkpoint(path, 0.3, tmp_path / "no" / "out", (T,), **KW)
    for bad in (1.0, -0.1, True, "0.3"):
        with pytest.raises(ValueError, match="ratio"):
            prune_checkpoint(path, bad, tmp_path / "out", (T,), **KW)
    with pytest.raises(ValueError, match="normalizer"):
        prune_checkpoint(path, 0.3, tmp_path / "out", (T,), normalizer="nope", **KW)
    with pytest.raises(FileNotFoundError, match="config.json"):
        prune_checkpoint(tmp_path / "exists", 0.3, tmp_path / "out", (T,), **KW)
    # one output shard holds at most the whole checkpoint (not max_shard_size): twice that is
    # more than the checkpoint's size
    size = sum(os.path.getsize(path / f) for f in os.listdir(path) if f.endswith(".safetensors"))
    with pytest.raises(ValueError, match="cannot hold one output shard"):
        prune_checkpoint(path, 0.3, tmp_path / "out", (T,), max_shard_size="1MB",
                         max_memory=size, **KW)  # fmt: skip
    # A shortfall with on_shortfall="raise": llama's 4 heads in 2 groups cannot lose 90%.
    with pytest.raises(ValueError, match="short of the 90.0% asked for.*nothing was written"):
        prune_checkpoint(path, 0.9, tmp_path / "out", (T,), on_shortfall="raise",
                         progress=False, **KW)  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["exists", "in"]


def test_unknown_tensor_is_named_before_scoring(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = _saved("llama", tmp_path)
    index = Checkpoint(path)
    shard = next(iter(index.tensors.values())).shard
    tensors = load_file(str(path / shard))
    tensors["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path / shard), metadata={"format": "pt"})
    import json

    data = json.loads((path / "model.safetensors.index.json").read_text())
    data["weight_map"]["model.layers.0.extra.weight"] = shard
    (path / "model.safetensors.index.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'model.layers.0.extra.weight' is not part of the llama"):
        prune_checkpoint(path, 0.3, tmp_path / "out", (T,), **KW)
