"""Models whose structures Torch-Pruning 1.6.1 cannot map alone prune through
causalprune_fast.model.structures (issue 18 item 2): torchvision and timm Swin, torchvision
and timm MaxViT, LeViT, CoaT and ShuffleNetV2, in tiny configurations (tests/structure_models.py).
prune(0.3) leaves a model that runs with its output shape; with a hand-made importance, the
channels that go are the ones it chose, and every layer's weights are the original's at the kept
channels (rows and columns, through the q/k/v layout, patch merging's four copies, CoaT's shared
position-encoding convs and ShuffleNetV2's shuffle)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from structure_models import MODELS, n_params
from test_prune_trust import assert_unchanged, state_of

import causalprune_fast as cf

tp = pytest.importorskip("torch_pruning")

from causalprune_fast.model.structures import pruners  # noqa: E402
from causalprune_fast.pruning.attention_pruning import attention_pruning  # noqa: E402
from causalprune_fast.pruning.importance import CausalImportance  # noqa: E402

KW = dict(examples=2, samples_per_layer=64, progress=False)
RATIO = 0.3


def _quiet_prune(model, shape, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples per layer
        return cf.prune(model, RATIO, shape, **KW, **kwargs)


@pytest.mark.parametrize("name", list(MODELS))
def test_prune_runs_and_keeps_the_output_shape(name):
    model, shape = MODELS[name]()
    x = torch.rand(1, *shape)
    before, out = n_params(model), model(x)
    _, report = _quiet_prune(model, shape)
    assert model(x).shape == out.shape
    assert n_params(model) < before and report.params_after == n_params(model)
    assert 0.2 < report.achieved < 0.4, report.summary()
    for m in model.modules():  # the attributes the forwards read follow the weights
        kind = type(m).__name__
        if kind == "PatchMerging" or kind == "PatchMergingV2":
            assert m.dim == m.reduction.in_features // 4
        if kind == "RelativePositionalMultiHeadAttention":
            assert m.head_dim * m.n_heads == m.merge.out_features == m.to_qkv.in_features
        if kind == "FactorAttnConvRelPosEnc" and m.crpe is not None:
            assert sum(m.crpe.channel_splits) == m.proj.out_features
            assert [c.out_channels for c in m.crpe.conv_list] == m.crpe.channel_splits


class Chosen(tp.importance.Importance):
    """Scores channel ``i`` of a group of ``g`` channel groups (heads) of ``s`` channels by
    ``(i % s) * 7919 % s``: Torch-Pruning then removes the positions scored below ``n`` in
    every head (:func:`kept`), none of which it would pick by magnitude."""

    pruner = None

    def __call__(self, group):
        width = len(group[0].idxs)
        size = width // self.pruner._get_channel_groups(group)
        return ((torch.arange(width) % size) * 7919 % size).float()


def kept(width: int, heads: int = 1) -> list[int]:
    """The channels :class:`Chosen` keeps at ratio 0.3."""
    size = width // heads
    n = size - int(size * (1 - RATIO))
    return [i for i in range(width) if (i % size) * 7919 % size >= n]


def chosen_pruning(model, shape, ignored):
    plan = attention_pruning(model)
    imp = Chosen()
    x = torch.rand(1, *shape)
    pruner = plan.pruner(model, x, RATIO, importance=imp, ignored_layers=ignored)
    imp.pruner = pruner
    pruner.step()
    plan.sync(model, pruner)
    assert model(torch.rand(1, *shape)).shape[-1] == 5


def rows(t, idx):
    return t[torch.tensor(idx)]


def cols(t, idx):
    return t[:, torch.tensor(idx)]


def same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torchvision_swin_keeps_the_chosen_channels():
    """Stream channel i goes with head dim i: q, k and v rows i, C+i, 2C+i; patch merging's four
    copies of a channel go together."""
    model, shape = MODELS["torchvision_swin"]()
    old = copy.deepcopy(model)
    chosen_pruning(model, shape, [model.head])
    s0, s1, hidden = kept(12, 2), kept(24, 4), kept(48)
    same(model.features[0][0].weight, rows(old.features[0][0].weight, s0))
    a, b = model.features[1][0], old.features[1][0]
    same(a.norm1.weight, rows(b.norm1.weight, s0))
    qkv = s0 + [12 + i for i in s0] + [24 + i for i in s0]
    same(a.attn.qkv.weight, cols(rows(b.attn.qkv.weight, qkv), s0))
    same(a.attn.proj.weight, cols(rows(b.attn.proj.weight, s0), s0))
    same(a.mlp[0].weight, cols(rows(b.mlp[0].weight, hidden), s0))
    same(a.mlp[3].weight, cols(rows(b.mlp[3].weight, s0), hidden))
    merge, old_merge = model.features[2], old.features[2]
    merged = [i + k * 12 for k in range(4) for i in s0]
    same(merge.norm.weight, rows(old_merge.norm.weight, merged))
    same(merge.reduction.weight, cols(rows(old_merge.reduction.weight, s1), merged))
    same(model.head.weight, cols(old.head.weight, s1))
    assert a.attn.num_heads == 2 and a.attn.relative_position_bias_table.shape[1] == 2


def test_levit_keeps_its_attention_and_prunes_the_streams():
    model, shape = MODELS["levit"]()
    old = copy.deepcopy(model)
    chosen_pruning(model, shape, [model.head.linear, model.head_dist.linear])
    s0, s1 = kept(16), kept(24)
    attn, old_attn = model.stages[0].blocks[0].attn, old.stages[0].blocks[0].attn
    same(attn.qkv.linear.weight, cols(old_attn.qkv.linear.weight, s0))  # heads, q/k/v stay
    same(attn.proj.ln.linear.weight, rows(old_attn.proj.ln.linear.weight, s0))
    same(attn.proj.ln.bn.weight, rows(old_attn.proj.ln.bn.weight, s0))
    down, old_down = model.stages[1].downsample.attn_downsample, old.stages[1].downsample
    old_down = old_down.attn_downsample
    same(down.kv.linear.weight, cols(old_down.kv.linear.weight, s0))
    same(down.q.ln.linear.weight, cols(old_down.q.ln.linear.weight, s0))
    same(down.proj.ln.linear.weight, rows(old_down.proj.ln.linear.weight, s1))
    assert attn.attention_biases.shape == old_attn.attention_biases.shape


def test_coat_prunes_the_shared_position_encoding_once_with_the_head_dims():
    model, shape = MODELS["coat_lite"]()
    old = copy.deepcopy(model)
    chosen_pruning(model, shape, [model.head])
    s = kept(16, 8)  # 8 heads of 2 dims: one dim of every head goes
    crpe, old_crpe = model.crpe1, old.crpe1
    start = 0
    splits = zip(crpe.conv_list, old_crpe.conv_list, crpe.head_splits, strict=True)
    for conv, old_conv, heads in splits:
        local = [i - start * 2 for i in s if start * 2 <= i < (start + heads) * 2]
        same(conv.weight, rows(old_conv.weight, local))
        start += heads
    attn, old_attn = model.serial_blocks1[0].factoratt_crpe, old.serial_blocks1[0].factoratt_crpe
    qkv = s + [16 + i for i in s] + [32 + i for i in s]
    same(attn.qkv.weight, cols(rows(old_attn.qkv.weight, qkv), s))
    same(model.cpe1.proj.weight, rows(old.cpe1.proj.weight, s))
    same(model.cls_token1, old.cls_token1[..., torch.tensor(s)])


def test_coat_shared_mlp_is_scored_over_its_calls_and_pruned():
    """CoaT's parallel blocks run one MLP at three scales: it is measured on all three calls'
    rows pooled, so its hidden group is scored and pruned like the serial blocks' MLPs."""
    model, shape = MODELS["coat"]()
    mlp = model.parallel_blocks[0].mlp2
    assert mlp is model.parallel_blocks[0].mlp3 is model.parallel_blocks[0].mlp4
    hidden = mlp.fc1.out_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples per layer
        scores = cf.score_model(model, shape, **KW)
    assert scores.layers["parallel_blocks.0.mlp2.fc1"].calls == 3
    _, report = _quiet_prune(model, shape)
    assert mlp.fc1.out_features == mlp.fc2.in_features < hidden, report.summary()
    assert model(torch.rand(1, *shape)).shape == (1, 5)


