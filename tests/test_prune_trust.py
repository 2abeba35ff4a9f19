"""The user's model untouched (issue 11): prune(), CausalImportance and causal_structured
check every argument before any change, put the model back on any failure, and leave training
flags, requires_grad, hooks and the torch RNG as found; prune() protects the heads of any
output structure and says when Torch-Pruning removed fewer channels than asked for."""

from __future__ import annotations

import collections
import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
from nets import pooled_cnn

import causalprune_fast as cf
from causalprune_fast.base.outputs import output_tensors
from causalprune_fast.pruning.nn_prune import causal_structured

tp = pytest.importorskip("torch_pruning")
from causalprune_fast.pruning.importance import CausalImportance  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer samples than bins")
KW = dict(samples=16, seed=0)
SHAPE = (3, 8, 8)


def cnn() -> nn.Sequential:
    return pooled_cnn()


def dressed_cnn() -> tuple[nn.Sequential, list]:
    """A model as a user may hand it over: training, one BatchNorm frozen in eval, one frozen
    weight, hooks registered (their handles returned)."""
    model = cnn().train()
    model[1].eval()
    model[0].weight.requires_grad_(False)
    calls = []
    handles = [
        model[3].register_forward_hook(lambda m, a, o: calls.append("fwd")),
        model[0].register_forward_pre_hook(lambda m, a: None),
        model.register_full_backward_hook(lambda m, gi, go: None),
    ]
    return model, handles


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def state_of(model: nn.Module) -> dict:
    """Everything a caller may rely on, by identity and by value."""
    return {
        "params": {
            n: (p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()
        },
        "buffers": {n: (b, b.clone()) for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: [dict(getattr(m, d)) for d in HOOK_DICTS] for n, m in model.named_modules()},
        "attrs": {
            n: {k: v for k, v in vars(m).items() if not k.startswith("_")}
            for n, m in model.named_modules()
        },
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(before: dict, model: nn.Module) -> None:
    after = state_of(model)
    assert after["params"].keys() == before["params"].keys()
    for n, (p, value, grad) in before["params"].items():
        q, new_value, new_grad = after["params"][n]
        assert q is p, f"parameter {n} was replaced"
        assert torch.equal(new_value, value) and new_grad == grad, n
    assert after["buffers"].keys() == before["buffers"].keys()
    for n, (b, value) in before["buffers"].items():
        assert after["buffers"][n][0] is b and torch.equal(after["buffers"][n][1], value), n
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["attrs"] == before["attrs"]
    assert torch.equal(after["rng"], before["rng"]), "the global torch RNG was consumed"


# ----------------------------------------------------------------------------- prune()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(ratio=1.0), ValueError, "ratio must be in"),
        (dict(ratio=-0.1), ValueError, "ratio must be in"),
        (dict(ratio=float("nan")), ValueError, "ratio must be in"),
        (dict(ratio="0.5"), ValueError, "ratio must be in"),
        (dict(ratio=True), ValueError, "ratio must be in"),
        (dict(input_shape=(3, 0, 8)), ValueError, "input_shape must be"),
        (dict(input_shape="3,8,8"), ValueError, "input_shape must be"),
        (dict(input_shape=(3.0, 8, 8)), ValueError, "input_shape must be"),
        (dict(input_shape=None), ValueError, "give input_shape"),
        (dict(example_input=torch.zeros(3)), ValueError, "example_input must be a tensor"),
        (dict(sequential=1), ValueError, "sequential must be True or False"),
        (dict(global_pruning="yes"), ValueError, "global_pruning must be True or False"),
        (dict(ignored_layers=[nn.Linear(2, 2)]), ValueError, "not part of the model"),
        (dict(ignored_layers=["7"]), ValueError, "ignored_layers must hold modules"),
        (dict(ignored_layers=nn.Linear(2, 2)), ValueError, "wrap a single module"),
        (dict(round_to=0), ValueError, "round_to must be"),
        (dict(iterative_steps=0), ValueError, "iterative_steps must be"),
        (dict(sequential=True, iterative_steps=2), ValueError, "iterative_steps must be 1"),
        (dict(direction="up"), ValueError, "direction must be"),
        (dict(group_reduction="median"), ValueError, "group_reduction must be"),
        (dict(normalizer="l2"), ValueError, "normalizer must be"),
        (dict(on_shortfall="maybe"), ValueError, "on_shortfall must be"),
        (dict(bogus=1), TypeError, "unexpected keyword argument.*bogus"),
        # found by score_model, during the work: the model must still be as found
        (dict(bins=1), ValueError, "bins must be in"),
    ],
)
def test_bad_arguments_raise_naming_them_and_leave_the_model_untouched(kwargs, error, match):
    model, _ = dressed_cnn()
    args = dict(ratio=0.25, input_shape=SHAPE, **KW)
    args.update(kwargs)
    ratio, shape = args.pop("ratio"), args.pop("input_shape")
    before = state_of(model)
    with pytest.raises(error, match=match):
        cf.prune(model, ratio, shape, **args)
    assert_unchanged(before, model)


