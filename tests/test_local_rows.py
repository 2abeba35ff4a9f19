"""Local mode at full strength (issue 13): every layer measured on exactly
``samples_per_layer`` rows, the patch path equal in distribution to the full-tensor path,
tiling within ``memory_budget`` equal to one tile, and each layer's record of how it was
measured."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from nets import structured_conv

import causalprune_fast as cf
from causalprune_fast.model.layers import Layer
from causalprune_fast.model.response import ResponsePoint
from causalprune_fast.scoring.local import LocalMode
from causalprune_fast.scoring.sampling import BLOCK, row_source

CPU = torch.device("cpu")


class SE(nn.Module):
    """Squeeze-excitation as in MobileNetV3: pooled, two Linear layers, a gate."""

    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c // 2), nn.Linear(c // 2, c)

    def forward(self, x):
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


def pooled_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        SE(8),
        nn.Conv2d(8, 6, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


def _timm_same_conv(*args, **kwargs) -> nn.Module:
    """timm's TensorFlow-"SAME" conv: padding 0, its forward pads (asymmetrically)."""
    timm_layers = pytest.importorskip("timm.layers")
    return timm_layers.Conv2dSame(*args, **kwargs)


def source(layer: nn.Module, shape, lo, hi, rows: int, full_tensor: bool, response=None):
    """The local-mode rows of ``layer`` alone, by the patch or the full-tensor path."""
    with torch.no_grad():
        positions = layer(torch.zeros(1, *shape))[0, 0].numel()
    return row_source(
        Layer("l", layer),
        response or ResponsePoint(),
        index=0,
        rows=rows,
        input_shape=tuple(shape),
        positions=positions,
        lo=lo,
        hi=hi,
        taps="all",
        seed=1,
        device=CPU,
        dtype=torch.float32,
        full_tensor=full_tensor,
    )


def test_every_layer_gets_samples_per_layer_rows_whatever_the_calibration():
    net = pooled_net()
    kw = dict(examples=3, samples_per_layer=1000, seed=0, progress=False)
    scores = cf.score_model(net, (3, 9, 9), **kw)
    # Conv layers, the SE Linear layers behind global pooling and the classifier alike.
    assert set(scores.layers) == {"0", "3.fc1", "3.fc2", "4", "8"}
    for name, layer in scores.layers.items():
        assert layer.samples == 1000, name
        assert (layer.path, layer.backend) == ("patches", "cpu"), name
    assert scores.config["examples"] == 3 and scores.config["samples_per_layer"] == 1000
    again = cf.score_model(net, (3, 9, 9), **kw)  # same seed: the same scores
    for name in scores:
        assert torch.equal(scores.layers[name].incoming, again.layers[name].incoming)
    assert "patches" in scores.summary()


