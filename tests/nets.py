"""Small networks shared by the test files."""

from __future__ import annotations

import torch
import torch.nn as nn


def pooled_cnn(width: int = 12, second: int = 10, classes: int = 4) -> nn.Sequential:
    """conv -> bn -> relu -> conv -> relu -> global pool -> flatten -> linear, seeded, in
    training mode (as built)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, second, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(second, classes),
    )


def structured_conv(conv: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``conv`` with a known structure (output 0 reads input channel 0's centre tap, weight
    3; every other weight scaled by 0.1) and per-channel noise ranges ``(lo, hi)``, for
    comparing two ways of making its rows in distribution (``lo``, ``hi`` drawn from torch's
    generator)."""
    k = conv.weight[0, 0].numel()
    with torch.no_grad():
        conv.weight.mul_(0.1)
        conv.weight[0, 0].view(-1)[k // 2] = 3.0
    lo, hi = -torch.rand(conv.in_channels), torch.rand(conv.in_channels) + 0.5
    return conv, lo, hi
