"""Pruning criteria of the language-model quality study (``lm_study.py``) and the one pruning
step they all go through: the plan ``cf.prune`` uses.

Every criterion is a Torch-Pruning importance handed to
``attention_pruning(model).pruner(model, ids, ratio, pruner_class=tp.pruner.BasePruner,
importance=..., global_pruning=False, ignored_layers=[lm_head])`` followed by ``pruner.step()``
and ``plan.sync(model, pruner)``: exactly what ``causalprune_fast.prune`` builds
(``pruning._prune``), so only the importance differs and the study measures what users get.

- ``causal-<spec>-<variant>``: :class:`CausalImportance` on the scores of the unpruned model
  (computed once per seed, testbed and variant, handed to the importance as its cache).
  ``<spec>`` is one direction for every channel (``in``, ``out``, ``both``, ``auto``: the
  package's per-kind rule, ``out`` on these models) or one per kind of
  channel, ``<hidden>/<heads>/<mlp>`` (``in/out/out``: ``in`` for the hidden size, ``out`` for
  attention heads or head dims and MLP neurons). ``<variant>``: ``local``, ``local-mm``
  (``correction="miller-madow"``), ``propagated``.
- ``l2``: Torch-Pruning's ``GroupMagnitudeImportance(p=2, group_reduction="mean")``, as in its
  LLM example (``examples/LLMs/prune_llm.py``). Torch-Pruning's own class skips layers it has no
  built-in pruner for, so for GPT-2's ``Conv1D`` the same formula is applied here to the weight
  read as ``[in, out]`` (:class:`Magnitude`; on Llama it equals Torch-Pruning's, checked).
- ``random``: ``tp.importance.RandomImportance()``, the torch RNG seeded with the seed.
- data-using references, on ``CALIBRATION`` windows of the training split: ``taylor``
  (first order, ``sum |w * dL/dw|`` per channel, Torch-Pruning's ``GroupTaylorImportance``
  formula, also for ``Conv1D``), ``wanda-sp`` (per channel of a consumer layer,
  ``sum_i |W[i, c]| * ||X_c||_2``, Wanda's metric summed over the structure, as FLAP's
  Wanda-sp baseline) and ``flap`` (FLAP's fluctuation metric, ``Var(X_c) * ||W[:, c]||^2``);
  the last two sum over every layer that reads the channel.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from causalprune_fast.pruning.attention_pruning import attention_pruning
from causalprune_fast.pruning.importance import CausalImportance, model_state_key

KINDS = ("hidden", "heads", "mlp")
DIRECTIONS = ("in", "out", "both", "auto")
# Score variants: (mode, correction).
VARIANTS = {
    "local": ("local", None),
    "local-mm": ("local", "miller-madow"),
    "propagated": ("propagated", None),
}
BASELINES = ("l2", "random")
DATA_REFERENCES = ("taylor", "wanda-sp", "flap")
INPUT_RANGE = (0.0, 256.0)  # token ids: uniform over the byte vocabulary


def is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def parse_spec(spec: str) -> dict[str, str]:
    """``"in"`` -> every kind ``in``; ``"in/out/out"`` -> hidden ``in``, heads and mlp ``out``."""
    parts = spec.split("/")
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or any(p not in DIRECTIONS for p in parts):
        raise ValueError(f"not a direction spec: {spec!r}")
    return dict(zip(KINDS, parts, strict=True))


def causal_method(name: str) -> tuple[dict[str, str], str]:
    """``(direction per kind, variant)`` of ``causal-<spec>-<variant>``."""
    if not name.startswith("causal-"):
        raise ValueError(f"not a causal criterion: {name!r}")
    rest = name.removeprefix("causal-")
    for variant in sorted(VARIANTS, key=len, reverse=True):
        if rest.endswith("-" + variant):
            return parse_spec(rest.removesuffix("-" + variant)), variant
    raise ValueError(f"unknown score variant in {name!r}; known: {list(VARIANTS)}")


def check_criterion(name: str) -> None:
    """Raise a ValueError naming the known criteria when ``name`` is not one."""
    if name in BASELINES or name in DATA_REFERENCES:
        return
    try:
        causal_method(name)
    except ValueError as e:
        raise ValueError(
            f"unknown criterion {name!r} ({e}); known: {list(BASELINES + DATA_REFERENCES)} and "
            f"causal-<spec>-<variant> with <spec> one of {list(DIRECTIONS)} or "
            f"<hidden>/<heads>/<mlp> of them (e.g. causal-in/out/out-local), <variant> one of "
            f"{list(VARIANTS)}"
        ) from None


def layer_kinds(model: nn.Module) -> dict[nn.Module, str]:
    """The layers whose output channels are heads (or head dims) and MLP neurons."""
    kinds = {}
    for m in model.modules():
        if all(hasattr(m, n) for n in ("q_proj", "k_proj", "v_proj")):
            kinds.update({m.q_proj: "heads", m.k_proj: "heads", m.v_proj: "heads"})
        if is_conv1d(getattr(m, "c_attn", None)):
            kinds[m.c_attn] = "heads"
        if all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj")):
            kinds.update({m.gate_proj: "mlp", m.up_proj: "mlp"})
        if is_conv1d(getattr(m, "c_fc", None)):
            kinds[m.c_fc] = "mlp"
    return kinds


def _is_out(handler) -> bool:
    return getattr(handler, "__name__", "") == "prune_out_channels"


def group_kind(group, kinds: dict[nn.Module, str]) -> str:
    """``heads``, ``mlp`` or ``hidden`` (every other group: the residual stream)."""
    for dep, _ in group:
        kind = kinds.get(dep.target.module)
        if kind is not None and _is_out(dep.handler):
            return kind
    return "hidden"


class KindCausalImportance(CausalImportance):
    """:class:`CausalImportance` with one direction per kind of channel (``parse_spec``)."""

    def __init__(self, model, spec: dict[str, str], **kwargs):
        super().__init__(model, direction="in", **kwargs)
        self.spec = spec
        self.kinds = layer_kinds(model)

    def __call__(self, group):
        self.direction = self.spec[group_kind(group, self.kinds)]
        return super().__call__(group)


def causal_importance(model, ids, spec, variant, seed, scores=None) -> KindCausalImportance:
    """The causal importance of ``(spec, variant)``; with ``scores`` (computed on this very
    model with :func:`score_kwargs`), they are its cache."""
    mode, correction = VARIANTS[variant]
    imp = KindCausalImportance(model, spec, **score_kwargs(ids, mode, correction, seed))
    if scores is not None:
        imp._scores, imp._key = scores, model_state_key(model)
    return imp


def score_kwargs(ids, mode, correction, seed) -> dict:
    """``score_model`` keywords of the study's causal scores (the rest are the defaults)."""
    return dict(
        example_input=ids,
        input_range=INPUT_RANGE,
        mode=mode,
        correction=correction,
        seed=seed,
        progress=False,
    )


