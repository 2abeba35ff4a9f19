"""Causal scores as a Torch-Pruning importance criterion.

    import torch_pruning as tp
    from causalprune_fast.pruning.importance import CausalImportance

    imp = CausalImportance(model, input_shape=(3, 224, 224))  # direction="auto"
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.3,
                                  ignored_layers=[model.fc])
    pruner.step()

Called with a dependency group of ``model``, :class:`CausalImportance` returns the 1-D
importance of the group's channels like Torch-Pruning's own criteria: out-channel members
contribute their ``incoming`` MI, in-channel members their ``outgoing`` MI, as ``direction``
says (docs/method.md section 6), reduced over the coupled layers (``group_reduction``) and
optionally normalised by Torch-Pruning's own normalizers (``normalizer``, as in
``tp.importance.GroupMagnitudeImportance``, of which this is a subclass). Only Torch-Pruning's
public API is used: the model is the one given to the constructor, layer names come from its
``named_modules()``. Scores are computed once per model state (parameter shapes, storage and
in-place versions) and recomputed when it changes, so iterative pruning
(``iterative_steps > 1``) and fine-tuning between steps always see fresh scores. Scoring
leaves the model's ``training`` flags, ``requires_grad``, hooks and the torch RNG as found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from causalprune_fast.base import validation as v
from causalprune_fast.base.model_state import preserved
from causalprune_fast.base.outputs import output_tensors
from causalprune_fast.model.channel_members import attention_layers, members_of_group
from causalprune_fast.model.llm_graph import torch_pruning_extensions, traceable
from causalprune_fast.model.structures import extend_graph
from causalprune_fast.results.causal_scores import CausalScores
from causalprune_fast.results.channel_scores import DIRECTIONS, channel_scores
from causalprune_fast.scoring.score import check_score_arguments, score_model, score_model_keywords

__all__ = ["CausalImportance"]

# Torch-Pruning 1.6's normalizers (GroupMagnitudeImportance._normalize), plus a callable.
NORMALIZERS = (None, "mean", "max", "sum", "standarization", "gaussian", "lamp")
_SENTINEL = re.compile(r"sentinel_(0(\.\d*)?|\.\d+)$")


def model_state_key(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced, reshaped or updated in place."""
    return tuple(
        (name, tuple(t.shape), t.data_ptr(), t._version)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    )


def _check_normalizer(normalizer: object) -> None:
    if normalizer in NORMALIZERS or callable(normalizer):
        return
    if isinstance(normalizer, str) and _SENTINEL.match(normalizer):
        return
    raise ValueError(
        f"normalizer must be one of {NORMALIZERS}, 'sentinel_<fraction in [0, 1)>' or a "
        f"callable, got {normalizer!r}"
    )


