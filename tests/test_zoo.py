"""The fast subset of the model zoo sweep (``benchmarks/zoo.py``): the per-model function on
tiny models, in-process, with the sweep's settings.

The rule checked is the issue's "nothing is silently scored zero or dropped": every module with
weights of its own is either measured or listed unsupported with a reason (norm layers are
pruned with their channel group), and prune(0.3) runs and leaves a model that still runs and
gives outputs of the original shape.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_zoo() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_zoo_bench", os.path.join(ROOT, "benchmarks", "zoo.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


zoo = _load_zoo()


def _check_record(
    record: dict, output_shape_kept: bool = True, prune_refused: str | None = None
) -> None:
    """The rule and the stages; ``prune_refused``: a by-design refusal prune may give."""
    stages = ["build", "score", "prune", "pruned_forward"]
    if prune_refused is not None and not record["prune"]["ok"]:
        assert prune_refused in record["prune"]["error"], record["prune"]["error"]
        stages = stages[:2]
    for stage in stages:
        assert record[stage]["ok"], (stage, record[stage].get("error"), record[stage])
        assert record[stage]["seconds"] >= 0 and record[stage]["peak_rss_mb"] > 0
    assert 0 < record["measured"] <= record["layers_with_weights"]
    assert record["unaccounted"] == [], "layers with weights neither measured nor unsupported"
    assert record["measured_not_weighted"] == []
    for name, reason in record["unsupported"].items():
        assert isinstance(reason, str) and reason.strip(), name
    assert sum(record["unsupported_kinds"].values()) == len(record["unsupported"])
    if "pruned_forward" not in stages:
        return
    pruned = record["pruned"]
    if output_shape_kept:
        assert pruned["output_shape_kept"], (record["output_shape"], pruned["output_shape"])
    assert pruned["finite"]
    assert pruned["params"] <= record["params"]
    assert 0.0 <= pruned["achieved"] <= 1.0


def test_torchvision_squeezenet_small_input():
    pytest.importorskip("torchvision")
    record = zoo.run_model("torchvision:squeezenet1_1", input_shape=(3, 64, 64))
    assert record["input_shape"] == [3, 64, 64]
    assert record["layers_with_weights"] == 26 and record["norms"] == 0
    _check_record(record, output_shape_kept=False)
    assert record["pruned"]["achieved"] > 0.2
    assert record["pruned"]["params"] < record["params"]
    # squeezenet's classifier is a conv followed by ReLU, pooling and flatten: prune keeps it.
    assert record["pruned"]["output_shape_kept"], record["pruned"]


def test_prune_refusals_are_told_from_failures():
    """A by-design refusal (raised before any change; tests/test_prune_support.py) is not a
    failure in the sweep's status."""
    assert zoo.is_prune_refusal("ValueError: prune(): 16 module(s) ('stage2.0' ...): why")
    assert not zoo.is_prune_refusal(
        "ValueError: prune(): the pruned model fails on the example input (IndexError: ...)"
    )
    assert not zoo.is_prune_refusal("ZeroDivisionError: integer division or modulo by zero")


def test_hf_gpt2_tiny_config():
    """GPT-2's Conv1D layers are scored; prune either works or refuses them by name."""
    pytest.importorskip("transformers", reason="the Hugging Face case needs transformers")
    record = zoo.run_model("hf:gpt2")
    assert record["input_shape"] == [zoo.HF_TOKENS]
    assert record["input_range"] == [0.0, float(zoo.HF_VOCAB)]
    assert record["measured"] >= 8  # 2 blocks x (c_attn, c_proj, c_fc, mlp c_proj) + lm_head
    # Torch-Pruning has no Conv1D pruner: prune refuses GPT-2 with that reason, by design.
    _check_record(record, prune_refused="Conv1D")


def test_reason_kind_and_main_output():
    import torch

    kind = zoo.reason_kind(
        "Embedding is not a measured layer type (ConvNd, Linear); its own parameters "
        "(weight) are not scored"
    )
    assert kind == "Embedding is not a measured layer type"
    assert zoo.reason_kind("called 3 times per forward pass (shared)") == (
        "called N times per forward pass"
    )
    t = torch.zeros(2)
    assert zoo.main_output(({"logits": t}, 1)) is t
    assert zoo.main_output(None) is None


def test_isolated_run_is_killed_at_its_timeout():
    pytest.importorskip("torchvision")
    record = zoo.run_isolated("torchvision:squeezenet1_1", timeout=2.0, memory_gb=10.0)
    assert record["status"].startswith("timeout (2 s) in ")
    assert record["wall_s"] < 30 and record["peak_rss_mb"] > 0


def test_resume_skips_the_models_already_recorded(tmp_path):
    import json

    out = tmp_path / "zoo.json"
    done = {"model": "torchvision:squeezenet1_1", "status": "ok"}
    out.write_text(json.dumps({"models": {done["model"]: done}, "runs": []}))
    assert zoo.main(["--models", "squeezenet1_1", "--out", str(out), "--resume"]) == 0
    data = json.loads(out.read_text())
    assert data["models"] == {done["model"]: done}
    assert data["requested"] == [done["model"]] and data["runs"][-1]["models"] == []


def test_multihead_attention_is_accounted_for_by_its_measured_in_projection():
    """nn.MultiheadAttention holds the packed in-projection's weights itself and is measured
    as ``<name>.in_proj`` (q, k, v): the sweep counts it as measured, not as unaccounted."""
    tv = pytest.importorskip("torchvision")
    import torch

    import causalprune_fast as cf

    torch.manual_seed(0)
    model = tv.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()
    layers, _ = zoo.weighted_modules(model)
    scores = cf.score_model(model, (3, 32, 32), examples=4, samples_per_layer=256)
    listed = set(scores.layers) | set(scores.unsupported)
    unaccounted = [n for n in layers if n not in listed]
    extra = [n for n in scores.layers if n not in set(layers)]
    attention = [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(2)]
    assert unaccounted == attention  # what the sweep saw before it paired them
    assert extra == [f"{n}.in_proj" for n in attention]
    assert zoo.account(unaccounted, extra) == ([], [])
    # a module with nothing measured inside it stays unaccounted
    assert zoo.account(["a", "b"], ["a.in_proj", "bb.x"]) == (["b"], ["bb.x"])
