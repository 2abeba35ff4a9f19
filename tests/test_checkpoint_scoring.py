"""Scoring a checkpoint directory block by block (issue 20): the scores, channel groups and
head scores equal those of score_model on the same model held in memory, bit for bit on the
CPU (the same operations on the same inputs: no BLAS rounding differs), for every family the
block walker knows; bad directories and families are errors naming the file or family."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("torch_pruning")

import causalprune_fast as cf  # noqa: E402
from causalprune_fast.base.checkpoint_io import Checkpoint  # noqa: E402
from causalprune_fast.model.block_layouts import family_of  # noqa: E402
from causalprune_fast.model.channel_graph import build_groups  # noqa: E402
from causalprune_fast.model.checkpoint_model import CheckpointModel  # noqa: E402
from causalprune_fast.model.discovery import find_layers  # noqa: E402
from causalprune_fast.scoring.score_checkpoint import score_checkpoint  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoints import MODELS, VOCAB, save  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")

T = 8
# Two calibration batches (6 examples, 4 at a time) and rows that are not whole blocks of 256.
KW = dict(input_range=(0, VOCAB), examples=6, batch_size=4, samples_per_layer=700, seed=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (model in memory, its checkpoint directory)."""
    cache = {}

    def get(name):
        if name not in cache:
            model = MODELS[name]()
            path = tmp_path_factory.mktemp(name)
            save(model, path)
            cache[name] = (model, path)
        return cache[name]

    return get


def assert_same_scores(a: cf.CausalScores, b: cf.CausalScores) -> None:
    assert list(a.layers) == list(b.layers)
    for name, la in a.layers.items():
        lb = b.layers[name]
        for field in ("incoming", "outgoing", "x_ranges", "y_ranges"):
            assert torch.equal(getattr(la, field), getattr(lb, field)), (name, field)
        assert (la.response, la.path, la.samples, la.input_units) == (
            lb.response,
            lb.path,
            lb.samples,
            lb.input_units,
        ), name
        assert torch.equal(a[name], b[name]), name
    assert a.groups == b.groups
    assert a.unsupported == b.unsupported
    assert a.heads.keys() == b.heads.keys()
    for name in a.heads:
        assert torch.equal(a.heads[name], b.heads[name]), name


@pytest.mark.parametrize("name", list(MODELS))
def test_equals_score_model_in_memory(saved, name):
    model, path = saved(name)
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 2
    ids = torch.zeros(1, T, dtype=torch.long)
    rng = torch.get_rng_state()
    streamed = score_checkpoint(path, (T,), progress=False, **KW)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is not consumed
    in_memory = cf.score_model(model, example_input=ids, progress=False, **KW)
    assert_same_scores(in_memory, streamed)
    assert streamed.config["checkpoint"] == str(path)
    assert streamed.config["walk"] == "block by block"


@pytest.mark.parametrize("direction", ["out", "both"])
def test_directions_and_a_layer_filter(saved, direction):
    model, path = saved("llama")
    kw = dict(KW, direction=direction, reduction="mean", layers=r"model\.layers\.1\..*|lm_head")
    streamed = score_checkpoint(path, (T,), progress=False, **kw)
    ids = torch.zeros(1, T, dtype=torch.long)
    in_memory = cf.score_model(model, example_input=ids, progress=False, **kw)
    assert_same_scores(in_memory, streamed)


@pytest.mark.parametrize("name", ["llama", "llama-mha", "gpt2", "qwen2"])
@pytest.mark.parametrize("layers", [None, r".*\.1\..*(q_proj|o_proj|c_attn|c_fc|down_proj)"])
def test_family_groups_equal_torch_pruning_groups(saved, name, layers):
    """The family's rules give Torch-Pruning's groups (members, index maps, order)."""
    model, path = saved(name)
    ckpt = Checkpoint(path)
    family = family_of(ckpt.config)
    measured = [layer.name for layer in find_layers(model, layers)[0]]
    ids = torch.zeros(1, T, dtype=torch.long)
    expected, note = build_groups(model, ids, measured)
    assert note == "Torch-Pruning dependency graph"
    empty = CheckpointModel(ckpt).model
    assert family.groups(empty, measured) == expected


def test_group_indices_are_shared(saved):
    """The residual stream's groups hold every block's layers, each carrying every hidden
    channel: the members share one index tuple per width, so the groups' memory grows with
    the members, not with members x hidden (1 GiB for a 1.5B Llama before they were shared)."""
    _, path = saved("llama")
    ckpt = Checkpoint(path)
    empty = CheckpointModel(ckpt).model
    measured = [n for n, m in empty.named_modules() if isinstance(m, torch.nn.Linear)]
    groups = family_of(ckpt.config).groups(empty, measured)
    tuples = {}
    for members in groups.values():
        for m in members:
            if m.idxs == tuple(range(len(m.idxs))):
                assert m.root_idxs is m.idxs
                assert tuples.setdefault(len(m.idxs), m.idxs) is m.idxs
    assert len(tuples) >= 2  # hidden size and MLP width at least


