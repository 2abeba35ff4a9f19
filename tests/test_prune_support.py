"""prune() on models Torch-Pruning 1.6.1 cannot prune (issue 10, the zoo sweep's failures):
a ValueError naming the modules and why, and the model left as found. Known structures are
refused before any work (refusals.check_structures); without that list, the generic
checks still refuse them: a dependency graph that cannot be built or groups that cannot be
found within bounds (check_channel_groups, before Torch-Pruning's own search), or a pruned
model that fails on the example input (the model is put back)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from test_prune_trust import assert_unchanged, state_of

import causalprune_fast as cf
import causalprune_fast.model.channel_graph as cg
from causalprune_fast.pruning import prune_model, refusals

pytest.importorskip("torch_pruning")
KW = dict(examples=2, samples_per_layer=64, progress=False)


def shufflenet() -> nn.Module:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return tv.models.shufflenet_v2_x0_5(num_classes=10).eval()


def timm_swin() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=28,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 1),
        num_classes=10,
    ).eval()


def timm_maxvit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "maxvit_tiny_tf_224", img_size=64, embed_dim=(32, 32), depths=(1, 1), num_classes=10
    ).eval()


def tv_swin() -> nn.Module:
    from test_channel_graph import tiny_swin

    pytest.importorskip("torchvision")
    return tiny_swin()


def levit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("levit_128s", img_size=64, num_classes=10).eval()


def coat() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("coat_lite_tiny", num_classes=10).eval()


@pytest.mark.parametrize(
    "make, shape, module, reason",
    [
        (shufflenet, (3, 64, 64), "stage2.0", "channel shuffle"),
        (timm_swin, (3, 28, 28), "layers.0.blocks.0.attn", "window attention"),
        (tv_swin, (3, 16, 16), "features.1.0.attn", "window attention"),
        (timm_maxvit, (3, 64, 64), "stages.0.blocks.0.attn_block", "window attention"),
        (levit, (3, 64, 64), "stages.0.blocks.0.attn", "LeViT attention"),
        (coat, (3, 224, 224), "crpe1", "CoaT"),
    ],
)
def test_known_structures_are_refused_before_any_work(monkeypatch, make, shape, module, reason):
    model = make()
    before = state_of(model)

    def no_forward(*args, **kwargs):
        raise AssertionError("the refusal must come before any forward pass")

    monkeypatch.setattr(cg, "find_groups", no_forward)
    monkeypatch.setattr(prune_model, "model_output_layers", no_forward)
    with pytest.raises(ValueError, match=reason) as e:
        cf.prune(model, 0.3, shape, **KW)
    assert f"'{module}'" in str(e.value) and "not changed" in str(e.value)
    assert_unchanged(before, model)


def test_a_graph_torch_pruning_cannot_build_is_refused_naming_the_error(monkeypatch):
    monkeypatch.setattr(refusals, "UNSUPPORTED", {})  # the generic check alone
    model = shufflenet()
    before = state_of(model)
    with pytest.raises(ValueError, match="cannot build the dependency graph.*ZeroDivision"):
        cf.prune(model, 0.3, (3, 64, 64), **KW)
    assert_unchanged(before, model)


def test_groups_beyond_the_bounds_are_refused_before_torch_pruning_searches_them(monkeypatch):
    import torch_pruning as tp

    from causalprune_fast.base.memory import default_memory_budget

    monkeypatch.setattr(refusals, "UNSUPPORTED", {})
    # An index budget of 2e4 entries: the same refusal as the default's, found sooner (one
    # qkv channel of MaxViT needs more than the default's 3.5e5 entries even at this size).
    monkeypatch.setattr(cg, "BYTES_PER_INDEX", default_memory_budget() // 20_000)
    model = timm_maxvit()
    before = state_of(model)

    def searched(*args, **kwargs):
        raise AssertionError("Torch-Pruning's unbounded group search must not run")

    monkeypatch.setattr(tp.DependencyGraph, "get_all_groups", searched)
    with pytest.raises(ValueError, match="within the memory and time bounds") as e:
        cf.prune(model, 0.3, (3, 64, 64), **KW)
    assert "'stages.0.blocks.0.attn_block.attn.qkv'" in str(e.value)
    assert_unchanged(before, model)


def test_a_pruned_model_that_no_longer_runs_is_put_back(monkeypatch):
    monkeypatch.setattr(refusals, "UNSUPPORTED", {})
    model = timm_swin()  # Torch-Pruning leaves LayerNorms and Linears of different widths
    before = state_of(model)
    with pytest.raises(ValueError, match="pruned model fails on the example input"):
        cf.prune(model, 0.3, (3, 28, 28), **KW)
    assert_unchanged(before, model)
    assert model(torch.rand(1, 3, 28, 28)).shape == (1, 10)


def test_ordinary_models_pass_the_group_check():
    from nets import pooled_cnn

    model = pooled_cnn().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    found = cg.find_groups(model, torch.rand(1, 3, 8, 8), names)
    assert not found.uncoupled and not found.graph_error
    refusals.check_channel_groups(model, torch.rand(1, 3, 8, 8), names)  # no error
