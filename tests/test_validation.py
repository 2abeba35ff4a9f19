"""Bad input raises a ValueError naming the argument, before any kernel runs (issue 2, item 5),
both through the Python API and when the ops are called directly."""

from __future__ import annotations

import pytest
import torch

import causalprune_fast as cf

ops = torch.ops.causalprune_fast


def codes(samples=50, cols=3, bins=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, bins, (samples, cols), generator=gen).to(torch.uint8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(x=torch.zeros(10), y=codes(10)), "x must be 2-D"),
        (dict(x=codes(10), y=torch.zeros(10, 2, 2)), "y must be 2-D"),
        (dict(x=codes(10), y=codes(11)), "same number of samples"),
        (dict(x=torch.zeros(0, 3), y=torch.zeros(0, 3)), "at least one sample"),
        (dict(x=torch.zeros(5, 0), y=codes(5)), "x must have at least one column"),
        (dict(x=torch.zeros(5, 2, dtype=torch.bool), y=codes(5)), "x must hold float"),
        (dict(x=torch.zeros(5, 2, dtype=torch.complex64), y=codes(5)), "x must hold float"),
        (dict(x=[[1, 2]], y=codes(1)), "x must be a torch.Tensor"),
        (dict(x=codes(), y=codes(), bins=1), "bins must be in"),
        (dict(x=codes(), y=codes(), bins=257), "bins must be in"),
        (dict(x=codes(), y=codes(), bins=2.5), "bins must be an int"),
        (dict(x=codes(), y=codes(), bins=True), "bins must be an int"),
        (dict(x=codes(), y=codes(), bins=(4, 300)), r"bins\[1\] \(bins of y\) must be in"),
        (dict(x=codes(), y=codes(), bins=(4, 4, 4)), "pair"),
        (dict(x=codes(bins=9), y=codes(), bins=8), "x holds code 8"),
        (dict(x=codes(), y=codes() + 250, bins=16), "y holds code"),
        (dict(x=torch.full((5, 2), -1), y=codes(5)), "x holds code -1"),
        (dict(x=codes(), y=codes(), correction="jackknife"), "correction must be"),
        (dict(x=codes(), y=codes(), backend="numpy"), "backend must be"),
        (dict(x=codes(), y=codes(), groups=2), "groups=2 must divide"),
        (dict(x=codes(), y=codes(), groups=0), "groups must be a positive int"),
        (dict(x=codes(), y=codes(), reduce="mean"), "reduce must be"),
        (dict(x=codes(), y=codes(), memory_budget=0), "memory_budget must be"),
        (dict(x=codes(), y=codes(), memory_budget=100), "memory_budget is too small for one tile"),
        (dict(x=codes(), y=codes(), ranges=(torch.zeros(3, 2), None)), "ranges were given for x"),
        (dict(x=codes(), y=codes(), ranges=torch.zeros(3, 2)), "ranges must be None or a pair"),
    ],
)
def test_pairwise_mi_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cf.pairwise_mi(**kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("given_ranges", [False, True])
def test_non_finite_activations_are_rejected_with_a_count(bad, given_ranges):
    x = torch.randn(40, 3)
    x[5, 1] = bad
    x[7, 2] = bad
    ranges = (torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64), None) if given_ranges else None
    with pytest.raises(ValueError, match="x holds 2 non-finite value"):
        cf.pairwise_mi(x, codes(40), ranges=ranges)
    with pytest.raises(ValueError, match="y holds 2 non-finite value"):
        cf.pairwise_mi(codes(40), x)
    with pytest.raises(ValueError, match="x holds 2 non-finite value"):
        cf.quantize(x, 8, None if not given_ranges else ranges[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_is_exact_where_the_sum_overflows(dtype):
    """The one-pass finiteness test: exact for NaN and +-Inf anywhere (also +Inf and -Inf
    together), and finite values whose sum overflows are still finite."""
    from causalprune_fast.base.validation import all_finite

    big = torch.full((64, 3), torch.finfo(dtype).max, dtype=dtype)
    assert all_finite(big) and all_finite(-big) and all_finite(big.t())
    assert all_finite(torch.zeros(0, 3, dtype=dtype))
    assert all_finite(torch.arange(5)) and all_finite(torch.ones(2, dtype=torch.bool))
    for bad in ([float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")]):
        t = torch.randn(64, 3).to(dtype)
        t.view(-1)[: len(bad)] = torch.tensor(bad, dtype=dtype)
        assert not all_finite(t) and not all_finite(t.t())
        assert not all_finite(torch.cat([big, t]))


@pytest.mark.parametrize(
    "ranges,match",
    [
        (torch.zeros(2, 2), r"shape \[3, 2\]"),
        (torch.tensor([[0.0, 1.0]] * 3)[:, :1], r"shape \[3, 2\]"),
        (torch.tensor([[1.0, 0.0]] * 3), "lo <= hi"),
        (torch.tensor([[0.0, float("nan")]] * 3), "finite"),
        (torch.zeros(3, 2, dtype=torch.int64), "floating point"),
    ],
)
def test_bad_ranges(ranges, match):
    with pytest.raises(ValueError, match=match):
        cf.quantize(torch.randn(10, 3), 4, ranges)


def test_quantize_rejects_codes_and_bad_bins():
    with pytest.raises(ValueError, match="x must hold float activations to quantize"):
        cf.quantize(codes(), 4)
    with pytest.raises(ValueError, match="bins must be in"):
        cf.quantize(torch.randn(5, 2), 300)


def test_cuda_backend_on_cpu_tensors_is_an_error():
    with pytest.raises(ValueError, match="backend 'cuda'"):
        cf.pairwise_mi(codes(), codes(), 4, backend="cuda")


# Direct op calls: the C++ kernels check their arguments too and raise ValueError.
@pytest.mark.parametrize(
    "args,match",
    [
        ((codes(), codes(), 1, 4), "bins_x must be in"),
        ((codes(), codes(), 4, 300), "bins_y must be in"),
        ((codes().long(), codes(), 4, 4), "x must be uint8"),
        ((codes(), codes(60), 4, 4), "same number of samples"),
        ((codes(), codes()[:, :1].expand(50, 1).reshape(50), 4, 4), "y must be 2-D"),
        ((codes(bins=9), codes(), 8, 4), "x holds code 8 in column"),
        ((codes(), codes(bins=9), 4, 8), "y holds code 8 in column"),
        ((codes(), codes(), 4, 4, 2), "groups=2 must divide"),
    ],
)
@pytest.mark.parametrize("op", ["pairwise_mi", "pairwise_mi_sums"])
def test_ops_reject(op, args, match):
    with pytest.raises(ValueError, match=match):
        getattr(ops, op)(*args)


def test_quantize_op_rejects():
    with pytest.raises(ValueError, match="x must be float16"):
        ops.quantize(codes(), 4)
    with pytest.raises(ValueError, match="ranges must have shape"):
        ops.quantize(torch.randn(5, 3), 4, torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="ranges must be float64"):
        ops.quantize(torch.randn(5, 3), 4, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="bins must be in"):
        ops.quantize(torch.randn(5, 3), 1)