def test_a_failure_half_way_puts_the_model_back(monkeypatch):
    model, handles = dressed_cnn()
    before = state_of(model)
    original = CausalImportance.scores
    seen = []

    def interrupted(self, m=None):
        seen.append(model[0].out_channels)
        if model[0].out_channels != 12:  # the first group is pruned: a half-pruned model
            raise KeyboardInterrupt
        return original(self, m)

    monkeypatch.setattr(CausalImportance, "scores", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cf.prune(model, 0.25, SHAPE, sequential=True, **KW)
    assert seen[-1] == 9  # the interruption did come after a change
    assert_unchanged(before, model)
    model.eval()
    assert model(torch.randn(2, *SHAPE)).shape == (2, 4)
    for h in handles:  # the user's hook handles still work
        h.remove()
    assert not model[3]._forward_hooks and not model[0]._forward_pre_hooks


def test_prune_keeps_training_flags_requires_grad_hooks_and_rng():
    model, handles = dressed_cnn()
    training = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    pruned, report = cf.prune(model, 0.25, SHAPE, **KW)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in pruned.named_modules()} == training
    assert pruned[0].out_channels == 9
    assert not pruned[0].weight.requires_grad  # a new (pruned) tensor, still frozen
    assert pruned[0].bias.requires_grad and pruned[3].weight.requires_grad
    assert len(pruned[3]._forward_hooks) == 1 and len(pruned[0]._forward_pre_hooks) == 1
    for h in handles:
        h.remove()
    assert not pruned[3]._forward_hooks


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = cnn()[:7]
        self.fc = nn.Linear(10, 4)


@dataclasses.dataclass
class Output(collections.OrderedDict):
    """Shaped like Hugging Face's ModelOutput: a dataclass and an ordered dict."""

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            self[f.name] = getattr(self, f.name)


@dataclasses.dataclass
class PlainOutput:
    hidden: torch.Tensor
    logits: torch.Tensor


WRAPS = {
    "dict": lambda h, y: {"logits": y, "hidden": h},
    "tuple": lambda h, y: (h, y),
    "nested": lambda h, y: [{"out": (y,)}, h],
    "model_output": lambda h, y: Output(logits=y, hidden=h),
    "dataclass": lambda h, y: PlainOutput(hidden=h, logits=y),
}


@pytest.mark.parametrize("kind", list(WRAPS))
def test_the_head_is_protected_whatever_the_output_structure(kind):
    class Net(Features):
        def forward(self, x):
            h = self.body(x)
            return WRAPS[kind](h, self.fc(h))

    model = Net().eval()
    pruned, report = cf.prune(model, 0.25, SHAPE, **KW)
    assert pruned.fc.out_features == 4 and "fc" not in report.groups
    assert report.channels["fc"] == (4, 4)
    assert report.groups == {"body.0": (12, 9), "body.3": (10, 7)}
    out = output_tensors(pruned(torch.randn(2, *SHAPE)))
    assert sorted(tuple(t.shape) for t in out) == [(2, 4), (2, 7)]


