"""prune()'s MAC and parameter counts come from Torch-Pruning's op counter, whose ptflops code
prints a note to stdout when it reaches a module instance twice (a module shared by two
parents, as in timm's CoaT). The note stays off the user's stdout; the counts are
Torch-Pruning's."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch.nn as nn

tp = pytest.importorskip("torch_pruning")

from causalprune_fast.pruning.report import count_macs_and_params  # noqa: E402


def shared() -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    return nn.Sequential(nn.Sequential(conv, nn.ReLU()), nn.Sequential(conv, nn.ReLU())).eval()


def test_the_op_counter_note_stays_off_stdout(capsys):
    x = torch.randn(1, 4, 8, 8)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        expected = tp.utils.count_ops_and_params(shared(), x)
    assert "already defined" in printed.getvalue()  # what Torch-Pruning itself prints here
    assert count_macs_and_params(shared(), x) == expected
    out = capsys.readouterr()
    assert out.out == "" and "already defined" not in out.err