# --------------------------------------------------------------------------- weight-based


def _weight_slices(layer, handler, idxs, w=None):
    """Per channel, the weights of ``layer`` (or ``w``, a tensor of the weight's layout such as
    its gradient) that channel ``idxs[k]`` owns, ``[k, ...]`` (Linear ``[out, in]``, ``Conv1D``
    ``[in, out]``, LayerNorm ``[C]``), or None for other layers."""
    if not (isinstance(layer, (nn.Linear, nn.LayerNorm)) or is_conv1d(layer)):
        return None
    if isinstance(layer, nn.LayerNorm) and not layer.elementwise_affine:
        return None
    w = layer.weight if w is None else w
    idxs = torch.as_tensor(list(idxs), dtype=torch.long)
    if isinstance(layer, nn.Linear):
        return w[idxs] if _is_out(handler) else w[:, idxs].T
    if is_conv1d(layer):
        return w[:, idxs].T if _is_out(handler) else w[idxs]
    return w[idxs][:, None]


class Magnitude(tp.importance.GroupMagnitudeImportance):
    """Torch-Pruning's group magnitude / Taylor formulas (``taylor=True``) over Linear,
    ``Conv1D`` and LayerNorm members, reduced by the mean over members and normalised by the
    mean, as ``GroupMagnitudeImportance(p=2, group_reduction="mean")`` does."""

    def __init__(self, taylor: bool = False):
        super().__init__(p=2, group_reduction="mean", normalizer="mean")
        self.taylor = taylor

    @torch.no_grad()
    def __call__(self, group):
        imps, roots = [], []
        for item in group.items:
            dep, idxs = item.dep, item.idxs
            layer = dep.target.module
            w = _weight_slices(layer, dep.handler, idxs)
            if w is None:
                continue
            if self.taylor:
                g = _weight_slices(layer, dep.handler, idxs, layer.weight.grad)
                imp = (w * g).abs().flatten(1).sum(1)
            else:
                imp = w.abs().pow(self.p).flatten(1).sum(1)
            imps.append(imp.float())
            roots.append(item.root_idxs)
        if not imps:
            return None
        return self._normalize(self._reduce(imps, roots), self.normalizer)


