"""score_model leaves the user's model and process as it found them (issue 11): parameters,
buffers, every submodule's own train/eval flag, requires_grad, gradients, hooks and the global
random number generators, on success, on an error raised mid-run and on KeyboardInterrupt."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn

import causalprune_fast as cf

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")
FAST = dict(samples=8, progress=False)


class RaiseOnBatch(nn.Module):
    """Identity that raises ``error`` on a batch of several examples: it passes the probe
    and graph passes (one example) and fails in the first scoring pass."""

    def __init__(self, error: BaseException | None = None):
        super().__init__()
        self.error, self.raised = error, False

    def forward(self, x):
        if self.error is not None and isinstance(x, torch.Tensor) and x.shape[0] > 1:
            self.raised = True
            raise self.error
        return x


def make_model(error: BaseException | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        RaiseOnBatch(error),
        nn.Conv2d(6, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    net.train()
    net[5].eval()  # a frozen eval BatchNorm inside a training model
    net[4].weight.requires_grad_(False)  # a frozen weight
    net[7].weight.grad = torch.ones_like(net[7].weight)  # a gradient left by the user
    net[0].register_forward_hook(lambda m, a, o: None)  # a hook of the user's own
    net.register_forward_pre_hook(lambda m, a: None)
    return net


def hook_counts(m: nn.Module) -> tuple[int, ...]:
    return tuple(
        len(getattr(m, attr))
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        )
    )


def snapshot(net: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "training": {n: m.training for n, m in net.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()},
        "hooks": {n: hook_counts(m) for n, m in net.named_modules()},
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_unchanged(before: dict, net: nn.Module) -> None:
    after = snapshot(net)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["grad_enabled"] == before["grad_enabled"]
    assert after["python_rng"] == before["python_rng"]
    assert np.array_equal(after["numpy_rng"], before["numpy_rng"])
    assert torch.equal(after["torch_rng"], before["torch_rng"])
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for k, g in before["grad"].items():
        assert (after["grad"][k] is None) == (g is None), k
        if g is not None:
            assert torch.equal(after["grad"][k], g), k


@pytest.mark.parametrize("mode", ["propagated", "local"])
def test_model_and_process_unchanged_on_success(mode):
    net = make_model()
    before = snapshot(net)
    scores = cf.score_model(net, (3, 8, 8), mode=mode, batch_size=4, **FAST)
    assert len(scores) == 3
    assert_unchanged(before, net)


@pytest.mark.parametrize("mode", ["propagated", "local"])
def test_model_and_process_unchanged_on_error_mid_run(mode):
    net = make_model(RuntimeError("boom in a scoring pass"))
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom in a scoring pass"):
        cf.score_model(net, (3, 8, 8), mode=mode, **FAST)
    assert net[3].raised  # after the probe pass
    assert_unchanged(before, net)


def test_model_and_process_unchanged_on_keyboard_interrupt_in_a_module():
    net = make_model(KeyboardInterrupt())
    before = snapshot(net)
    with pytest.raises(KeyboardInterrupt):
        cf.score_model(net, (3, 8, 8), mode="propagated", batch_size=4, **FAST)
    assert_unchanged(before, net)


def test_model_and_process_unchanged_on_keyboard_interrupt_in_a_hook():
    net = make_model()
    calls = []

    def interrupt(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    handle = net[4].register_forward_hook(interrupt)
    before = snapshot(net)
    with pytest.raises(KeyboardInterrupt):
        cf.score_model(net, (3, 8, 8), mode="local", **FAST)
    assert_unchanged(before, net)
    handle.remove()
