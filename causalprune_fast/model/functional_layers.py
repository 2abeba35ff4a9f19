"""Layers measured where their weight is used by a functional call (docs/method.md section 3.1).

A module may use the weight of a Linear or ConvNd layer it holds without calling the layer:
torchvision's Swin attention calls ``F.linear(x, self.qkv.weight, self.qkv.bias)``, and a
custom attention may pass ``self.out_proj.weight`` to ``F.multi_head_attention_forward``. No
forward hook sees such a call. While the model runs, ``scoring/hooks.py`` watches the
functional forms of the measured layer types (a ``torch.overrides.TorchFunctionMode``) and
gives each call to the layer whose weight *is* (by identity) the call's weight argument. This
module knows what those calls are:

- :func:`linear_maps`: the linear maps of one call of ``F.linear``, ``F.conv1d`` / ``conv2d``
  / ``conv3d`` (positional or keyword arguments) or ``F.multi_head_attention_forward`` (its
  packed or separate in-projections and its out-projection, whose input is recomputed by
  calling the function once more with the identity as out-projection): each map's input,
  weight, bias, geometry and output.
- :class:`CallLayer`: a layer measured at its functional calls. Its ``module`` is a stand-in of
  the layer's own type that computes the call: the layer's weight tensor itself (not a copy),
  the call's bias and the call's stride, padding, dilation and groups, so that sampling, local
  mode and the fused kernels see the layer as it is called. ``owner`` is the layer's module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from causalprune_fast.model.layers import Layer
from causalprune_fast.model.response import ResponsePoint

_CONV_DIMS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}

#: The functions whose calls are given to the measured layers whose weights they use.
FUNCTIONS = {
    F.linear: "F.linear",
    F.conv1d: "F.conv1d",
    F.conv2d: "F.conv2d",
    F.conv3d: "F.conv3d",
    F.multi_head_attention_forward: "F.multi_head_attention_forward",
}


@dataclass
class LinearMap:
    """One linear map inside a functional call: its ``weight``, ``bias``, ``geometry`` (``()``
    for a linear map, ``(stride, padding, dilation, groups)`` for a convolution) and output
    (batch first), and its input: ``x``, or ``recompute()`` where it must be computed."""

    function: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    output: torch.Tensor
    x: torch.Tensor | None = None
    geometry: tuple = ()
    recompute: Callable[[], torch.Tensor] | None = None

    def input(self) -> torch.Tensor:
        """The map's input: ``[N, ..., in_features]`` or ``[N, C_in, *spatial]``."""
        if self.x is None:
            self.x = self.recompute()
        return self.x


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _tuple(v, dims: int) -> tuple:
    return tuple(int(i) for i in v) if isinstance(v, list | tuple) else (int(v),) * dims


def linear_maps(func, args: tuple, kwargs: dict, output) -> list[LinearMap]:
    """The linear maps of one call ``func(*args, **kwargs)`` that returned ``output``, for the
    functions of :data:`FUNCTIONS`; ``[]`` for any other function or a call whose input is
    unbatched."""
    name = FUNCTIONS.get(func)
    if name is None or not isinstance(output, torch.Tensor | tuple):
        return []
    if func is F.multi_head_attention_forward:
        return _attention_maps(name, args, kwargs, output)
    x, w = args[0], _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    if not (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)) or x.dim() < 2:
        return []
    if func is F.linear:
        return [LinearMap(name, w, b, output, x)]
    dims = _CONV_DIMS[func]
    if x.dim() != dims + 2:
        return []  # unbatched
    stride = _tuple(_arg(args, kwargs, 3, "stride", 1), dims)
    padding = _arg(args, kwargs, 4, "padding", 0)
    padding = padding if isinstance(padding, str) else _tuple(padding, dims)
    dilation = _tuple(_arg(args, kwargs, 5, "dilation", 1), dims)
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    return [LinearMap(name, w, b, output, x, (stride, padding, dilation, groups))]


_MHA_ARGS = (
    "query key value embed_dim_to_check num_heads in_proj_weight in_proj_bias bias_k bias_v "
    "add_zero_attn dropout_p out_proj_weight out_proj_bias training key_padding_mask "
    "need_weights attn_mask use_separate_proj_weight q_proj_weight k_proj_weight v_proj_weight"
).split()
_OUT_WEIGHT, _OUT_BIAS = _MHA_ARGS.index("out_proj_weight"), _MHA_ARGS.index("out_proj_bias")


