"""Where each layer's outputs are measured: its response point (docs/method.md section 3).

The response point is after the per-channel normalisation and the elementwise activation that
directly follow the layer (conv -> bn -> relu is measured after relu), found from the model's
graph: the module that owns the layer is traced with ``torch.fx`` (child modules kept as
leaves), and the layer's output is followed while its only user is a BatchNorm (at most one),
an elementwise activation (at most one, after the norm), or an identity-like module (Dropout,
Identity). When the output leaves the owner's graph, the search continues in the owner's
parent. Where tracing fails, or the next operation is something else (a residual add, a
reshape), the raw layer output (or the output after what was found) is used, and the reason is
recorded.

The response is computed from the captured layer output by applying the found modules and
functions again, which is exact for eval-mode BatchNorm and stateless activations, and never
depends on forward hooks of shared modules (torchvision reuses one ReLU module several times).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
PASSTHROUGH_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)
ACTIVATION_TYPES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
)
# Activation classes of other libraries (timm's GELU, Swish, HardSwishMe, ...), by name.
ACTIVATION_NAMES = {
    "GELU",
    "GELUTanh",
    "QuickGELU",
    "Swish",
    "SiLU",
    "Mish",
    "HardSwish",
    "HardSigmoid",
    "HardSwishMe",
    "HardSigmoidMe",
    "SwishMe",
    "MishMe",
    "Sigmoid",
    "Tanh",
    "ReLU",
    "ReLU6",
    "PReLU",
    "LeakyReLU",
    "ELU",
    # transformers.activations (elementwise, stateless)
    "NewGELUActivation",
    "GELUActivation",
    "SiLUActivation",
    "FastGELUActivation",
    "QuickGELUActivation",
    "ClippedGELUActivation",
    "AccurateGELUActivation",
    "MishActivation",
    "LaplaceActivation",
    "ReLUSquaredActivation",
    "SqrtSoftplusActivation",
}
ACTIVATION_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.softsign,
    F.tanhshrink,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.sigmoid,
    torch.nn.functional.tanh,
}
ACTIVATION_METHODS = {"relu", "sigmoid", "tanh", "relu_", "sigmoid_", "tanh_"}


@dataclass
class ResponsePoint:
    """How to turn a layer's raw output into its response."""

    steps: list[tuple[str, Callable]] = field(default_factory=list)  # (label, fn)
    reason: str | None = None  # why the search stopped short of a norm + activation
    model_output: bool = False  # the response is (part of) the model's output

    @property
    def description(self) -> str:
        return " -> ".join(["output", *(label for label, _ in self.steps)])

    def apply(self, out: torch.Tensor) -> torch.Tensor:
        """The response for the captured layer output (which is never modified in place)."""
        fresh = False
        for _, fn in self.steps:
            if getattr(fn, "inplace", False) and not fresh:
                out = out.clone()
            out = fn(out)
            fresh = True
        return out


class _LeafTracer(torch.fx.Tracer):
    """Traces one module's own forward, keeping every child module as a leaf call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _is_activation_module(m: nn.Module) -> bool:
    return isinstance(m, ACTIVATION_TYPES) or type(m).__name__ in ACTIVATION_NAMES


def _function_step(node: torch.fx.Node) -> tuple[str, Callable] | None:
    """An elementwise activation applied by a function or method to ``node``'s input alone."""
    if node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
        args = [a for a in node.args[1:] if isinstance(a, torch.fx.Node)]
        kwargs = {k: v for k, v in node.kwargs.items() if not isinstance(v, torch.fx.Node)}
        if args or len(kwargs) != len(node.kwargs):
            return None
        consts = node.args[1:]
        fn = node.target
        kwargs.pop("inplace", None)
        label = fn.__name__ if not consts and not kwargs else f"{fn.__name__}(...)"
        return label, lambda t, fn=fn, consts=consts, kw=kwargs: fn(t, *consts, **kw)
    if node.op == "call_method" and node.target in ACTIVATION_METHODS and len(node.args) == 1:
        name = node.target.rstrip("_")
        return name, lambda t, name=name: getattr(t, name)()
    return None


class ResponseFinder:
    """Finds response points of the layers of one model, tracing each owner module once."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._graphs: dict[str, torch.fx.Graph | str] = {}

    def _graph(self, owner: str) -> torch.fx.Graph | str:
        if owner not in self._graphs:
            module = self.model.get_submodule(owner) if owner else self.model
            try:
                self._graphs[owner] = _LeafTracer().trace(module)
            except Exception as e:  # torch.fx raises many kinds on untraceable code
                self._graphs[owner] = (
                    f"torch.fx could not trace '{owner or '<root>'}' ({type(e).__name__}: {e})"
                )
        return self._graphs[owner]

    def find(self, name: str) -> ResponsePoint:
        """The response point of the layer with qualified name ``name``."""
        point = ResponsePoint()
        stage = 0  # 0: a norm or an activation may follow; 1: only an activation; 2: done
        child = name
        while child:
            owner, _, local = child.rpartition(".")
            graph = self._graph(owner)
            if isinstance(graph, str):
                point.reason = graph
                return point
            nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == local]
            if len(nodes) != 1:
                point.reason = f"'{child}' is called {len(nodes)} times in '{owner or '<root>'}'"
                return point
            node = nodes[0]
            owner_module = self.model.get_submodule(owner) if owner else self.model
            while True:
                users = list(node.users)
                if len(users) != 1:
                    point.reason = f"the output of '{node.name}' has {len(users)} users"
                    return point
                user = users[0]
                if user.op == "output":
                    break  # continue in the owner's parent
                if user.op == "call_module":
                    m = owner_module.get_submodule(user.target)
                    label = f"{owner + '.' if owner else ''}{user.target}"
                    if isinstance(m, PASSTHROUGH_TYPES):
                        node = user
                        continue
                    if stage == 0 and isinstance(m, NORM_TYPES):
                        point.steps.append((label, m))
                        stage, node = 1, user
                        continue
                    if stage <= 1 and _is_activation_module(m):
                        point.steps.append((label, m))
                        return point
                    point.reason = f"next is '{label}' ({type(m).__name__})"
                    return point
                step = _function_step(user) if stage <= 1 else None
                if step is not None:
                    point.steps.append(step)
                    return point
                if user.op == "call_function" and user.target in (operator.getitem,):
                    point.reason = f"next is indexing ('{user.name}')"
                    return point
                target = getattr(user.target, "__name__", user.target)
                point.reason = f"next is {user.op} '{target}'"
                return point
            child = owner
        point.reason = "the layer's output is the model's output"
        point.model_output = True
        return point
