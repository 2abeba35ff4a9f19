"""Causal scores as a Torch-Pruning importance criterion.

    import torch_pruning as tp
    from causalprune_fast.integrations.torch_pruning import CausalImportance

    imp = CausalImportance(input_shape=(3, 224, 224), direction="in")
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.3,
                                  ignored_layers=[model.fc])
    pruner.step()

Called with a dependency group, :class:`CausalImportance` returns the 1-D importance of the
group's channels like Torch-Pruning's own criteria: out-channel members contribute their
``incoming`` MI, in-channel members their ``outgoing`` MI, as ``direction`` says (METHOD.md
section 6), reduced over the coupled layers (``group_reduction``) and optionally normalised
(``normalizer``, the same names as ``tp.importance.GroupMagnitudeImportance``). The model is
reached through ``group._DG.model``; scores are computed once per model state (parameter
shapes, storage and in-place versions) and recomputed when it changes, so iterative pruning
(``iterative_steps > 1``) and fine-tuning between steps always see fresh scores.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from causalprune_fast.channel_graph import channel_scores, members_of_group
from causalprune_fast.results import CausalScores
from causalprune_fast.score import score_model

__all__ = ["CausalImportance"]

NORMALIZERS = (None, "mean", "max", "sum", "standarization")


def model_state_key(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced, reshaped or updated in place."""
    return tuple(
        (name, tuple(t.shape), t.data_ptr(), t._version)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    )


class CausalImportance(tp.importance.Importance):
    """Torch-Pruning importance from causal scores.

    Args:
        input_shape: one example's shape, without the batch dimension (or give
            ``example_input`` among the keyword arguments).
        direction: ``"in"``, ``"out"`` or ``"both"``.
        group_reduction: ``"sum"``, ``"mean"`` or ``"max"`` over the coupled layers.
        normalizer: ``None``, ``"mean"``, ``"max"``, ``"sum"`` or ``"standarization"``.
        **score_model_kwargs: passed to :func:`causalprune_fast.score_model` (``mode``,
            ``bins``, ``samples``, ``input_range``, ``seed``, ...). ``progress`` defaults to
            False.
    """

    def __init__(
        self,
        input_shape=None,
        *,
        direction: str = "in",
        group_reduction: str = "sum",
        normalizer: str | None = None,
        **score_model_kwargs,
    ):
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction must be 'in', 'out' or 'both', got {direction!r}")
        if group_reduction not in ("sum", "mean", "max"):
            raise ValueError(
                f"group_reduction must be 'sum', 'mean' or 'max', got {group_reduction!r}"
            )
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
        if input_shape is None and "example_input" not in score_model_kwargs:
            raise ValueError("give input_shape (or example_input=...)")
        self.input_shape = input_shape
        self.direction = direction
        self.group_reduction = group_reduction
        self.normalizer = normalizer
        self.score_model_kwargs = {"progress": False, **score_model_kwargs}
        self._key: tuple | None = None
        self._scores: CausalScores | None = None
        self.rescored = 0  # how many times scores were computed (visible to tests and users)

    def scores(self, model: nn.Module) -> CausalScores:
        """The causal scores of ``model`` in its current state (cached)."""
        key = model_state_key(model)
        if self._scores is None or key != self._key:
            self._scores = score_model(model, self.input_shape, **self.score_model_kwargs)
            self._key = model_state_key(model)  # scoring may touch buffers' versions
            self.rescored += 1
        return self._scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        dg = group._DG
        root = group[0].dep.target.module
        handler = group[0].dep.handler
        count = (
            dg.get_out_channels if dg.is_out_channel_pruning_fn(handler) else dg.get_in_channels
        )(root)
        idxs = [int(i) for i in group[0].idxs]
        if count is not None and idxs != list(range(count)):
            # A subset of the channels: score all of them (so "both" normalises over the whole
            # tensor, METHOD.md section 6) and pick the subset.
            full = self(dg.get_pruning_group(root, handler, list(range(count))))
            return None if full is None else full[idxs]
        scores = self.scores(dg.model)
        names = {m: n for m, n in dg._module2name.items() if n in scores.layers}
        members = members_of_group(group, names)
        root = [int(r) for r in group[0].root_idxs]
        position = {r: k for k, r in enumerate(root)}
        # Re-express the members' root indices as positions in this group's channel list.
        remapped = []
        for m in members:
            keep = [k for k, r in enumerate(m.root_idxs) if r in position]
            remapped.append(
                type(m)(
                    m.layer,
                    m.role,
                    tuple(m.idxs[k] for k in keep),
                    tuple(position[m.root_idxs[k]] for k in keep),
                )
            )
        if not any(m.role == "producer" for m in remapped):
            return None  # nothing measured produces these channels: Torch-Pruning skips it
        incoming = {n: s.incoming for n, s in scores.layers.items()}
        outgoing = {n: s.outgoing for n, s in scores.layers.items()}
        imp = channel_scores(
            remapped, len(root), incoming, outgoing, self.direction, self.group_reduction
        )
        return self._normalize(imp.float())

    def _normalize(self, imp: torch.Tensor) -> torch.Tensor:
        if self.normalizer is None:
            return imp
        if self.normalizer == "mean":
            return imp / imp.mean().clamp_min(1e-12)
        if self.normalizer == "max":
            return imp / imp.max().clamp_min(1e-12)
        if self.normalizer == "sum":
            return imp / imp.sum().clamp_min(1e-12)
        return (imp - imp.min()) / (imp.max() - imp.min() + 1e-8)