def test_output_tensors_flattens_any_nesting_once():
    a, b, c = torch.zeros(1), torch.ones(2), torch.ones(3)
    shared = [a]
    assert output_tensors({"x": [a, (b, {"y": c})], "n": None, "s": "text"}) == [a, b, c]
    assert output_tensors(Output(logits=a, hidden=b)) == [a, b]
    assert output_tensors((shared, shared)) == [a]
    assert output_tensors(3) == []


def test_a_ratio_torch_pruning_cannot_reach_warns_with_the_numbers():
    model = cnn().eval()
    with pytest.warns(UserWarning, match=r"removed 11 of the 22 channels .*50\.0%.*90\.0%") as w:
        _, report = cf.prune(model, 0.9, SHAPE, **KW)
    assert "3 (10 -> 10, wanted 1 left)" in str(w[-1].message)
    assert report.groups == {"0": (12, 1), "3": (10, 10)}
    assert report.short == {"3": 9}
    assert report.ratio == 0.9 and report.achieved == pytest.approx(0.5)
    assert "group 3: 10 -> 10 channels (short of the ratio: wanted 1 left)" in report.summary()


def test_a_reachable_ratio_does_not_warn_and_reports_every_group():
    model = cnn().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="prune")
        _, report = cf.prune(model, 0.25, SHAPE, **KW)
    assert report.groups == {"0": (12, 9), "3": (10, 7)} and report.short == {}
    assert "group 0: 12 -> 9 channels" in report.summary()


def test_on_shortfall_raise_puts_the_model_back_and_ignore_is_silent():
    model, _ = dressed_cnn()
    before = state_of(model)
    with pytest.raises(ValueError, match="removed 11 of the 22 channels.*left as it was"):
        cf.prune(model, 0.9, SHAPE, on_shortfall="raise", **KW)
    assert_unchanged(before, model)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="prune")
        _, report = cf.prune(model, 0.9, SHAPE, on_shortfall="ignore", **KW)
    assert report.short == {"3": 9}


def test_global_pruning_that_would_empty_a_group_warns(monkeypatch):
    # Channels of layer 3 all rank below those of layer 0: the global threshold at 50% takes
    # all ten of them, Torch-Pruning refuses to empty the group, and only one channel goes.
    def ranked(self, group):
        root = group[0].dep.target.module
        n = len(group[0].idxs)
        return torch.arange(n, dtype=torch.float32) + (100.0 if root.out_channels == 12 else 0.0)

    monkeypatch.setattr(CausalImportance, "__call__", ranked)
    with pytest.warns(UserWarning, match=r"removed 1 of the 22 channels.*global_pruning"):
        _, report = cf.prune(cnn().eval(), 0.5, SHAPE, global_pruning=True, **KW)
    assert report.groups == {"0": (12, 11), "3": (10, 10)}


# ----------------------------------------------------------------------------- CausalImportance


def conv0_group(model):
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, *SHAPE))
    return dg.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(12)))


def test_importance_leaves_the_model_as_found_and_needs_no_private_graph():
    model, _ = dressed_cnn()
    group = conv0_group(model)
    group._DG = None  # Torch-Pruning's private link to its graph is not used
    before = state_of(model)
    imp = CausalImportance(model, SHAPE, **KW)(group)
    assert imp.shape == (12,) and imp.dtype == torch.float32
    assert_unchanged(before, model)


