"""What users would use instead of causalprune_fast to get the same pairwise MI: the anchors
every benchmark compares against, each computing exactly docs/method.md section 5 on given codes."""

from __future__ import annotations

import math
import types

import numpy as np
import torch


def numpy_sklearn_loop(x: np.ndarray, y: np.ndarray, bins: int) -> np.ndarray:
    """Per pair: ``np.histogram2d`` joint counts, then ``sklearn.metrics.mutual_info_score``."""
    from sklearn.metrics import mutual_info_score

    out = np.zeros((x.shape[1], y.shape[1]))
    edges = [np.arange(bins + 1) - 0.5] * 2
    for i in range(x.shape[1]):
        for j in range(y.shape[1]):
            counts, _, _ = np.histogram2d(x[:, i], y[:, j], bins=edges)
            out[i, j] = mutual_info_score(None, None, contingency=counts) / math.log(2)
    return out


def _mi_from_counts(counts: torch.Tensor, samples: int) -> torch.Tensor:
    """MI in bits from joint counts ``[Cx, B, Cy, B]`` (unfused epilogue)."""
    c = counts.double()
    nx, ny = c.sum(dim=3)[:, :, 0], c.sum(dim=1)[0]
    xl = torch.special.xlogy
    joint = xl(c, c).sum(dim=(1, 3))
    s = float(samples)
    mi = joint - xl(nx, nx).sum(1)[:, None] - xl(ny, ny).sum(1)[None, :] + s * math.log(s)
    return (mi / (s * math.log(2))).clamp_min(0)


def torch_onehot_matmul(
    x: torch.Tensor, y: torch.Tensor, bins: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """All joint counts as one one-hot matrix product (float32 on CPU, bf16 on GPU: exact for
    counts below 2**24 / 2**8 per accumulation step in fp32 accumulators), then MI."""
    samples, cx, cy = x.shape[0], x.shape[1], y.shape[1]
    ox = torch.nn.functional.one_hot(x.long(), bins).reshape(samples, cx * bins).to(dtype)
    oy = torch.nn.functional.one_hot(y.long(), bins).reshape(samples, cy * bins).to(dtype)
    counts = (ox.t() @ oy).float().reshape(cx, bins, cy, bins)
    return _mi_from_counts(counts, samples)


def torch_bincount(x: torch.Tensor, y: torch.Tensor, bins: int) -> torch.Tensor:
    """Joint counts of every pair with one ``torch.bincount`` over (pair, x bin, y bin)."""
    samples, cx, cy = x.shape[0], x.shape[1], y.shape[1]
    pair = torch.arange(cx * cy, device=x.device).reshape(1, cx, cy) * (bins * bins)
    idx = pair + x.long()[:, :, None] * bins + y.long()[:, None, :]
    counts = torch.bincount(idx.reshape(-1), minlength=cx * cy * bins * bins)
    counts = counts.reshape(cx, cy, bins, bins).permute(0, 2, 1, 3)
    return _mi_from_counts(counts, samples)


def deep_ei_module():
    """The ``deep-ei`` package (Mattsson, Michaud & Hoel's reference code), with a shim for
    networkx >= 3 (its topology hook adds an edge from ``None``, which networkx now rejects).
    The shim patches only the benchmark's view of the module. None if it is not installed."""
    try:
        import deep_ei
        import networkx as nx
    except ImportError:
        return None

    class _DiGraph(nx.DiGraph):
        def add_edge(self, u, v, **attr):
            if u is not None and v is not None:
                super().add_edge(u, v, **attr)

    shim = types.SimpleNamespace(**{k: getattr(nx, k) for k in dir(nx) if not k.startswith("__")})
    shim.DiGraph = _DiGraph
    deep_ei.nx = shim
    return deep_ei