class CausalImportance(tp.importance.GroupMagnitudeImportance):
    """Torch-Pruning importance from causal scores.

    Args:
        model: the network whose groups will be scored (the one given to the pruner).
        input_shape: one example's shape, without the batch dimension (or give
            ``example_input`` among the keyword arguments).
        direction: ``"auto"`` (the default: ``"in"`` for conv channels, ``"out"`` for every
            other channel), ``"in"``, ``"out"`` or ``"both"`` (docs/method.md section 6.3).
        group_reduction: ``"sum"``, ``"mean"`` or ``"max"`` over the coupled layers.
        normalizer: Torch-Pruning's: ``"mean"`` (the default, as for Torch-Pruning's own
            magnitude importances), ``None``, ``"max"``, ``"sum"``, ``"standarization"``,
            ``"gaussian"``, ``"lamp"``, ``"sentinel_<fraction>"`` or a callable. A positive
            scale per group never changes which channels per-layer pruning removes (up to the
            float rounding of near-ties); it matters where groups are ranked together (global
            pruning), where ``"mean"`` with
            ``correction="miller-madow"`` pruned best in the quality study
            (benchmarks/quality/RESULTS.md, "Global pruning"). All-zero importances are
            returned as they are (every normalizer would divide zero by zero).
        **score_model_kwargs: passed to :func:`causalprune_fast.score_model` (``mode``,
            ``bins``, ``examples``, ``samples_per_layer``, ``input_range``, ``seed``,
            ``example_input``, ...).
            ``progress`` defaults to False.

    Raises:
        ValueError: a bad argument, naming it.
        TypeError: a keyword argument ``score_model`` does not take.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int] | None = None,
        *,
        direction: str = "auto",
        group_reduction: str = "sum",
        normalizer: str | Callable | None = "mean",
        **score_model_kwargs,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model must be the torch.nn.Module to prune (CausalImportance(model, "
                f"input_shape, ...)), got {type(model).__name__}"
            )
        v.check_model(model)
        shape = v.check_input_shape(input_shape)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if group_reduction not in ("sum", "mean", "max"):
            raise ValueError(
                f"group_reduction must be 'sum', 'mean' or 'max', got {group_reduction!r}"
            )
        _check_normalizer(normalizer)
        accepted = score_model_keywords()
        if accepted is not None:
            v.check_keyword_arguments(score_model_kwargs, accepted, "CausalImportance()")
        example = v.check_example_input(score_model_kwargs.get("example_input"))
        if shape is None and example is None:
            raise ValueError("give input_shape (or example_input=...)")
        score_model_kwargs = {"progress": False, **score_model_kwargs}
        # Every score_model argument now, not at the pruner's first step (and layers
        # filters against the model's layers).
        check_score_arguments(model, shape, **score_model_kwargs)
        super().__init__(group_reduction=group_reduction, normalizer=normalizer)
        self.model = model
        self.input_shape = shape
        self.direction = direction
        self.score_model_kwargs = score_model_kwargs
        self._key: tuple | None = None
        self._scores: CausalScores | None = None
        self._graph_key: tuple | None = None
        self._graph: tp.DependencyGraph | None = None
        self.rescored = 0  # how many times scores were computed (visible to tests and users)

    def scores(self, model: nn.Module | None = None) -> CausalScores:
        """The causal scores of the model in its current state (cached)."""
        if model is not None and model is not self.model:
            raise ValueError("CausalImportance scores the model it was constructed with")
        key = model_state_key(self.model)
        if self._scores is None or key != self._key:
            with preserved(self.model):
                self._scores = score_model(self.model, self.input_shape, **self.score_model_kwargs)
            self._key = model_state_key(self.model)  # scoring may touch buffers' versions
            self.rescored += 1
        return self._scores

    def _dependency_graph(self) -> tp.DependencyGraph:
        """Torch-Pruning's dependency graph of the model in its current state (cached)."""
        key = model_state_key(self.model)
        if self._graph is None or key != self._graph_key:
            example = self.score_model_kwargs.get("example_input")
            if example is None:
                p = next(self.model.parameters())
                dtype = p.dtype if p.dtype.is_floating_point else torch.float32
                example = torch.zeros((1, *self.input_shape), dtype=dtype, device=p.device)
            extensions = torch_pruning_extensions(self.model)
            with preserved(self.model), traceable(self.model):
                self.model.eval()
                self._graph = tp.DependencyGraph().build_dependency(
                    self.model,
                    example_inputs=example,
                    output_transform=output_tensors,
                    customized_pruners=extensions["customized_pruners"],
                    verbose=False,
                )
                extend_graph(self._graph)
            self._graph_key = model_state_key(self.model)
        return self._graph

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """The importance of the group's channels (1-D, float32), or None where no measured
        layer produces them (Torch-Pruning then leaves the group alone)."""
        names = {m: n for n, m in self.model.named_modules()}
        root = group[0].dep.target.module
        handler = group[0].dep.handler
        if root not in names:
            raise ValueError(
                "the group's root layer is not part of the model given to CausalImportance"
            )
        root_idxs = [int(r) for r in group[0].root_idxs]
        idxs = [int(i) for i in group[0].idxs]
        dg = self._dependency_graph()
        count = (
            dg.get_out_channels(root)
            if dg.is_out_channel_pruning_fn(handler)
            else dg.get_in_channels(root)
        )
        if count is not None and idxs != list(range(count)):
            # A subset of the channels: score all of them (so "both" normalises over the whole
            # tensor, docs/method.md section 6) and pick the subset.
            full = self(dg.get_pruning_group(root, handler, list(range(count))))
            return None if full is None else full[idxs]
        scores = self.scores()
        measured = {m: n for m, n in names.items() if n in scores.layers}
        members = members_of_group(group, measured, attention_layers(self.model, scores.layers))
        position = {r: k for k, r in enumerate(root_idxs)}
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
        kinds = {n: s.kind for n, s in scores.layers.items()}
        imp = channel_scores(
            remapped,
            len(root_idxs),
            incoming,
            outgoing,
            self.direction,
            self.group_reduction,
            kinds,
        ).float()
        if not bool(imp.any()):
            return imp  # all zero: every normalizer would divide 0 by 0
        return self._normalize(imp, self.normalizer)
