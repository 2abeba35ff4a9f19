"""Building a model from a short spec, for the command line.

``torchvision:resnet50``  torchvision.models.get_model("resnet50") with random init
``timm:vit_base_patch16_224``  timm.create_model(..., pretrained=False)
``package.module:factory``  any importable callable returning an nn.Module

Weights come only from a local file (``load_weights``): nothing is downloaded.
"""

from __future__ import annotations

import importlib
import os

import torch
import torch.nn as nn


def build_model(spec: str, **kwargs) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), randomly initialised."""
    source, sep, name = spec.partition(":")
    if not sep or not name:
        raise ValueError(
            f"model spec must look like 'torchvision:resnet50', 'timm:vit_base_patch16_224' "
            f"or 'package.module:factory', got {spec!r}"
        )
    if source == "torchvision":
        try:
            import torchvision
        except ImportError as e:
            raise ValueError("torchvision models need torchvision: pip install torchvision") from e
        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except ValueError as e:
            raise ValueError(f"torchvision has no model {name!r} ({e})") from e
    if source == "timm":
        try:
            import timm
        except ImportError as e:
            raise ValueError("timm models need timm: pip install timm") from e
        if not timm.is_model(name):
            raise ValueError(f"timm has no model {name!r}")
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        factory = getattr(importlib.import_module(source), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {name!r} from {source!r}: {e}") from e
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state dict (a ``.pt``/``.pth`` file, optionally under a 'state_dict' or
    'model' key, or a ``.safetensors`` file) into ``model``, strictly."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights in {path} do not fit the model: {e}") from e