def test_layers_the_patch_path_cannot_take_use_the_full_tensor_path():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Conv2d(4, 3, 1)
    ).eval()
    scores = cf.score_model(net, (2, 6, 6), examples=2, samples_per_layer=500, progress=False)
    assert scores.layers["0"].path == "full-tensor"  # reflect padding copies other values
    assert scores.layers["2"].path == "patches"
    assert all(layer.samples == 500 for layer in scores.layers.values())


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 9, 9)),
        (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (4, 9, 9)),
        (lambda: nn.Conv1d(2, 3, 5, padding=2), (2, 9)),
        (lambda: _timm_same_conv(3, 4, 3, 2), (3, 8, 8)),  # right/bottom padding only
    ],
)
def test_patch_path_equals_full_tensor_path_in_distribution(make, shape):
    torch.manual_seed(0)
    conv, lo, hi = structured_conv(make())
    k = conv.weight[0, 0].numel()
    mi, padding = [], []
    for full in (False, True):
        src = source(conv, shape, lo, hi, 20000, full)
        x, y = src.make(0, src.units)
        assert x.shape == (20000, conv.weight[0].numel() * conv.groups)
        padding.append(float((x == 0).double().mean()))  # taps in the padding
        mi.append(cf.pairwise_mi(x, y, bins=8))
    # Same fraction of padding taps and the same MI up to estimator noise (S = 20000).
    assert padding[0] == pytest.approx(padding[1], abs=0.01)
    assert padding[0] > 0.1
    torch.testing.assert_close(mi[0], mi[1], rtol=0, atol=0.04)
    assert float(mi[0][k // 2, 0]) > 0.5  # the strong pair is seen by both paths
    assert float(mi[1][k // 2, 0]) > 0.5


def test_zero_weights_carry_nothing_on_both_paths():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
    lo, hi = -torch.ones(3), torch.ones(3)
    for full in (False, True):
        src = source(conv, (3, 5, 5), lo, hi, 2000, full)
        per_x, per_y = cf.pairwise_mi(*src.make(0, src.units), bins=16, reduce="sum")
        assert torch.equal(per_x, torch.zeros_like(per_x))
        assert torch.equal(per_y, torch.zeros_like(per_y))


def test_padding_taps_are_zero_and_the_others_uniform_on_the_channel_range():
    conv = nn.Conv2d(2, 3, 3, padding=1)  # 2 x 2 input: every patch has 4 taps inside
    lo, hi = torch.tensor([0.5, 2.0]), torch.tensor([1.0, 3.0])
    src = source(conv, (2, 2, 2), lo, hi, 3 * BLOCK + 5, full_tensor=False)
    x, y = src.make(0, src.units)
    patches = x.reshape(-1, 2, 9)
    inside = patches != 0
    assert torch.equal(inside.sum(dim=2), torch.full((len(x), 2), 4))
    for c in range(2):
        v = patches[:, c][inside[:, c]]
        assert float(v.min()) >= lo[c] and float(v.max()) <= hi[c]
    # The layer's output is the convolution of those patches.
    ref = x @ conv.weight.detach().reshape(3, -1).t() + conv.bias.detach()
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("tile", [None, (BLOCK + 7, 5 * BLOCK + 3)])
def test_rows_do_not_depend_on_the_threads_that_draw_them(tile):
    """On the CPU the noise blocks are drawn by several threads, each block from its own
    generator: the rows (noise, positions, padding zeros) are those of one thread, exactly
    (elementwise ops only: no BLAS between the draw and these rows)."""
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    lo, hi = torch.tensor([0.0, -2.0, 1.0]), torch.tensor([1.0, 2.0, 1.5])
    rows = 7 * BLOCK + 11
    a, b = tile or (0, rows)
    threads = torch.get_num_threads()
    made = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            made.append(source(conv, (3, 9, 9), lo, hi, rows, full_tensor=False).make(a, b)[0])
    finally:
        torch.set_num_threads(threads)
    assert made[0].shape == (b - a, 27)
    assert torch.equal(made[0], made[1])
    # and a tile's rows are those rows of the whole layer (the blocks a tile cuts are drawn
    # whole and copied; the whole layer draws the same blocks in place)
    whole = source(conv, (3, 9, 9), lo, hi, rows, full_tensor=False).make(0, rows)[0]
    assert torch.equal(whole[a:b], made[0])


def test_response_is_applied_per_output_channel():
    conv, bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    response = ResponsePoint([("bn", bn), ("relu", nn.ReLU())])
    src = source(conv, (2, 4, 4), -torch.ones(2), torch.ones(2), 300, False, response)
    x, y = src.make(0, 300)
    raw = x @ conv.weight.detach().reshape(3, -1).t() + conv.bias.detach()
    torch.testing.assert_close(y, torch.relu(bn(raw[:, :, None, None]).reshape(300, 3)))


def test_tiles_within_a_small_budget_give_the_scores_of_one_tile(monkeypatch):
    net = pooled_net()
    kw = dict(examples=4, samples_per_layer=3000, seed=5, progress=False)
    one = cf.score_model(net, (3, 9, 9), **kw)
    counts = []
    tiles = LocalMode.tiles

    def spy(self, s, src, a, b):
        out = tiles(self, s, src, a, b)
        counts.append(len(out))
        return out

    monkeypatch.setattr(LocalMode, "tiles", spy)
    small = cf.score_model(net, (3, 9, 9), memory_budget=1_200_000, **kw)
    assert max(counts) > 2  # the budget did force several tiles
    for name, layer in one.layers.items():
        other = small.layers[name]
        assert other.samples == layer.samples == 3000
        # The same rows: identical noise and ranges; the codes equal up to float rounding of
        # the layer's product on tiles of another size.
        assert torch.equal(other.x_ranges, layer.x_ranges)
        torch.testing.assert_close(other.y_ranges, layer.y_ranges)
        torch.testing.assert_close(other.incoming, layer.incoming, rtol=0, atol=1e-3)
        torch.testing.assert_close(other.outgoing, layer.outgoing, rtol=0, atol=1e-3)


def test_a_layer_that_cannot_fit_the_budget_is_an_error_naming_it():
    net = pooled_net()
    with pytest.raises(ValueError, match=r"layer '0': memory_budget=20000 bytes cannot hold"):
        cf.score_model(
            net, (3, 9, 9), examples=2, samples_per_layer=3000, memory_budget=20000, progress=False
        )


def test_path_and_backend_survive_save_and_load(tmp_path):
    scores = cf.score_model(
        pooled_net(), (3, 9, 9), examples=2, samples_per_layer=300, progress=False
    )
    path = tmp_path / "s.safetensors"
    scores.save(path)
    loaded = cf.CausalScores.load(path)
    for name, layer in scores.layers.items():
        assert (loaded.layers[name].path, loaded.layers[name].backend) == ("patches", "cpu")
        assert loaded.layers[name].samples == layer.samples == 300
    # A file written before path and backend were recorded still loads (None).
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["causalprune"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for m in meta["layers"].values():
        del m["path"], m["backend"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"causalprune": json.dumps(meta)})
    older = cf.CausalScores.load(old)
    assert all(layer.path is None for layer in older.layers.values())
    assert " - " in older.summary()


def test_old_argument_names_still_work_and_must_agree_with_the_new():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    kw = dict(progress=False, seed=0)
    old = cf.score_model(net, (4,), samples=5, max_samples_per_layer=400, **kw)
    new = cf.score_model(net, (4,), examples=5, samples_per_layer=400, **kw)
    assert old.config["examples"] == new.config["examples"] == 5
    for name in new:
        assert torch.equal(old.layers[name].incoming, new.layers[name].incoming)
        assert old.layers[name].samples == 400
    with pytest.raises(ValueError, match=r"examples=6 and samples=5"):
        cf.score_model(net, (4,), examples=6, samples=5, **kw)
    with pytest.raises(ValueError, match=r"samples_per_layer=300 and max_samples_per_layer=400"):
        cf.score_model(net, (4,), samples_per_layer=300, max_samples_per_layer=400, **kw)
    no_cap = r"samples_per_layer=None \(no cap\) applies to mode=.propagated. only"
    with pytest.raises(ValueError, match=no_cap):
        cf.score_model(net, (4,), samples_per_layer=None, **kw)
    with pytest.raises(ValueError, match=r"samples_per_layer"):
        cf.score_model(net, (4,), samples_per_layer=0, **kw)


def test_local_mode_on_token_inputs_draws_each_layer_noise_in_its_own_dtype():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(50, 6), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    scores = cf.score_model(
        net,
        (7,),
        input_range=(0, 50),
        input_dtype=torch.long,
        examples=4,
        samples_per_layer=512,
        progress=False,
    )
    assert set(scores.layers) == {"1", "3"}
    assert all(layer.samples == 512 for layer in scores.layers.values())
    assert float(scores.layers["1"].incoming.sum()) > 0
