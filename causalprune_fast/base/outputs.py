"""A model's output as a list of tensors, whatever structure the model returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch


def output_tensors(output: object) -> list[torch.Tensor]:
    """Every tensor in a model's output: a tensor, or any nesting of tuples, lists, dicts
    (Hugging Face ``ModelOutput`` is one) and dataclasses."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(o: object) -> None:
        if isinstance(o, torch.Tensor):
            found.append(o)
            return
        if id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, Mapping):
            items = list(o.values())
        elif isinstance(o, tuple | list | set | frozenset):
            items = list(o)
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            items = [getattr(o, f.name, None) for f in dataclasses.fields(o)]
        else:
            return
        for item in items:
            walk(item)

    walk(output)
    return found