def test_importance_uses_torch_pruning_normalizers():
    model = cnn().eval()
    group = conv0_group(model)
    raw = CausalImportance(model, SHAPE, normalizer=None, **KW)(group)
    mean = CausalImportance(model, SHAPE, normalizer="mean", **KW)(group)
    torch.testing.assert_close(mean, raw / raw.mean())
    default = CausalImportance(model, SHAPE, **KW)(group)  # "mean", as Torch-Pruning's own
    torch.testing.assert_close(default, mean)
    gaussian = CausalImportance(model, SHAPE, normalizer="gaussian", **KW)(group)
    torch.testing.assert_close(gaussian, (raw - raw.mean()) / (raw.std() + 1e-8))
    custom = CausalImportance(model, SHAPE, normalizer=lambda t: t * 2, **KW)(group)
    torch.testing.assert_close(custom, raw * 2)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        (((3, 8, 8),), {}, ValueError, "model must be the torch.nn.Module"),
        (("model", (3, 0, 8)), {}, ValueError, "input_shape must be"),
        (("model",), {}, ValueError, "give input_shape"),
        (("model", SHAPE), dict(normalizer="l2"), ValueError, "normalizer must be"),
        (("model", SHAPE), dict(group_reduction="prod"), ValueError, "group_reduction must be"),
        (("model", SHAPE), dict(sample=4), TypeError, "unexpected keyword argument.*sample"),
        (("model",), dict(example_input=torch.zeros(3)), ValueError, "example_input must be"),
    ],
)
def test_importance_argument_errors(args, kwargs, error, match):
    model = cnn()
    args = tuple(model if a == "model" else a for a in args)
    with pytest.raises(error, match=match):
        CausalImportance(*args, **kwargs)


def test_importance_rejects_a_group_of_another_model():
    imp = CausalImportance(cnn(), SHAPE, **KW)
    with pytest.raises(ValueError, match="not part of the model"):
        imp(conv0_group(cnn()))


# ----------------------------------------------------------------------------- causal_structured


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(module="conv"), "module must be a torch.nn.Module"),
        (dict(name="nope"), "no parameter called 'nope'"),
        (dict(name=0), "name must be"),
        (dict(dim=4), "dim=4 is out of range"),
        (dict(dim=True), "dim must be an int"),
        (dict(amount=11), "amount=11 channels, but 10"),
        (dict(amount=-1), "amount=-1 channels"),
        (dict(amount=True), "amount must be"),
        (dict(amount=1.0), "amount must be a fraction"),
        (dict(scores=torch.ones(10, 1)), "must be 1-D"),
        (dict(scores=torch.tensor([float("nan")] * 10)), "must be finite"),
        (dict(scores=torch.ones(9)), "10 output channels"),
        (dict(scores=None), "scores are required"),
    ],
)
def test_causal_structured_errors_leave_the_module_untouched(kwargs, match):
    conv = nn.Conv2d(3, 10, 3).train()
    conv.register_forward_hook(lambda m, a, o: None)
    before = state_of(conv)
    args = dict(module=conv, name="weight", amount=0.3, scores=torch.arange(10.0), dim=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        causal_structured(**args)
    assert_unchanged(before, conv)
    assert set(conv._parameters) == {"weight", "bias"}


def test_causal_structured_after_earlier_pruning_checks_the_channels_left():
    conv = nn.Conv2d(3, 10, 3)
    causal_structured(conv, amount=8, scores=torch.arange(10.0))
    with pytest.raises(ValueError, match="amount=3 channels, but 2"):
        causal_structured(conv, amount=3, scores=torch.arange(10.0))
    causal_structured(conv, amount=1, scores=torch.arange(10.0))
    assert int((conv.weight_mask.sum(dim=(1, 2, 3)) > 0).sum()) == 1


def test_a_classifier_behind_activation_pooling_and_flatten_is_kept():
    """SqueezeNet-style head: the last conv's channels are the classes, but its output is not
    returned as is; prune must not change the output shape."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 5, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    pruned, report = cf.prune(model, 0.5, SHAPE, **KW)
    assert pruned(torch.randn(2, *SHAPE)).shape == (2, 5)
    assert report.channels["0"] == (8, 4)
