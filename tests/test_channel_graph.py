"""Channel scores from producers and consumers (docs/method.md section 6): reductions over every
feature that carries a channel (issue 10), bounded group building, and the record of
``out``/``both`` falling back to ``in`` (issue 11)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import causalprune_fast as cf
import causalprune_fast.model.channel_graph as cg
from causalprune_fast.model.channel_members import Member, members_of_group

pytest.importorskip("torch_pruning")
# Tiny settings on purpose: the warning about few samples per layer is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")
FAST = dict(samples=8, progress=False)
MODES = ("propagated", "local")
REDUCE = {
    "sum": lambda xs: sum(xs),
    "mean": lambda xs: sum(xs) / len(xs),
    "max": lambda xs: max(xs),
}


def _score(net: nn.Module, shape: tuple[int, ...], mode: str, **kw) -> cf.CausalScores:
    return cf.score_model(net, shape, mode=mode, **FAST, **kw)


def _expected(entries: list[list[float]], reduction: str) -> torch.Tensor:
    """Per channel, the reduction of its entries (explicit loop)."""
    return torch.tensor([float(REDUCE[reduction](e)) for e in entries], dtype=torch.float64)


def _both(s_in: torch.Tensor, s_out: torch.Tensor) -> torch.Tensor:
    return s_in / s_in.mean() + s_out / s_out.mean()


# ----------------------------------------------------------------------------- Flatten


def flatten_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, padding=1),  # 3 channels of 4 x 4 = 16 features each
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(48, 5),
    ).eval()


@pytest.mark.parametrize("mode", MODES)
def test_flatten_into_linear_every_feature_counts(mode):
    scores = _score(flatten_net(), (3, 8, 8), mode)
    outgoing = scores.layers["5"].outgoing.double()
    incoming = scores.layers["2"].incoming.double()
    # Channel c of conv "2" is read by the Linear's input features c*16 .. c*16+15.
    entries = [[outgoing[f].item() for f in range(c * 16, (c + 1) * 16)] for c in range(3)]
    for reduction in ("sum", "mean", "max"):
        out = scores.with_direction("out", reduction)["2"]
        torch.testing.assert_close(out, _expected(entries, reduction), rtol=1e-9, atol=1e-12)
        s_in = _expected([[incoming[c].item()] for c in range(3)], reduction)
        both = scores.with_direction("both", reduction)["2"]
        torch.testing.assert_close(both, _both(s_in, out), rtol=1e-9, atol=1e-12)
    # The sum is not the last feature alone (what assignment with repeated indices gave).
    last = torch.tensor([e[-1] for e in entries], dtype=torch.float64)
    assert (scores.with_direction("out")["2"] > last).all()


def test_member_with_repeated_root_indices_round_trips(tmp_path):
    m = Member("5", "consumer", tuple(range(48)), tuple(f // 16 for f in range(48)))
    assert Member.from_json(json.loads(json.dumps(m.to_json()))) == m
    scores = _score(flatten_net(), (3, 8, 8), "local", direction="out")
    stored = [g for g in scores.groups["2"] if g.layer == "5"]
    assert stored and len(stored[0].idxs) == 48 and len(set(stored[0].root_idxs)) == 3
    scores.save(tmp_path / "s.safetensors")
    loaded = cf.CausalScores.load(tmp_path / "s.safetensors")
    assert loaded.groups["2"] == scores.groups["2"]
    for reduction in ("sum", "mean", "max"):
        torch.testing.assert_close(
            loaded.with_direction("out", reduction)["2"],
            scores.with_direction("out", reduction)["2"],
        )


# ----------------------------------------------------------------------------- concatenation


class CatNet(nn.Module):
    """Two convolutions concatenated along channels, read by one convolution and, through
    Flatten, by a Linear (each channel of ``c`` carries 4 x 4 features)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(9, 2, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        return self.fc(F.relu(self.c(y)).flatten(1))


@pytest.mark.parametrize("mode", MODES)
def test_concatenation(mode):
    scores = _score(CatNet().eval(), (3, 8, 8), mode)
    c_out = scores.layers["c"].outgoing.double()
    fc_out = scores.layers["fc"].outgoing.double()
    for reduction in ("sum", "mean", "max"):
        out = scores.with_direction("out", reduction)
        both = scores.with_direction("both", reduction)
        # a's channel k is c's input channel k; b's channel k is c's input channel 4 + k.
        for name, offset, n in (("a", 0, 4), ("b", 4, 5)):
            expected = _expected([[c_out[offset + k].item()] for k in range(n)], reduction)
            torch.testing.assert_close(out[name], expected, rtol=1e-9, atol=1e-12)
            s_in = scores.layers[name].incoming.double()  # one producer: any reduction
            torch.testing.assert_close(both[name], _both(s_in, expected), rtol=1e-9, atol=1e-12)
        entries = [[fc_out[f].item() for f in range(k * 16, (k + 1) * 16)] for k in range(2)]
        torch.testing.assert_close(out["c"], _expected(entries, reduction), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- residual block


class ResNetLike(nn.Module):
    """A stem and one residual block writing into one stream, read by three convolutions
    (two of them write into the output)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 3, 1)
        self.side = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(x))
        s = F.relu(s + self.conv2(F.relu(self.conv1(s))))
        return self.head(s) + self.side(s)


@pytest.mark.parametrize("mode", MODES)
def test_residual_stream(mode):
    scores = _score(ResNetLike().eval(), (3, 8, 8), mode)
    lay = scores.layers
    producers = ("stem", "conv2")
    consumers = ("conv1", "head", "side")
    for reduction in ("sum", "mean", "max"):
        s_in = _expected(
            [[lay[p].incoming[c].item() for p in producers] for c in range(4)], reduction
        )
        s_out = _expected(
            [[lay[q].outgoing[c].item() for q in consumers] for c in range(4)], reduction
        )
        for name in producers:  # the writers of one stream share one score
            torch.testing.assert_close(
                scores.with_direction("in", reduction)[name], s_in, rtol=1e-9, atol=1e-12
            )
            torch.testing.assert_close(
                scores.with_direction("out", reduction)[name], s_out, rtol=1e-9, atol=1e-12
            )
            torch.testing.assert_close(
                scores.with_direction("both", reduction)[name],
                _both(s_in, s_out),
                rtol=1e-9,
                atol=1e-12,
            )


# ----------------------------------------------------------------------------- fallbacks


def test_out_without_measured_consumer_is_recorded_and_warned():
    net = flatten_net()
    with pytest.warns(UserWarning, match=r"no measured consumer.*: 2"):
        scores = cf.score_model(net, (3, 8, 8), layers=r"0|2", direction="out", **FAST)
    assert scores.fallbacks == {"2": "no measured consumer"}
    torch.testing.assert_close(scores["2"], scores.with_direction("in")["2"])
    assert "fell back to 'in' for: 2 (no measured consumer)" in scores.summary()
    # "both" without consumers: the "in" term alone.
    with pytest.warns(UserWarning, match="no measured consumer"):
        both = scores.with_direction("both")
    s_in = scores.with_direction("in")["2"]
    torch.testing.assert_close(both["2"], s_in / s_in.mean())
    assert scores.with_direction("in").fallbacks == {}


def test_model_output_fallback_is_listed_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", ".*fewer samples than bins")
        scores = cf.score_model(flatten_net(), (3, 8, 8), direction="out", **FAST)
    assert scores.fallbacks == {"5": "model output, no consumer"}
    torch.testing.assert_close(scores["5"], scores.with_direction("in")["5"])
    assert "5 (model output, no consumer)" in scores.summary()


# ----------------------------------------------------------------------------- bounded groups


def _layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _canonical(groups: dict[str, list[Member]]) -> dict[str, list[tuple]]:
    return {
        name: sorted((m.layer, m.role, tuple(zip(m.idxs, m.root_idxs, strict=True))) for m in ms)
        for name, ms in groups.items()
    }


def test_groups_equal_torch_pruning_and_blocks_merge_to_the_whole(monkeypatch):
    import torch_pruning as tp

    net, x = CatNet().eval(), torch.randn(1, 3, 8, 8)
    names = _layer_names(net)
    groups, note = cg.build_groups(net, x, names)
    assert note == "Torch-Pruning dependency graph"
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    modules = {net.get_submodule(n): n for n in names}
    for name in names:
        m = net.get_submodule(name)
        pruner = dg.get_pruner_of_module(m)
        group = dg.get_pruning_group(
            m, pruner.prune_out_channels, range(pruner.get_out_channels(m))
        )
        ref = members_of_group(group, modules)
        assert _canonical({name: groups[name]}) == _canonical({name: ref})
    # A budget too small for a whole group but not for one channel: the groups are walked on
    # blocks of root channels and merged into the same members.
    walks = []

    def walk(dg, node, fn, channels, budget, deadline):
        walks.append((node.module, len(channels)))
        return real_walk(dg, node, fn, channels, budget, deadline)

    real_walk = cg._walk
    monkeypatch.setattr(cg, "_walk", walk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small, note = cg.build_groups(net, x, names, index_budget=60)
    assert note == "Torch-Pruning dependency graph"
    assert _canonical(small) == _canonical(groups)
    assert walks.count((net.c, 1)) == 2  # conv c's group was walked one channel at a time
    # Without the Torch-Pruning internals the bound needs: its own get_pruning_group.
    monkeypatch.setattr(cg, "_walk_supported", lambda: False)
    plain, note = cg.build_groups(net, x, names)
    assert "unbounded" in note and _canonical(plain) == _canonical(groups)


def tiny_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=[4, 4],
        num_classes=3,
    ).eval()


def test_window_attention_groups_are_found_within_a_small_budget(monkeypatch):
    """Torch-Pruning maps Swin's window reshapes as flattenings and its walk through them does
    not end (one channel of the last stage of torchvision's swin_t takes more than 3e7 index
    entries). With the attention and patch merging traced as one node each
    (model/structures), every group is walked under a budget of 2e5 entries (25 MB):
    each stage's stream couples the patch embedding, the MLPs and the patch merging, and the
    reduction of a patch merging gets the next stage's stream."""
    pytest.importorskip("torchvision")
    from causalprune_fast.base.memory import default_memory_budget

    monkeypatch.setattr(cg, "BYTES_PER_INDEX", default_memory_budget() // 200_000)
    net = tiny_swin()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="channel graph")
        scores = cf.score_model(net, (3, 16, 16), samples=4, progress=False)
    assert scores.config["graph"] == "Torch-Pruning dependency graph"
    torch.testing.assert_close(scores["features.0.0"], scores["features.1.0.mlp.3"])
    torch.testing.assert_close(scores["features.2.reduction"], scores["features.3.0.mlp.3"])
    stream = {(m.layer, m.role) for m in scores.groups["features.0.0"]}
    assert {("features.1.0.mlp.0", "consumer"), ("features.2.reduction", "consumer")} <= stream


def test_window_attention_groups_fall_back_per_layer_without_structures(monkeypatch):
    """Without model/structures, under a small index budget the layers whose walk passes
    the window reshapes are scored alone, named in a warning and in config["graph"], and the
    rest keep their coupling."""
    pytest.importorskip("torchvision")
    from causalprune_fast.estimator import default_memory_budget
    from causalprune_fast.model import structures

    monkeypatch.setattr(structures, "CLAIMED", {})
    # An index budget of 2e5 entries (25 MB) instead of the default 1 GiB worth.
    monkeypatch.setattr(cg, "BYTES_PER_INDEX", default_memory_budget() // 200_000)
    net = tiny_swin()
    with pytest.warns(UserWarning, match="channel graph") as record:
        scores = cf.score_model(net, (3, 16, 16), samples=4, progress=False)
    lost = ("features.2.reduction", "features.3.0.mlp.3")
    message = next(str(w.message) for w in record if "channel graph" in str(w.message))
    assert all(n in message for n in lost)
    graph = scores.config["graph"]
    assert "2 layer(s) lost their coupling" in graph and all(n in graph for n in lost)
    for name in lost:
        assert [(m.layer, m.role) for m in scores.groups[name]] == [(name, "producer")]
    # The first stage's stream is still coupled: the patch embedding and the MLP writing
    # into it share one score.
    torch.testing.assert_close(scores["features.0.0"], scores["features.1.0.mlp.3"])


@pytest.mark.parametrize(
    "name",
    ["torchvision_swin_v2", "timm_swin", "torchvision_maxvit", "timm_maxvit", "levit", "coat"],
)
def test_structure_groups_are_walked_within_a_small_budget(monkeypatch, name):
    """With model/structures, Torch-Pruning builds the graph of every family and walks every
    group within 2e4 index entries (without it, one qkv channel of MaxViT alone needed ~1e6)."""
    from structure_models import MODELS

    net, shape = MODELS[name]()
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    found = cg.find_groups(net, torch.rand(1, *shape), names, index_budget=20_000)
    assert not found.graph_error and not found.uncoupled and found.bounded


def test_channel_shuffle_maps_every_channel_through_the_permutation():
    """ShuffleNetV2: channel k of a downsampling block's branch2 lands at position 2k+1 of the
    shuffled stream; the next block's chunk sends positions >= C/2 into its branch2, the others
    on to the next shuffle. Each stream channel keeps its own producer (no two merge)."""
    pytest.importorskip("torchvision")
    from structure_models import MODELS

    net, shape = MODELS["shufflenet"]()
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    found = cg.find_groups(net, torch.rand(1, *shape), names)
    assert not found.uncoupled and not found.graph_error
    members = {(m.layer, m.role): m for m in found.groups["stage2.0.branch2.5"]}
    writers = [layer for layer, role in members if role == "producer"]
    dense = [w for w in writers if net.get_submodule(w).groups == 1]  # not depthwise
    assert dense == ["stage2.0.branch2.5"]
    half = 8  # stage 2: 16 channels, two halves of 8
    into = members[("stage2.1.branch2.0", "consumer")]
    expected = [(2 * k + 1 - half, k) for k in range(8) if 2 * k + 1 >= half]
    assert sorted(zip(into.idxs, into.root_idxs, strict=True)) == expected


def tiny_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    ).eval()


def test_multihead_attention_projections_join_the_residual_stream_group():
    """Torch-Pruning prunes an nn.MultiheadAttention's embedding channels with the residual
    stream it reads and writes (in_proj's input columns, out_proj's output rows): its virtual
    layers join that group, out_proj as a producer and in_proj as a consumer, and out_proj
    shares the stream's score."""
    pytest.importorskip("torchvision")
    import torch_pruning as tp

    from causalprune_fast.pruning.importance import CausalImportance

    net = tiny_vit()
    scores = cf.score_model(net, (3, 32, 32), examples=4, samples_per_layer=512, progress=False)
    stream = tuple(range(32))
    members = {(m.layer, m.role): m for m in scores.groups["conv_proj"]}
    for i in range(2):
        mha = f"encoder.layers.encoder_layer_{i}.self_attention"
        for layer, role in ((f"{mha}.out_proj", "producer"), (f"{mha}.in_proj", "consumer")):
            assert members[(layer, role)].idxs == members[(layer, role)].root_idxs == stream
        out_proj = f"{mha}.out_proj"
        assert out_proj not in scores.fallbacks  # it has measured consumers now
        # Its group is the stream's, and so is its score, in every direction.
        assert sorted(scores.groups[out_proj], key=repr) == sorted(members.values(), key=repr)
        for direction in ("in", "out", "both"):
            s = scores.with_direction(direction)
            torch.testing.assert_close(s[out_proj], s["conv_proj"])
    # In-projection outputs (q, k, v) stay a group of their own.
    in_proj = "encoder.layers.encoder_layer_0.self_attention.in_proj"
    assert [(m.layer, m.role) for m in scores.groups[in_proj]] == [(in_proj, "producer")]
    # The pruning importance of the stream counts the projections too: it is the score.
    imp = CausalImportance(net, (3, 32, 32), examples=4, samples_per_layer=512, normalizer=None)
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(net, example_inputs=torch.rand(1, 3, 32, 32))
    group = dg.get_pruning_group(net.conv_proj, tp.prune_conv_out_channels, list(stream))
    assert any(isinstance(item.dep.target.module, nn.MultiheadAttention) for item in group)
    torch.testing.assert_close(imp(group), imp.scores()["conv_proj"].float())
    # Without the projections measured the stream's score is another one (they were counted).
    without = cf.score_model(
        net,
        (3, 32, 32),
        examples=4,
        samples_per_layer=512,
        progress=False,
        layers=lambda n: not n.endswith(("in_proj", "out_proj")),
    )
    assert bool((without["conv_proj"] < scores["conv_proj"]).all())


def test_a_graph_torch_pruning_cannot_build_warns_and_scores_every_layer_alone(monkeypatch):
    """(ShuffleNetV2's channel shuffle, CoaT's concat: Torch-Pruning raises while it maps the
    indices of its graph.)"""
    tp = pytest.importorskip("torch_pruning")
    from nets import pooled_cnn

    def untraceable(self, model, example_inputs, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", untraceable)
    net = pooled_cnn().eval()
    with pytest.warns(UserWarning, match="could not build the dependency graph") as record:
        scores = cf.score_model(net, (3, 8, 8), samples=16, progress=False)
    message = next(str(w.message) for w in record if "dependency graph" in str(w.message))
    assert "ZeroDivisionError" in message and "scored alone" in message
    assert "ZeroDivisionError" in scores.config["graph"]
    for name in ("0", "3", "7"):
        assert [(m.layer, m.role) for m in scores.groups[name]] == [(name, "producer")]
        assert bool(torch.isfinite(scores[name]).all())