def test_shufflenet_prunes_the_bottlenecks_and_keeps_the_shuffled_streams():
    """The pruned network computes what the original computes with the removed bottleneck
    channels cut off (their columns of the second 1x1 conv zeroed): only those go."""
    model, shape = MODELS["shufflenet"]()
    old = copy.deepcopy(model)
    chosen_pruning(model, shape, [model.fc])
    for name, block in model.named_modules():
        if type(block).__name__ != "InvertedResidual":
            continue
        old_block = old.get_submodule(name)
        b2, ob2 = block.branch2, old_block.branch2
        mid = kept(ob2[0].out_channels)
        stem = ob2[0].in_channels != b2[0].in_channels  # after the stem, which is pruned too
        inputs = kept(ob2[0].in_channels) if stem else list(range(ob2[0].in_channels))
        same(b2[0].weight, cols(rows(ob2[0].weight, mid), inputs))
        same(b2[3].weight, rows(ob2[3].weight, mid))  # depthwise
        same(b2[5].weight, cols(ob2[5].weight, mid))
        assert b2[5].out_channels == ob2[5].out_channels  # the stream stays
        gone = sorted(set(range(ob2[0].out_channels)) - set(mid))
        with torch.no_grad():
            ob2[5].weight[:, gone] = 0
    with torch.no_grad():  # the stem's removed channels: cut off where they are read
        gone = sorted(set(range(8)) - set(kept(8)))
        old.stage2[0].branch1[0].weight[gone] = 0
        old.stage2[0].branch1[1].bias[gone] = 0  # the depthwise conv's BatchNorm
        old.stage2[0].branch1[1].running_mean[gone] = 0
        old.stage2[0].branch2[0].weight[:, gone] = 0
    x = torch.rand(2, *shape)
    torch.testing.assert_close(model(x), old(x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["timm_swin", "torchvision_maxvit", "coat", "shufflenet"])
def test_metapruner_with_causal_importance(name):
    model, shape = MODELS[name]()
    x = torch.rand(1, *shape)
    out, before = model(x), n_params(model)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    imp = CausalImportance(model, shape, **KW)
    plan = attention_pruning(model)
    pruner = plan.pruner(model, x, RATIO, importance=imp, ignored_layers=[head])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    plan.sync(model, pruner)
    assert model(x).shape == out.shape and n_params(model) < before and imp.rescored == 1


def test_sequential_and_iterative_pruning():
    model, shape = MODELS["torchvision_swin"]()
    x = torch.rand(1, *shape)
    _, report = _quiet_prune(model, shape, sequential=True)
    assert model(x).shape == (1, 5) and report.achieved > 0.2
    model, shape = MODELS["timm_maxvit"]()
    _, report = _quiet_prune(model, shape, iterative_steps=2)
    assert model(torch.rand(1, *shape)).shape == (1, 5) and report.rescored == 2


def test_report_names_what_a_structure_keeps():
    model, shape = MODELS["shufflenet"]()
    _, report = _quiet_prune(model, shape)
    assert "stage2.0.branch2.5" in report.kept and "channel shuffle" in report.summary()
    assert "stage2.0.branch2.5" not in report.groups


def test_a_pruner_failing_half_way_leaves_the_model_as_it_was(monkeypatch):
    model, shape = MODELS["torchvision_swin"]()
    before = state_of(model)
    prune = pruners.FusedAttentionPruner.prune_out_channels
    calls = []

    def failing(self, layer, idxs):
        calls.append(layer)
        if len(calls) == 2:  # the first attention was pruned already
            raise RuntimeError("boom")
        return prune(self, layer, idxs)

    monkeypatch.setattr(pruners.FusedAttentionPruner, "prune_out_channels", failing)
    monkeypatch.setattr(pruners.FusedAttentionPruner, "prune_in_channels", failing)
    with pytest.raises(RuntimeError, match="boom"):
        _quiet_prune(model, shape)
    assert len(calls) == 2
    assert_unchanged(before, model)


def test_heads_of_different_widths_are_refused():
    model, _ = MODELS["torchvision_swin"]()
    attn = model.features[1][0].attn
    with pytest.raises(ValueError, match="heads of different widths"):
        pruners.FusedAttentionPruner("qkv", "proj", "num_heads").prune_out_channels(attn, [0])
