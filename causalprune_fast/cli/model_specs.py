"""Building a model from a short spec, for the command line.

``torchvision:resnet50``  torchvision.models.get_model("resnet50") with random init
``timm:vit_base_patch16_224``  timm.create_model(..., pretrained=False)
``package.module:factory``  any importable callable returning an nn.Module
a directory  a Hugging Face checkpoint (scored and pruned block by block, not built here)

Weights come only from a local file (``load_weights``): nothing is downloaded.
"""

from __future__ import annotations

import importlib
import os

import torch
import torch.nn as nn


def is_checkpoint_dir(spec: str) -> bool:
    """Whether ``spec`` names a Hugging Face checkpoint directory: an existing directory. A
    spec that looks like a path (a path separator or a leading ``.``, and no ``:``) but is no
    directory is a FileNotFoundError naming it."""
    if os.path.isdir(spec):
        return True
    if ":" not in spec and (os.sep in spec or "/" in spec or spec.startswith(".")):
        raise FileNotFoundError(f"checkpoint directory {spec!r} does not exist")
    return False


def build_model(spec: str, **kwargs) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), randomly initialised.

    Raises:
        ValueError: a malformed spec, an unknown model, a missing package, a factory that does
            not accept ``kwargs`` or does not return an ``nn.Module``.
    """
    if not isinstance(spec, str):
        raise ValueError(f"model spec must be a str such as 'torchvision:resnet50', got {spec!r}")
    source, sep, name = spec.partition(":")
    if not sep or not name:
        raise ValueError(
            f"model spec must look like 'torchvision:resnet50', 'timm:vit_base_patch16_224', "
            f"'package.module:factory' or a checkpoint directory, got {spec!r}"
        )
    if source == "torchvision":
        try:
            import torchvision
        except ImportError as e:
            raise ValueError("torchvision models need torchvision: pip install torchvision") from e
        if name.lower() not in torchvision.models.list_models():
            raise ValueError(f"torchvision has no model {name!r}")
        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except TypeError as e:
            raise ValueError(f"torchvision:{name} does not accept {kwargs} ({e})") from e
    if source == "timm":
        try:
            import timm
        except ImportError as e:
            raise ValueError("timm models need timm: pip install timm") from e
        if not timm.is_model(name):
            raise ValueError(f"timm has no model {name!r}")
        try:
            return timm.create_model(name, pretrained=False, **kwargs)
        except TypeError as e:
            raise ValueError(f"timm:{name} does not accept {kwargs} ({e})") from e
    try:
        factory = getattr(importlib.import_module(source), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {name!r} from {source!r}: {e}") from e
    if not callable(factory):
        raise ValueError(f"{spec}: {name!r} is not callable")
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"{spec} cannot be called with {kwargs} ({e})") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state dict (a ``.pt``/``.pth`` file, optionally under a 'state_dict' or
    'model' key, or a ``.safetensors`` file) into ``model``, strictly.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file holds no state dict, or one that does not fit ``model``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except Exception as e:  # safetensors' own error types
            raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and weights-only errors of every kind
            raise ValueError(
                f"{path} could not be read as a torch state dict ({type(e).__name__}: {e})"
            ) from e
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights in {path} do not fit the model: {e}") from e
