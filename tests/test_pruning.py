"""Pruning with causal scores (issue 4): the Torch-Pruning importance, the
torch.nn.utils.prune method and the one-call prune()."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from nets import pooled_cnn
from torch.nn.utils import prune as torch_prune

import causalprune_fast as cf
from causalprune_fast.pruning.nn_prune import causal_structured

tp = pytest.importorskip("torch_pruning")
from causalprune_fast.pruning.importance import CausalImportance  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")
KW = dict(samples=16, seed=0)


def cnn() -> nn.Sequential:
    return pooled_cnn().eval()


def test_removed_channels_are_the_lowest_scoring_in_their_group():
    model = cnn()
    original = copy.deepcopy(model)
    scores = cf.score_model(original, (3, 12, 12), progress=False, **KW)
    pruned, report = cf.prune(model, 0.25, (3, 12, 12), **KW)
    keep = {}
    for name, c in (("0", 12), ("3", 10)):
        kept = int(c * (1 - 0.25))
        keep[name] = torch.topk(scores[name], kept).indices.sort().values
        assert report.channels[name] == (c, kept)
    torch.testing.assert_close(pruned[0].weight, original[0].weight[keep["0"]])
    torch.testing.assert_close(pruned[3].weight, original[3].weight[keep["3"]][:, keep["0"]])
    assert report.channels["7"] == (4, 4)  # the classifier's outputs are ignored by default
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert pruned(torch.randn(2, 3, 12, 12)).shape == (2, 4)


@pytest.mark.parametrize("direction", ["in", "out", "both"])
def test_importance_matches_scores_of_the_group_root(direction):
    model = cnn()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 12, 12))
    group = dg.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(12)))
    imp = CausalImportance(model, (3, 12, 12), direction=direction, normalizer=None, **KW)(group)
    scores = cf.score_model(model, (3, 12, 12), direction=direction, progress=False, **KW)
    torch.testing.assert_close(imp, scores["0"].float())
    subset = dg.get_pruning_group(model[0], tp.prune_conv_out_channels, [7, 2, 9])
    torch.testing.assert_close(
        CausalImportance(model, (3, 12, 12), direction=direction, normalizer=None, **KW)(subset),
        scores["0"][[7, 2, 9]].float(),
    )


def test_iterative_pruning_rescores_every_step():
    model = cnn()
    imp = CausalImportance(model, (3, 12, 12), **KW)
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(1, 3, 12, 12),
        importance=imp,
        pruning_ratio=0.5,
        iterative_steps=3,
        ignored_layers=[model[7]],
    )
    for step in range(3):
        pruner.step()
        assert imp.rescored == step + 1
    assert model[0].out_channels == 6
    model(torch.randn(1, 3, 12, 12))
    imp.scores(model)  # the last step pruned after scoring: the model changed since
    assert imp.rescored == 4
    imp.scores(model)  # unchanged model: the cached scores are reused
    assert imp.rescored == 4
    with torch.no_grad():  # an in-place update (fine-tuning) invalidates them
        model[0].weight.mul_(1.5)
    imp.scores(model)
    assert imp.rescored == 5


def test_sequential_pruning_scores_each_group_on_the_pruned_network():
    model = cnn()
    pruned, report = cf.prune(model, 0.25, (3, 12, 12), sequential=True, **KW)
    assert report.rescored == 2  # two prunable groups, each scored after the one before
    assert pruned[0].out_channels == 9 and pruned[3].out_channels == 7
    assert pruned(torch.randn(1, 3, 12, 12)).shape == (1, 4)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_prune_and_run(arch):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.get_model(arch, num_classes=5)
    pruned, report = cf.prune(model, 0.3, (3, 32, 32), examples=4, samples_per_layer=1024)
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert report.params_after < 0.8 * report.params_before


def test_vit_heads_and_mlp_neurons_prune_and_run():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=4
    )
    pruned, report = cf.prune(model, 0.25, (3, 32, 32), examples=4, samples_per_layer=1024)
    assert pruned.blocks[0].mlp.fc1.out_features == int(768 * 0.75)
    assert pruned.blocks[0].attn.qkv.out_features < 3 * 192
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_prune_errors():
    model = cnn()
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="ratio must be in"):
            cf.prune(model, ratio, (3, 12, 12))
    with pytest.raises(ValueError, match="not part of the model"):
        cf.prune(model, 0.2, (3, 12, 12), ignored_layers=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="give input_shape"):
        cf.prune(model, 0.2)
    with pytest.raises(ValueError, match="direction must be"):
        CausalImportance(model, (3, 12, 12), direction="up")


# ----------------------------------------------------------------------------- nn.utils.prune


def test_causal_structured_masks_exactly_amount_lowest_channels():
    conv = nn.Conv2d(3, 10, 3)
    scores = torch.tensor([5.0, 1.0, 9.0, 0.5, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0])
    causal_structured(conv, "weight", amount=0.3, scores=scores)
    dropped = (conv.weight_mask.sum(dim=(1, 2, 3)) == 0).nonzero().flatten().tolist()
    assert dropped == [1, 3, 7]  # the three lowest scores
    assert torch.equal(conv.weight, conv.weight_orig * conv.weight_mask)
    causal_structured(conv, "weight", amount=2, scores=scores)  # composes: 2 more channels
    dropped = (conv.weight_mask.sum(dim=(1, 2, 3)) == 0).nonzero().flatten().tolist()
    assert dropped == [1, 3, 5, 7, 9]
    torch_prune.remove(conv, "weight")
    assert not hasattr(conv, "weight_orig") and (conv.weight[[1, 3, 5, 7, 9]] == 0).all()


def test_causal_structured_with_scores_from_score_model():
    model = cnn()
    scores = cf.score_model(model, (3, 12, 12), progress=False, **KW)
    causal_structured(model[0], amount=0.5, scores=scores["0"])
    kept = (model[0].weight_mask.sum(dim=(1, 2, 3)) > 0).nonzero().flatten()
    assert set(kept.tolist()) == set(torch.topk(scores["0"], 6).indices.tolist())


def test_causal_structured_errors():
    conv = nn.Conv2d(3, 10, 3)
    with pytest.raises(ValueError, match="scores are required"):
        causal_structured(conv, amount=0.2)
    with pytest.raises(ValueError, match="10 output channels"):
        causal_structured(conv, amount=0.2, scores=torch.ones(9))
    with pytest.raises(ValueError, match="amount must be a fraction"):
        causal_structured(conv, amount=1.5, scores=torch.ones(10))
    with pytest.raises(ValueError, match="must be 1-D"):
        causal_structured(conv, amount=0.2, scores=torch.ones(10, 1))


@pytest.mark.parametrize("frozen", ["all", "first conv", "no_grad"])
def test_frozen_parameters_prune_as_trainable_ones_and_stay_frozen(frozen):
    """Torch-Pruning traces through autograd: a model frozen for inference (or pruned under
    torch.no_grad()) must lose the same channels as the trainable one, and keep its flags."""
    torchvision = pytest.importorskip("torchvision")
    kw = dict(examples=4, samples_per_layer=256, seed=0, progress=False)
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=5).eval()
    model = copy.deepcopy(reference)
    if frozen == "all":
        model.requires_grad_(False)
    elif frozen == "first conv":
        model.conv1.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cf.prune(reference, 0.3, (3, 32, 32), **kw)
    if frozen == "no_grad":
        with torch.no_grad():
            _, report = cf.prune(model, 0.3, (3, 32, 32), **kw)
    else:
        _, report = cf.prune(model, 0.3, (3, 32, 32), **kw)
    assert report.achieved > 0.25
    shapes = {n: p.shape for n, p in reference.named_parameters()}
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
