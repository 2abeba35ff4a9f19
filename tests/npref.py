"""An independent float64 NumPy reference for the tests: joint counts per pair with
``np.add.at`` (not a one-hot product as in causalprune_fast.estimator.reference), binning with
NumPy."""

from __future__ import annotations

import numpy as np


def quantize(x: np.ndarray, bins: int, ranges: np.ndarray | None = None):
    x = np.asarray(x, dtype=np.float64)
    if ranges is None:
        ranges = np.stack([x.min(axis=0), x.max(axis=0)], axis=1)
    lo, hi = ranges[:, 0], ranges[:, 1]
    codes = np.zeros(x.shape, dtype=np.int64)
    for c in range(x.shape[1]):
        for s in range(x.shape[0]):
            v = x[s, c]
            if not hi[c] > lo[c]:
                codes[s, c] = bins - 1 if v > hi[c] else 0
                continue
            # Halve every operand where hi - lo overflows (a finite range beyond the largest
            # double), as quantize_value in mi_math.h does.
            with np.errstate(over="ignore"):
                h = 1.0 if np.isfinite(hi[c] - lo[c]) else 0.5
            t = (v * h - lo[c] * h) / (hi[c] * h - lo[c] * h) * bins
            codes[s, c] = 0 if not t >= 1 else (bins - 1 if t >= bins - 1 else int(np.floor(t)))
    return codes.astype(np.uint8), ranges


def _xlogx(a: np.ndarray) -> float:
    a = a[a > 0].astype(np.float64)
    return float((a * np.log(a)).sum())


def mi_pair(x: np.ndarray, y: np.ndarray, bx: int, by: int, miller_madow: bool = False) -> float:
    s = x.shape[0]
    h = np.zeros((bx, by), dtype=np.int64)
    np.add.at(h, (x.astype(np.int64), y.astype(np.int64)), 1)
    px, py = h.sum(axis=1), h.sum(axis=0)
    mi = (_xlogx(h) - _xlogx(px) - _xlogx(py) + s * np.log(s)) / (s * np.log(2))
    if miller_madow:
        mi += ((px > 0).sum() + (py > 0).sum() - (h > 0).sum() - 1) / (2 * s * np.log(2))
    return max(mi, 0.0)


def pairwise_mi(x, y, bx: int, by: int, groups: int = 1, miller_madow: bool = False):
    x, y = np.asarray(x), np.asarray(y)
    cx, cy = x.shape[1], y.shape[1]
    gx, gy = cx // groups, cy // groups
    out = np.zeros((cx, cy))
    for i in range(cx):
        for j in range(cy):
            if i // gx == j // gy:
                out[i, j] = mi_pair(x[:, i], y[:, j], bx, by, miller_madow)
    return out


def entropy_bits(x: np.ndarray, bins: int) -> float:
    n = np.bincount(x.astype(np.int64), minlength=bins)
    p = n[n > 0] / x.shape[0]
    return float(-(p * np.log2(p)).sum())