def test_bfloat16_weights_and_dtype_override(tmp_path):
    """A bfloat16 checkpoint equals the model that from_pretrained loads from it (weights in
    bfloat16, rotary frequencies computed in float32, as the block walker builds them), and
    with dtype=float32 the model loaded in float32."""
    import transformers

    save(MODELS["llama"]().to(torch.bfloat16), tmp_path / "bf16")
    ids = torch.zeros(1, T, dtype=torch.long)
    for dtype in (None, torch.float32):
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            str(tmp_path / "bf16"), **({} if dtype is None else {"dtype": dtype})
        ).eval()
        assert loaded.dtype == (dtype or torch.bfloat16)
        streamed = score_checkpoint(tmp_path / "bf16", (T,), dtype=dtype, progress=False, **KW)
        in_memory = cf.score_model(loaded, example_input=ids, progress=False, **KW)
        assert_same_scores(in_memory, streamed)


# ---------------------------------------------------------------------------- bad input


def test_directory_without_config(saved, tmp_path):
    _, path = saved("llama")
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            os.link(path / f, tmp_path / f)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        score_checkpoint(tmp_path, (T,), **KW)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score_checkpoint(tmp_path / "nothing", (T,), **KW)
    with pytest.raises(NotADirectoryError, match="not a checkpoint directory"):
        score_checkpoint(path / "config.json", (T,), **KW)


def _copy(path, dest, skip=()):
    dest.mkdir()
    for f in os.listdir(path):
        if f not in skip:
            os.link(path / f, dest / f)
    return dest


def test_missing_or_broken_shard_is_named(saved, tmp_path):
    _, path = saved("llama")
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    missing = _copy(path, tmp_path / "missing", skip=(shards[1],))
    with pytest.raises(FileNotFoundError, match=shards[1]):
        score_checkpoint(missing, (T,), **KW)
    broken = _copy(path, tmp_path / "broken", skip=(shards[0],))
    (broken / shards[0]).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"{shards[0]}.*not a readable safetensors file"):
        score_checkpoint(broken, (T,), **KW)
    # An index that names a tensor its shard lacks.
    lying = _copy(path, tmp_path / "lying", skip=("model.safetensors.index.json",))
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = shards[0]
    (lying / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lacks tensor.*model.layers.0.mlp.extra.weight"):
        score_checkpoint(lying, (T,), **KW)


def test_unknown_family_is_named(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32,
        vocab_size=32, max_position_embeddings=16,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="model_type 'bert' is not a family the block walker"):
        score_checkpoint(tmp_path, (T,), **KW)


def test_max_memory_too_small_names_the_block(saved):
    _, path = saved("llama")
    budget = 400000
    # Enough for the embeddings (8 KiB) and what is kept beside them, not for a block.
    with pytest.raises(ValueError, match=r"cannot hold block 'model.layers.0': its weights take"):
        score_checkpoint(path, (T,), max_memory=budget + 40000, memory_budget=budget, **KW)
    scores = score_checkpoint(path, (T,), max_memory=budget + 10**6, memory_budget=budget, **KW)
    assert len(scores.layers) == 15
    with pytest.raises(ValueError, match="max_memory"):
        score_checkpoint(path, (T,), max_memory="a lot", **KW)


def test_bad_arguments_before_any_work(saved):
    _, path = saved("llama")
    with pytest.raises(ValueError, match="local mode only"):
        score_checkpoint(path, (T,), mode="propagated", **KW)
    with pytest.raises(ValueError, match="bins"):
        score_checkpoint(path, (T,), bins=1, **KW)
    with pytest.raises(TypeError):
        score_checkpoint(path, (T,), no_such_argument=1, **KW)
    with pytest.raises(ValueError, match="device"):
        score_checkpoint(path, (T,), device="nonsense", **KW)
    # The noise is token ids: checked against config.json before the model runs.
    kw = {k: v for k, v in KW.items() if k != "input_range"}
    with pytest.raises(ValueError, match=r"input_shape must be \(T,\)"):
        score_checkpoint(path, (2, T), **kw)
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {VOCAB}\)"):
        score_checkpoint(path, (T,), input_range=(0, VOCAB + 1), **kw)
    _, gpt2 = saved("gpt2")
    with pytest.raises(ValueError, match="positions"):
        score_checkpoint(gpt2, (10_000,), **kw)


def test_token_ids_of_the_whole_vocabulary_by_default(saved):
    """Without input_range the noise is token ids in [0, vocab_size), as the CLI's."""
    _, path = saved("llama")
    kw = {k: v for k, v in KW.items() if k != "input_range"}
    default = score_checkpoint(path, (T,), progress=False, **kw)
    explicit = score_checkpoint(path, (T,), input_range=(0, VOCAB), progress=False, **kw)
    assert default.config["input_range"] == explicit.config["input_range"]
    for name, layer in explicit.layers.items():
        assert torch.allclose(default.layers[name].incoming, layer.incoming), name


# ---------------------------------------------------------------------------- distributed


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_two_ranks_share_the_blocks(saved, tmp_path, name):
    """Two gloo ranks: each measures every other block (and the head, its turn), each layer
    whole; the result equals one process (one thread, as the workers) bit for bit."""
    import subprocess

    model, path = saved(name)
    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "scores.safetensors"
    kw = dict(KW, input_shape=[T], input_range=list(KW["input_range"]))
    env = dict(
        os.environ,
        PYTHONPATH=os.path.dirname(here) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(here, "distributed", "checkpoint_worker.py"), str(path), str(out),
         json.dumps(kw)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = cf.CausalScores.load(out)
    assert two.config["world_size"] == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = torch.zeros(1, T, dtype=torch.long)
        one = cf.score_model(model, example_input=ids, progress=False, **KW)
    finally:
        torch.set_num_threads(threads)
    assert_same_scores(one, two)