class Activation(tp.importance.GroupMagnitudeImportance):
    """Wanda-sp (``metric="wanda"``) or FLAP's fluctuation (``metric="flap"``) from the inputs
    that every Linear / ``Conv1D`` saw on calibration data (:meth:`collect`), over the group's
    in-channel members (the layers that read the channel), summed."""

    def __init__(self, metric: str):
        super().__init__(p=2, group_reduction="sum", normalizer=None)
        self.metric = metric
        self.stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, int]] = {}

    @torch.no_grad()
    def collect(self, model, windows) -> None:
        """Per-channel input sums and sums of squares of every Linear/Conv1D on ``windows``."""

        def hook(mod, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            self.stats[mod] = (x.sum(0), x.pow(2).sum(0), x.shape[0])

        layers = [m for m in model.modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
        hooks = [m.register_forward_hook(hook) for m in layers]
        try:
            model(windows[:, :-1])
        finally:
            for h in hooks:
                h.remove()

    @torch.no_grad()
    def __call__(self, group):
        imps, roots = [], []
        for item in group.items:
            dep, idxs = item.dep, item.idxs
            layer = dep.target.module
            if _is_out(dep.handler) or layer not in self.stats:
                continue
            w = _weight_slices(layer, dep.handler, idxs)
            if w is None:
                continue
            s1, s2, n = self.stats[layer]
            idx = torch.as_tensor(list(idxs), dtype=torch.long)
            if self.metric == "wanda":
                imp = w.abs().sum(1).double() * s2[idx].sqrt()
            else:
                var = (s2[idx] - s1[idx] ** 2 / n) / (n - 1)
                imp = var * w.pow(2).sum(1).double()
            imps.append(imp.float())
            roots.append(item.root_idxs)
        if not imps:
            return None
        return self._reduce(imps, roots)


# --------------------------------------------------------------------------- pruning


SCOPES = ("layer", "global", "isomorphic")


def prune_lm(model, importance, ratio: float, ids, scope: str = "layer") -> nn.Module:
    """Prune ``model`` in place at ``ratio`` with ``importance``, as ``cf.prune`` does.

    ``scope``: ``layer`` (each group at ``ratio``, ``cf.prune``'s default), ``global`` (one
    ranking over every group, ``global_pruning=True``) or ``isomorphic`` (one ranking per set of
    groups of the same structure, Torch-Pruning's ``isomorphic=True``)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {list(SCOPES)}")
    model.eval()
    plan = attention_pruning(model)
    pruner = plan.pruner(
        model,
        ids,
        ratio,
        pruner_class=tp.pruner.BasePruner,
        importance=importance,
        global_pruning=scope != "layer",
        isomorphic=scope == "isomorphic",
        ignored_layers=[model.lm_head],
        round_to=None,
        iterative_steps=1,
    )
    pruner.step()
    plan.sync(model, pruner)
    return model


def importance_for(name, model, ids, seed, scores, calibration, loss_fn):
    """The importance of criterion ``name`` for ``model`` (scores: variant -> CausalScores of
    this model; calibration: training windows for the data-using references)."""
    if name.startswith("causal-"):
        spec, variant = causal_method(name)
        return causal_importance(model, ids, spec, variant, seed, scores[variant])
    if name == "l2":
        return Magnitude()
    if name == "random":
        torch.manual_seed(seed)  # RandomImportance draws from the global generator
        return tp.importance.RandomImportance()
    if name == "taylor":
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss_fn(model, calibration).backward()
        return Magnitude(taylor=True)
    if name in ("wanda-sp", "flap"):
        imp = Activation("wanda" if name == "wanda-sp" else "flap")
        imp.collect(model, calibration)
        return imp
    raise ValueError(name)
