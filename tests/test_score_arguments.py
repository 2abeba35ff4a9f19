"""score_model's argument checks (issue 11): every bad argument is a ValueError naming it,
raised before the model runs; non-finite activations are blamed on the module that made them;
CAUSALPRUNE_MEMORY_BUDGET takes units."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn

import causalprune_fast as cf
from causalprune_fast.base.memory import default_memory_budget, parse_bytes

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")
FAST = dict(samples=8, progress=False, mode="propagated")


class NeverCalled(nn.Module):
    """A model whose forward fails the test: argument errors come before any forward pass."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        raise AssertionError("the model ran before the arguments were checked")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(input_shape=(3.5, 8, 8)), "input_shape"),
        (dict(input_shape=(4.0,)), "input_shape"),
        (dict(input_shape=(True, 4)), "input_shape"),
        (dict(input_shape="4"), "input_shape"),
        (dict(example_input=torch.zeros(2, 5)), "input_shape=(4,) conflicts with example_input"),
        (dict(seed="a"), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=True), "seed"),
        (dict(input_range=(5,)), "input_range"),
        (dict(input_range=(0, 1, 2)), "input_range"),
        (dict(input_range="ab"), "input_range"),
        (dict(input_range=(0, math.nan)), "input_range"),
        (dict(layers=0), "layers"),
        (dict(layers=[]), "layers"),
        (dict(layers=["fc", 3]), "layers"),
        (dict(samples=True), "samples"),
        (dict(samples=8.0), "samples"),
        (dict(batch_size=True), "batch_size"),
        (dict(batch_size=0), "batch_size"),
        (dict(samples=4, batch_size=5), "batch_size=5 is larger than examples=4"),
        (dict(max_samples_per_layer=True), "max_samples_per_layer"),
        (dict(max_samples_per_layer=0), "max_samples_per_layer"),
        (dict(bins=True), "bins"),
        (dict(memory_budget=True), "memory_budget"),
        (dict(mode=None), "mode"),
        (dict(taps="some"), "taps"),
        (dict(direction=1), "direction"),
        (dict(reduction="median"), "reduction"),
        (dict(ranges="all"), "ranges"),
        (dict(correction="mm"), "correction"),
        (dict(backend="gpu"), "backend"),
        (dict(return_matrices=1), "return_matrices"),
        (dict(progress="yes"), "progress"),
        (dict(distributed=0), "distributed"),
        (dict(fused_local=1), "fused_local"),
        (dict(input_dtype="float32"), "input_dtype"),
        (dict(input_dtype=torch.bool), "input_dtype"),
    ],
)
def test_bad_argument_names_it_before_the_model_runs(kwargs, name):
    kwargs = dict(FAST, **kwargs)
    shape = kwargs.pop("input_shape", (4,))
    with pytest.raises(ValueError, match=re.escape(name)):
        cf.score_model(NeverCalled(), shape, **kwargs)


def test_example_input_with_a_consistent_input_shape_is_fine():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    a = cf.score_model(net, (4,), example_input=torch.zeros(1, 4), seed=1, **FAST)
    b = cf.score_model(net, example_input=torch.zeros(7, 4), seed=1, **FAST)
    assert a.config["input_shape"] == b.config["input_shape"] == [4]
    torch.testing.assert_close(a["0"], b["0"])


@pytest.mark.parametrize("mode", ["propagated", "local"])
@pytest.mark.parametrize("where", ["measured", "unmeasured"])
def test_non_finite_blamed_on_the_first_module_that_produces_it(mode, where):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()
    ).eval()
    with torch.no_grad():
        if where == "measured":
            net[0].weight[1, 0, 0, 0] = math.nan
        else:
            net[1].running_var[2] = math.nan
    blamed = r"layer '0'" if where == "measured" else r"module '1' \(BatchNorm2d\)"
    with pytest.raises(ValueError, match=blamed + r" produced \d+ non-finite value"):
        cf.score_model(net, (3, 8, 8), **dict(FAST, mode=mode))


def test_parse_bytes_and_the_memory_budget_variable(monkeypatch):
    assert parse_bytes("1073741824", "X") == 2**30
    assert parse_bytes("512MB", "X") == 512 * 10**6
    assert parse_bytes("1GiB", "X") == 2**30
    assert parse_bytes("1.5G", "X") == 3 * 2**29
    assert parse_bytes("64 kib", "X") == 64 * 1024
    for bad in ("1 GBs", "abc", "", "-5", "0", "1e9"):
        with pytest.raises(ValueError, match="X="):
            parse_bytes(bad, "X")
    monkeypatch.setenv("CAUSALPRUNE_MEMORY_BUDGET", "1GB")
    assert default_memory_budget() == 10**9
    monkeypatch.setenv("CAUSALPRUNE_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match="CAUSALPRUNE_MEMORY_BUDGET='lots'.*e.g. 1073741824"):
        default_memory_budget()
