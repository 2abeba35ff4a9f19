"""Pruning helpers of ``lm_gpt2_diagnosis.py``: only some kinds of channel pruned, one
criterion per kind (or per block for MLP neurons), through the plan ``cf.prune`` uses, and the
default causal scores with noise over a restricted range of token ids.
"""

from __future__ import annotations

import copy
import os
import sys

import torch_pruning as tp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lm_criteria as C  # noqa: E402
import lm_models as M  # noqa: E402
import lm_study as L  # noqa: E402

import causalprune_fast as cf  # noqa: E402
from causalprune_fast.results import CausalScores  # noqa: E402

SUBSETS = {
    "hidden": ("hidden",),
    "heads": ("heads",),
    "mlp": ("mlp",),
    "hidden+heads": ("hidden", "heads"),
    "hidden+mlp": ("hidden", "mlp"),
    "heads+mlp": ("heads", "mlp"),
    "all": ("hidden", "heads", "mlp"),
}


class Subset:
    """An importance that scores only the groups of the given kinds of channel."""

    def __init__(self, importance, kinds: tuple[str, ...], layer_kinds: dict):
        self.importance, self.kinds, self.layer_kinds = importance, kinds, layer_kinds

    def __call__(self, group):
        if C.group_kind(group, self.layer_kinds) not in self.kinds:
            return None
        return self.importance(group)


def prune(model, importance, kinds, ratio, ids) -> dict:
    """Prune ``kinds`` of ``model`` in place as ``cf.prune`` does; {kind: {root layer's name:
    removed indices}} (the hidden size's indices are those of the residual stream)."""
    plan = C.attention_pruning(model)
    lk = C.layer_kinds(model)
    names = {m: n for n, m in model.named_modules()}
    pruner = plan.pruner(
        model,
        ids,
        ratio,
        pruner_class=tp.pruner.BasePruner,
        importance=Subset(importance, kinds, lk),
        global_pruning=False,
        ignored_layers=[model.lm_head],
    )
    removed: dict = {}
    for group in pruner.step(interactive=True):
        idxs = sorted(int(i) for i in group[0].idxs)
        root = names.get(group[0].dep.target.module, str(len(removed)))
        removed.setdefault(C.group_kind(group, lk), {})[root] = idxs
        group.prune()
    plan.sync(model, pruner)
    model.zero_grad(set_to_none=True)
    return removed


def load(name, seed, corpus, cache):
    model, _ = L.trained_model(name, seed, corpus, M.TRAIN, cache, "small")
    key = L.settings_hash([corpus.info["sha256"], M.TRAIN, "small"])
    scores, _ = L.causal_scores(model, f"{name}-s{seed}-trained-{key}", "local", seed, cache)
    return model, {"local": scores}


def pruned_copies(model, method, kinds, ratio, seed, scores, calibration):
    """(pruned model, removed) for each draw of ``method`` (three for random)."""
    ids = L.example_ids()
    for rep in range(3 if method == "random" else 1):
        p = copy.deepcopy(model)
        imp = C.importance_for(method, p, ids, seed + 100 * rep, scores, calibration, M.lm_loss)
        yield p, prune(p, imp, kinds, ratio, ids)


class PerKind:
    """One importance per kind of channel (None: that kind is not pruned)."""

    def __init__(self, by_kind: dict, layer_kinds: dict):
        self.by_kind, self.layer_kinds = by_kind, layer_kinds

    def __call__(self, group):
        imp = self.by_kind.get(C.group_kind(group, self.layer_kinds))
        return None if imp is None else imp(group)


class ByBlock:
    """MLP neurons of the blocks in ``blocks`` scored by ``inside``, the others by ``outside``;
    every other group by ``inside``."""

    def __init__(self, inside, outside, blocks: set[int], model):
        self.inside, self.outside = inside, outside
        self.fc = {b.mlp.c_fc for i, b in enumerate(model.transformer.h) if i in blocks}
        self.all_fc = {b.mlp.c_fc for b in model.transformer.h}

    def __call__(self, group):
        root = group[0].dep.target.module
        if root in self.all_fc and root not in self.fc:
            return self.outside(group)
        return self.inside(group)


def ranged_scores(model, tag, seed, lo, hi, cache):
    """The default causal scores of ``model`` with noise over token ids ``[lo, hi)`` instead of
    the whole vocabulary (cached in ``cache``, not in the study's cache)."""
    path = os.path.join(cache, f"scores-{tag}-range{lo}-{hi}.safetensors") if cache else None
    if path and os.path.exists(path):
        return CausalScores.load(path)
    kwargs = C.score_kwargs(L.example_ids(), "local", None, seed)
    scores = cf.score_model(model, **{**kwargs, "input_range": (float(lo), float(hi))})
    if path:
        os.makedirs(cache, exist_ok=True)
        scores.save(path)
    return scores
