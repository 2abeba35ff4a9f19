"""Fake (meta) kernels of ``torch.ops.causalprune_fast.*``: output shapes, dtypes and strides
without computing anything, so the ops trace under ``torch.compile`` and FakeTensor mode."""

from __future__ import annotations

import torch


def register() -> None:
    """Register the fake kernels (once the extension has defined the ops)."""

    @torch.library.register_fake("causalprune_fast::quantize")
    def _quantize(x, bins, ranges=None):
        samples, columns = x.shape
        codes = x.new_empty((columns, samples), dtype=torch.uint8).t()
        return codes, x.new_empty((columns, 2), dtype=torch.float64)

    @torch.library.register_fake("causalprune_fast::pairwise_mi")
    def _pairwise_mi(x, y, bins_x, bins_y, groups=1, miller_madow=False):
        return x.new_empty((x.shape[1], y.shape[1]), dtype=torch.float32)

    @torch.library.register_fake("causalprune_fast::pairwise_mi_sums")
    def _pairwise_mi_sums(x, y, bins_x, bins_y, groups=1, miller_madow=False):
        return (
            x.new_empty((x.shape[1],), dtype=torch.float64),
            x.new_empty((y.shape[1],), dtype=torch.float64),
        )
