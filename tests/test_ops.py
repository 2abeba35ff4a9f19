"""The registered ops torch.ops.causalprune_fast.*: opcheck (schema, fake kernels, autograd
registration, AOT dispatch), FakeTensor shapes, and use inside torch.compile'd code."""

from __future__ import annotations

import pytest
import torch

import causalprune_fast as cf
from causalprune_fast.estimator import extension

ops = torch.ops.causalprune_fast
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and extension._C.cuda_compiled() else [])


def _codes(samples, cols, bins, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, bins, (samples, cols), generator=gen).to(torch.uint8).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_pairwise_ops(device):
    x, y = _codes(300, 6, 8, device), _codes(300, 4, 5, device, seed=1)
    for op in (ops.pairwise_mi, ops.pairwise_mi_sums):
        torch.library.opcheck(op, (x, y, 8, 5))
        torch.library.opcheck(op, (x, y, 8, 5), {"groups": 2, "miller_madow": True})
        torch.library.opcheck(op, (x.t().contiguous().t(), y[::1], 8, 5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_opcheck_quantize(device, dtype):
    x = torch.randn(200, 5, dtype=dtype, device=device)
    torch.library.opcheck(ops.quantize, (x, 16))
    ranges = torch.tensor([[-1.0, 1.0]] * 5, dtype=torch.float64, device=device)
    torch.library.opcheck(ops.quantize, (x, 7, ranges))


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(1000, 12, dtype=torch.uint8)
        y = torch.empty(1000, 7, dtype=torch.uint8)
        assert ops.pairwise_mi(x, y, 16, 16).shape == (12, 7)
        px, py = ops.pairwise_mi_sums(x, y, 16, 16)
        assert px.shape == (12,) and py.shape == (7,) and px.dtype == torch.float64
        codes, ranges = ops.quantize(torch.empty(1000, 12), 16)
        assert codes.shape == (1000, 12) and codes.stride() == (1, 1000)
        assert ranges.shape == (12, 2) and ranges.dtype == torch.float64


def test_ops_inside_torch_compile_fullgraph():
    def score(acts_in, acts_out):
        xc, _ = ops.quantize(acts_in, 16)
        yc, _ = ops.quantize(torch.relu(acts_out), 16)
        per_x, per_y = ops.pairwise_mi_sums(xc, yc, 16, 16)
        return per_y / per_y.sum(), ops.pairwise_mi(xc, yc, 16, 16)

    compiled = torch.compile(score, fullgraph=True, backend="aot_eager")
    a = torch.rand(2048, 8) * 2 - 1
    b = a @ torch.randn(8, 5)
    for got, want in zip(compiled(a, b), score(a, b), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_python_api_inside_torch_compile():
    # The wrapper validates with data-dependent checks, which break the graph but still run.
    compiled = torch.compile(lambda a, b: cf.pairwise_mi(a, b, 8, reduce="sum").per_y)
    a, b = torch.randn(512, 4), torch.randn(512, 3)
    torch.testing.assert_close(compiled(a, b), cf.pairwise_mi(a, b, 8, reduce="sum").per_y)
