"""The defaults of global pruning follow the quality study (issue 21 item 3,
benchmarks/quality/RESULTS.md "Global pruning"): with ``global_pruning=True``, ``cf.prune``
scores with Miller-Madow unless ``correction`` is given, and normalises each group by its mean
(``normalizer="mean"``, also ``CausalImportance``'s default). Per-layer pruning ranks every group
alone, so the normalizer cannot change what it removes, and it keeps the plug-in estimate."""

from __future__ import annotations

import pytest
import torch
from nets import pooled_cnn

import causalprune_fast as cf

pytest.importorskip("torch_pruning")
pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")
SHAPE = (3, 8, 8)
KW = dict(samples=16, seed=0, progress=False, on_shortfall="ignore")


def pruned(ratio: float = 0.4, **kwargs) -> dict[str, torch.Tensor]:
    model = pooled_cnn(width=8, second=24).eval()
    cf.prune(model, ratio, SHAPE, **KW, **kwargs)
    return model.state_dict()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def test_the_normalizer_does_not_change_per_layer_pruning():
    default = pruned()
    for normalizer in (None, "max", "sum"):
        assert same(pruned(normalizer=normalizer), default)


def test_per_layer_pruning_keeps_the_plug_in_estimate():
    assert same(pruned(), pruned(correction=None))


def test_global_pruning_defaults_to_miller_madow_and_the_mean():
    default = pruned(global_pruning=True)
    assert same(default, pruned(global_pruning=True, correction="miller-madow", normalizer="mean"))
    # the defaults decide: the plug-in scores, unnormalised, rank these layers' channels
    # differently (the wider layer's sums collect more of every pair's bias)
    plain = pruned(global_pruning=True, correction=None, normalizer=None)
    assert not same(default, plain)
