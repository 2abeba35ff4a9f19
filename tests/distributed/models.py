"""Models and settings shared by the distributed worker and the test that checks it."""

from __future__ import annotations

import torch
import torch.nn as nn

SETTINGS = {
    "cnn": {
        "kw": dict(samples=7, seed=3, progress=False, return_matrices=True, mode="propagated"),
        "fail_layer": "3",
    },
    # Local mode: each layer's 600 rows are split over the ranks (300 each).
    "cnn-local": {
        "kw": dict(examples=7, samples_per_layer=600, seed=3, progress=False, mode="local"),
        "fail_layer": "3",
        "sharded_budget": 440_000,
    },
    # Linear layers on [examples * tokens, features]: BLAS blocking may depend on the number of
    # rows, so the single-process reference uses the ranks' batches (3 examples each) to see
    # bit-identical activations.
    "block": {
        "kw": dict(samples=6, seed=4, progress=False, mode="propagated"),
        "single": dict(batch_size=3),
        "fail_layer": "attn.proj",
    },
}


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name.startswith("cnn"):
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, stride=2, groups=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 5 * 5, 4),
        )
        return net.eval(), (3, 11, 11)
    from timm.models.vision_transformer import Block

    return Block(dim=16, num_heads=2, mlp_ratio=2.0).eval(), (9, 16)