def _attention_maps(name: str, args: tuple, kwargs: dict, output: tuple) -> list[LinearMap]:
    """The linear maps of ``F.multi_head_attention_forward`` (inputs ``[L, N, E]``, sequence
    first; the maps' inputs and outputs are returned batch first)."""
    a = {k: _arg(args, kwargs, i, k) for i, k in enumerate(_MHA_ARGS)}
    query, key, value = a["query"], a["key"], a["value"]
    if not all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in (query, key, value)):
        return []
    inputs = [t.transpose(0, 1) for t in (query, key, value)]
    bias = a["in_proj_bias"]
    biases = [None] * 3 if bias is None else list(bias.chunk(3))
    maps = []
    if a["use_separate_proj_weight"]:
        weights = [a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]]
    elif query is key and key is value and isinstance(a["in_proj_weight"], torch.Tensor):
        weights, inputs, biases = [a["in_proj_weight"]], inputs[:1], [bias]  # one map, 3E out
    elif isinstance(a["in_proj_weight"], torch.Tensor):
        weights = list(a["in_proj_weight"].chunk(3))
    else:
        weights = []
    for x, w, b in zip(inputs, weights, biases, strict=False):
        if isinstance(w, torch.Tensor):
            maps.append(LinearMap(name, w, b, F.linear(x, w, b), x))
    w_out = a["out_proj_weight"]
    if isinstance(w_out, torch.Tensor):

        def heads() -> torch.Tensor:  # the concatenated head outputs: out_proj's input
            again, more = list(args), dict(kwargs)
            eye = torch.eye(w_out.shape[1], dtype=w_out.dtype, device=w_out.device)
            b_out = a["out_proj_bias"]
            for i, k, v in (
                (_OUT_WEIGHT, "out_proj_weight", eye),
                (_OUT_BIAS, "out_proj_bias", None if b_out is None else torch.zeros_like(b_out)),
            ):
                if len(again) > i:
                    again[i] = v
                else:
                    more[k] = v
            with torch.no_grad():
                return F.multi_head_attention_forward(*again, **more)[0].transpose(0, 1)

        maps.append(
            LinearMap(
                name, w_out, a["out_proj_bias"], output[0].transpose(0, 1), None, recompute=heads
            )  # fmt: skip
        )
    return maps


def module_geometry(module: nn.Module) -> tuple | None:
    """The geometry :func:`linear_maps` gives for the layer's own call: ``()`` for a Linear,
    ``(stride, padding, dilation, groups)`` for a zero-padded convolution; None for other
    padding modes (whose own call pads the input first)."""
    if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return ()
    if module.padding_mode != "zeros":
        return None
    dims = len(module.kernel_size)
    padding = module.padding if isinstance(module.padding, str) else _tuple(module.padding, dims)
    return (_tuple(module.stride, dims), padding, _tuple(module.dilation, dims), module.groups)


def same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two biases are the same: both None, one tensor, or equal values."""
    if a is None or b is None:
        return a is None and b is None
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b)))


def stand_in(w: torch.Tensor, bias: torch.Tensor | None, geometry: tuple) -> nn.Module:
    """A Linear or ConvNd that computes a call with weight ``w`` (the tensor itself, not a
    copy), ``bias`` and ``geometry`` (see :class:`LinearMap`). Built on the meta device first,
    so that nothing is allocated; it is not part of the model."""
    if not geometry:
        shell = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    else:
        cls = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[w.dim()]
        stride, padding, dilation, groups = geometry
        shell = cls(
            w.shape[1] * groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride,
            padding,
            dilation,
            groups,
            bias=False,
            device="meta",
        )
    shell.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w, requires_grad=False)
    if bias is not None:
        b = bias
        shell.bias = b if isinstance(b, nn.Parameter) else nn.Parameter(b, requires_grad=False)
    return shell.eval()


class CallLayer(Layer):
    """A measured layer whose weight is used by functional calls (module docstring): ``module``
    is the :func:`stand_in` of its calls, ``owner`` its own module, ``how`` where it is called
    (``"F.linear in 'features.1.0.attn'"``)."""

    def __init__(
        self, name: str, owner: nn.Module, bias: torch.Tensor | None, geometry: tuple, how: str
    ):
        super().__init__(name, stand_in(owner.weight, bias, geometry))
        self.owner = owner
        self.how = how

    @property
    def kind(self) -> str:
        return type(self.owner).__name__

    def register_forward_hook(self, hook: Callable):
        """Its calls as a module (the functional ones are found by ``scoring/hooks.py``)."""
        return self.owner.register_forward_hook(hook)

    def register_forward_pre_hook(self, hook: Callable):
        return self.owner.register_forward_pre_hook(hook)

    def response_point(self, finder) -> ResponsePoint:
        return ResponsePoint(reason=f"measured at its functional calls ({self.how}): raw output")
