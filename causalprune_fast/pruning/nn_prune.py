"""Causal scores as a method of ``torch.nn.utils.prune``.

    scores = causalprune_fast.score_model(model, (3, 224, 224))
    causal_structured(model.layer1[0].conv1, "weight", amount=0.3,
                      scores=scores["layer1.0.conv1"])
    prune.remove(model.layer1[0].conv1, "weight")   # make it permanent, as usual

Structured along the output-channel dimension (dim 0), like ``prune.ln_structured``: the
``amount`` (a fraction, or a number of channels) of output channels with the lowest causal
scores are masked to zero. It composes with other pruning methods through
``torch.nn.utils.prune``'s containers (channels already pruned stay pruned) and is removed with
``prune.remove``. Masking keeps the tensor shapes; to remove channels physically use
:func:`causalprune_fast.prune`.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn as nn
from torch.nn.utils import prune

__all__ = ["CausalStructured", "causal_structured"]


class CausalStructured(prune.BasePruningMethod):
    """Prune the output channels with the lowest causal scores (structured, ``dim=0``)."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount: int | float, scores: torch.Tensor, dim: int = 0):
        prune._validate_pruning_amount_init(amount)
        scores = torch.as_tensor(scores)
        if scores.dim() != 1:
            raise ValueError(
                f"scores must be 1-D (one per output channel), got shape {tuple(scores.shape)}"
            )
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("scores must be finite")
        self.amount = amount
        self.scores = scores.detach().double().cpu()
        self.dim = dim

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        channels = t.shape[self.dim]
        if len(self.scores) != channels:
            raise ValueError(
                f"scores has {len(self.scores)} entries but the tensor has {channels} output "
                f"channels along dim {self.dim}"
            )
        prune._validate_pruning_amount(self.amount, channels)
        n_prune = prune._compute_nparams_toprune(self.amount, channels)
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        if n_prune == 0:
            return mask
        drop = torch.topk(self.scores, k=n_prune, largest=False).indices.tolist()
        index = [slice(None)] * t.dim()
        index[self.dim] = drop
        mask[tuple(index)] = 0
        return mask

    @classmethod
    def apply(cls, module, name, amount, scores, dim=0, importance_scores=None):
        """Attach the method to ``module.<name>``. After earlier structured pruning along
        ``dim``, torch's pruning container hands ``compute_mask`` only the channels still
        kept, so the scores are narrowed to those channels here."""
        scores = torch.as_tensor(scores)
        mask = getattr(module, f"{name}_mask", None)
        if mask is not None and scores.dim() == 1 and len(scores) == mask.shape[dim]:
            others = [d for d in range(mask.dim()) if d != dim % mask.dim()]
            keep = (mask.sum(dim=others) != 0).cpu() if others else (mask != 0).cpu()
            scores = scores[keep]
        return super().apply(
            module,
            name,
            amount=amount,
            scores=scores,
            dim=dim,
            importance_scores=importance_scores,
        )


def causal_structured(
    module: nn.Module,
    name: str = "weight",
    amount: int | float = 0.3,
    scores: torch.Tensor | None = None,
    dim: int = 0,
) -> nn.Module:
    """Mask the ``amount`` of output channels of ``module.<name>`` with the lowest ``scores``.

    Args:
        module: a layer, e.g. ``nn.Conv2d`` or ``nn.Linear``.
        name: the parameter to prune (``"weight"``; ``"bias"`` works too with ``dim=0``).
        amount: fraction of channels in [0, 1), or a number of channels.
        scores: 1-D causal scores of the output channels, e.g. ``scores["layer1.0.conv1"]``.
        dim: the output-channel dimension (0 for conv and linear weights).

    Returns:
        ``module``, with ``<name>_orig`` and ``<name>_mask`` as with every prune method.

    Raises:
        ValueError: a bad argument, naming it; raised before the module is changed.
    """
    _check_arguments(module, name, amount, scores, dim)
    CausalStructured.apply(module, name, amount=amount, scores=scores, dim=dim)
    return module


def _check_arguments(module, name, amount, scores, dim) -> None:
    """Everything :func:`causal_structured` is given, checked before the module is touched:
    torch's pruning container would otherwise fail half-way through re-registering the
    parameter."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise ValueError(f"name must be the name of a parameter (a str), got {name!r}")
    t = getattr(module, name, None)
    if not isinstance(t, torch.Tensor) or (
        name not in module._parameters and f"{name}_orig" not in module._parameters
    ):
        raise ValueError(f"name: {type(module).__name__} has no parameter called {name!r}")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise ValueError(f"dim must be an int, got {dim!r}")
    if not -t.dim() <= dim < t.dim():
        raise ValueError(f"dim={dim} is out of range for {name} of shape {tuple(t.shape)}")
    if scores is None:
        raise ValueError("scores are required: the causal scores of the module's output channels")
    try:
        s = torch.as_tensor(scores)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"scores must be a 1-D tensor of numbers ({e})") from None
    if s.is_meta:
        raise ValueError("scores are on the 'meta' device (no data): give real scores")
    if s.dim() != 1:
        raise ValueError(f"scores must be 1-D (one per output channel), got shape {tuple(s.shape)}")
    if s.is_complex() or s.dtype == torch.bool or not bool(torch.isfinite(s.double()).all()):
        raise ValueError("scores must be finite real numbers")
    channels = t.shape[dim]
    if len(s) != channels:
        raise ValueError(
            f"scores has {len(s)} entries but {name} has {channels} output channels along dim {dim}"
        )
    mask = getattr(module, f"{name}_mask", None)
    remaining = channels
    if isinstance(mask, torch.Tensor) and mask.shape == t.shape:
        others = [d for d in range(mask.dim()) if d != dim % mask.dim()]
        remaining = int(((mask.sum(dim=others) if others else mask) != 0).sum())
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise ValueError(
            f"amount must be a fraction in [0, 1) or a number of channels, got {amount!r}"
        )
    if isinstance(amount, numbers.Integral):
        if not 0 <= amount <= remaining:
            raise ValueError(
                f"amount={amount} channels, but {remaining} channel(s) of {name} are left to prune"
            )
    elif not 0.0 <= amount < 1.0:
        raise ValueError(
            f"amount must be a fraction in [0, 1) or a number of channels, got {amount}"
        )
