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
