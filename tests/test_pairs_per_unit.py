"""Sampled MI sums (pairs_per_unit, docs/method.md section 5.4): unbiased, with calibrated
standard errors, exact where a side has no more than K partners, deterministic per seed, kept
in the scores file, and the same through the block walk as in memory."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import causalprune_fast as cf
from causalprune_fast.base.distributed import DistContext
from causalprune_fast.estimator.backends import resolve
from causalprune_fast.scoring.layer_mi import MISettings, layer_mi
from causalprune_fast.scoring.pair_sampling import measured_pairs, sampled_layer_mi

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")


def _codes(rows=2048, x=40, y=24, seed=0, skew=1):
    """Codes of a layer whose inputs drive its outputs unevenly (so MI varies by pair; the
    more so, the larger ``skew``)."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(rows, x, generator=g)
    w = torch.randn(x, y, generator=g) * (torch.rand(x, 1, generator=g) ** skew)
    ys = xs @ w + 0.3 * torch.randn(rows, y, generator=g)
    xc, _ = cf.quantize(xs, 8)
    yc, _ = cf.quantize(ys, 8)
    return xc, yc


def _settings(k):
    return MISettings(resolve("cpu", torch.device("cpu")), 8, None, 1 << 30, False, k)


def _coverage(xc, yc, exact, k, seeds=200):
    """Estimates over ``seeds`` seeds, and the fraction of +-2 SE intervals that cover the
    exact sums (output channels, input channels of 2 taps)."""
    truth_x = exact.per_x.reshape(20, 2).sum(dim=1)
    est_y, est_x, z_y, z_x = [], [], [], []
    for seed in range(seeds):
        est = sampled_layer_mi(xc, yc, _settings(k), DistContext(), seed, taps_per_channel=2)
        ch = est.per_x.reshape(20, 2).sum(dim=1)
        est_y.append(est.per_y)
        est_x.append(ch)
        z_y.append((est.per_y - exact.per_y) / est.per_y_se)
        z_x.append((ch - truth_x) / est.per_channel_x_se)
        assert est.pairs == k * 24 + 40 * k
    cover = [(torch.stack(z).abs() <= 2).double().mean().item() for z in (z_y, z_x)]
    return torch.stack(est_y), torch.stack(est_x), truth_x, cover


def test_unbiased_with_standard_errors_that_tighten_with_k():
    """Unbiased; the usual standard error of a total from a simple random sample covers less
    than 95% at small K where a few partners carry most of a unit's MI (estimate and standard
    error are then low together), closer to it as K grows: the limit docs/method.md 5.4
    states."""
    xc, yc = _codes(skew=3)
    exact = layer_mi(xc, yc, 1, _settings(None), DistContext())
    ests_y, ests_x, truth_x, cover6 = _coverage(xc, yc, exact, 6, seeds=300)
    # The mean of 300 estimates is within 4 standard errors of the mean of the exact sum.
    for ests, truth in ((ests_y, exact.per_y), (ests_x, truth_x)):
        sem = ests.std(dim=0) / 300**0.5
        assert ((ests.mean(dim=0) - truth).abs() < 4 * sem + 1e-6).all()
    *_, cover20 = _coverage(xc, yc, exact, 20)
    for c6, c20 in zip(cover6, cover20, strict=True):
        assert 0.6 < c6 < c20 < 0.99 and c20 > 0.78, (cover6, cover20)


def test_exact_where_a_side_has_at_most_k_partners():
    xc, yc = _codes(x=12, y=9)
    exact = layer_mi(xc, yc, 1, _settings(None), DistContext())
    est = sampled_layer_mi(xc, yc, _settings(9), DistContext(), 0, taps_per_channel=1)
    torch.testing.assert_close(est.per_x, exact.per_x)  # 9 >= Y: every output is a partner
    assert torch.equal(est.per_channel_x_se, torch.zeros(12, dtype=torch.float64))
    assert (est.per_y_se > 0).all()  # 9 of the 12 inputs
    assert measured_pairs(12, 9, 1, 9) == 9 * 9 + 12 * 9
    assert measured_pairs(12, 9, 1, 12) == 12 * 9 and measured_pairs(12, 9, 3, 2) == 36


def test_score_model_deterministic_and_saved(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10),
    )  # fmt: skip
    kw = dict(examples=4, samples_per_layer=512, progress=False)
    a = cf.score_model(net, (3, 8, 8), pairs_per_unit=5, **kw)
    b = cf.score_model(net, (3, 8, 8), pairs_per_unit=5, **kw)
    c = cf.score_model(net, (3, 8, 8), pairs_per_unit=5, seed=1, **kw)
    exact = cf.score_model(net, (3, 8, 8), **kw)
    assert a.config["pairs_per_unit"] == 5
    for name in ("0", "5"):
        assert torch.equal(a.layers[name].incoming, b.layers[name].incoming)
        assert not torch.equal(a.layers[name].incoming, c.layers[name].incoming)
        assert a.layers[name].pairs < exact.layers[name].input_units * len(exact[name])
    grouped = a.layers["2"]  # groups=4: measured exactly
    assert grouped.incoming_se is None and grouped.pairs is None
    torch.testing.assert_close(grouped.incoming, exact.layers["2"].incoming)
    a.save(tmp_path / "s.safetensors")
    loaded = cf.CausalScores.load(tmp_path / "s.safetensors")
    for name, layer in a.layers.items():
        other = loaded.layers[name]
        assert other.pairs == layer.pairs
        for field in ("incoming_se", "outgoing_se"):
            t = getattr(layer, field)
            assert (t is None and getattr(other, field) is None) or torch.equal(
                t, getattr(other, field)
            )


def test_bad_arguments():
    net = torch.nn.Linear(4, 4)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="pairs_per_unit"):
            cf.score_model(net, (4,), pairs_per_unit=bad, progress=False)
    with pytest.raises(ValueError, match="return_matrices=True keeps every pair"):
        cf.score_model(net, (4,), pairs_per_unit=2, return_matrices=True, progress=False)


def test_block_walk_equals_score_model():
    pytest.importorskip("transformers")
    pytest.importorskip("torch_pruning")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tempfile

    from checkpoints import MODELS, VOCAB, save

    model = MODELS["llama"]()
    kw = dict(input_range=(0, VOCAB), examples=4, samples_per_layer=600, pairs_per_unit=6)
    with tempfile.TemporaryDirectory() as d:
        save(model, d)
        streamed = cf.score_checkpoint(d, (8,), progress=False, **kw)
    ids = torch.zeros(1, 8, dtype=torch.long)
    in_memory = cf.score_model(model, example_input=ids, progress=False, **kw)
    for name, layer in in_memory.layers.items():
        other = streamed.layers[name]
        for field in ("incoming", "outgoing", "incoming_se", "outgoing_se"):
            assert torch.equal(getattr(layer, field), getattr(other, field)), (name, field)
