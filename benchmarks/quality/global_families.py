"""The model families of ``global_study.py``: where its models, testbeds, scores, importances,
pruner and metric come from. ``lm``: ``lm_study.py``'s Llama and GPT-2 (held-out nats per byte,
lower is better); ``cnn``: ``cnn_testbeds.py``'s no-BatchNorm digits CNN (test accuracy, higher
is better). Each reuses its study's code, so the models, scores and criteria are the same."""

from __future__ import annotations

import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnn_testbeds as CT  # noqa: E402
import lm_criteria as C  # noqa: E402
import lm_models as M  # noqa: E402
import lm_study as L  # noqa: E402
import lm_testbeds as T  # noqa: E402
import study as S  # noqa: E402

revision = L.revision


class LMFamily:
    """``lm_study.py``'s models; criteria as ``lm_criteria.importance_for`` names them."""

    models = tuple(M.MODELS)
    # the study's grouped Llama cannot be pruned globally (README); its MHA twin stands in
    default_models = smoke_models = ("gpt2", "llama-mha")
    testbeds = tuple(T.TESTBEDS)
    scopes = C.SCOPES
    higher_is_better = False
    default_methods = [
        "causal-auto-local@layer",
        "causal-auto-local@global",
        "causal-auto-local@global:mean",
        "causal-auto-local-mm@global",
        "causal-auto-local-mm@global:mean",
        "causal-auto-local@isomorphic:mean",
        "l2@layer",
        "l2@global:mean",
        "random@layer",
        "random@global",
        "taylor@global:mean",
        "wanda-sp@global:mean",
    ]
    smoke_methods = ["causal-auto-local@layer", "causal-auto-local-mm@global:mean", "random@global"]

    def __init__(self, args):
        self.args = args

    def check(self, crit: str) -> None:
        C.check_criterion(crit)

    def check_models(self, models, methods) -> None:
        """A ValueError naming the first model the plan cannot prune (globally, if any method
        asks for it), with the reason."""
        size = "tiny" if self.args.smoke else "small"
        scopes = {m.partition("@")[2].partition(":")[0] for m in methods}
        for name in models:
            model = M.build_model(name, 0, size)
            try:
                plan = C.attention_pruning(model)
                plan.check_global_pruning(bool(scopes - {"layer"}), model)
            except ValueError as e:
                raise ValueError(
                    f"model {name!r} cannot be pruned by cf.prune's plan: {e}"
                ) from None

    def setup(self) -> None:
        smoke = self.args.smoke
        self.size = "tiny" if smoke else "small"
        self.corpus = M.Corpus(max_files=40 if smoke else None)
        self.train = {**M.TRAIN, "steps": 30 if smoke else M.TRAIN["steps"]}
        self.ft = {**M.FINETUNE, "steps": 3 if smoke else M.FINETUNE["steps"]}
        self.heldout = self.corpus.heldout_windows(M.EVAL["windows"])
        self.calibration = self.corpus.calibration()
        self.ids = L.example_ids()

    def bases(self, name, seed, testbeds):
        trained, _ = L.trained_model(
            name, seed, self.corpus, self.train, self.args.cache, self.size
        )
        for testbed in testbeds:
            base, info = copy.deepcopy(trained), {}
            if testbed != "trained":
                info = T.rescale(base, seed, testbed)
                info["max_rel_logit_error"] = T.check_same_function(trained, base, self.heldout[:8])
            yield testbed, base, info

    def scores(self, base, name, seed, testbed, crits) -> dict:
        # the tag lm_study.py caches its scores under, so both studies share them
        key = L.settings_hash([self.corpus.info["sha256"], self.train, self.size])
        tag = f"{name}-s{seed}-{testbed}-{key}"
        variants = {C.causal_method(c)[1] for c in crits if c.startswith("causal-")}
        return {v: L.causal_scores(base, tag, v, seed, self.args.cache)[0] for v in variants}

    def importance(self, crit, model, seed, scores):
        return C.importance_for(crit, model, self.ids, seed, scores, self.calibration, M.lm_loss)

    def prune(self, model, importance, ratio, scope) -> None:
        C.prune_lm(model, importance, ratio, self.ids, scope)

    def evaluate(self, model) -> float:
        return M.evaluate(model, self.heldout)

    def finetune(self, model, seed):
        M.fit(model, self.corpus, self.ft, 1000 + seed)  # the same batches for every criterion
        return model

    def widths(self, model) -> dict:
        """Hidden size, and per layer the attention width and the MLP width."""
        kinds = C.layer_kinds(model)
        attn = [m for m, k in kinds.items() if k == "heads"]
        mlp = [m for m, k in kinds.items() if k == "mlp"]

        def out(m):
            return m.nf if C.is_conv1d(m) else m.out_features

        if hasattr(model, "transformer"):  # GPT-2: c_attn holds q, k and v
            return {
                "hidden": model.transformer.wte.weight.shape[1],
                "attn": [out(m) // 3 for m in attn],
                "mlp": [out(m) for m in mlp],
            }
        queries = [m.q_proj for m in model.modules() if hasattr(m, "q_proj")]
        gates = [m.gate_proj for m in model.modules() if hasattr(m, "gate_proj")]
        return {
            "hidden": model.model.embed_tokens.weight.shape[1],
            "attn": [q.out_features for q in queries],
            "mlp": [g.out_features for g in gates],
        }

    def settings(self) -> dict:
        return {
            "size": self.size,
            "corpus": self.corpus.info,
            "train": self.train,
            "finetune": self.ft,
            "eval": M.EVAL,
            "causal": {
                v: {**C.score_kwargs(None, *C.VARIANTS[v], "per seed"), "example_input": "ids"}
                for v in C.VARIANTS
            },
            "pruner": "attention_pruning(model).pruner(..., pruner_class=tp.pruner.BasePruner, "
            "global_pruning=scope != 'layer', isomorphic=scope == 'isomorphic', "
            "ignored_layers=[lm_head]); step(); plan.sync",
        }


class CNNFamily:
    """``cnn_testbeds.py``'s no-BN digits CNN; criteria as ``cnn_testbeds.importance`` names
    them (``causal-<direction>-<variant>`` of ``study.py``, ``l1``, ``l2``, ``random``,
    ``taylor``, ``act``)."""

    models = default_models = smoke_models = CT.NETS
    testbeds = CT.TESTBEDS
    scopes = ("layer", "global")
    higher_is_better = True
    default_methods = [
        "causal-in-local@layer",
        "causal-in-local@global",
        "causal-in-local@global:mean",
        "causal-in-local-mm@global",
        "causal-in-local-mm@global:mean",
        "l1@layer",
        "l1@global:mean",
        "l2@global:mean",
        "random@layer",
        "random@global",
        "taylor@global:mean",
        "act@global:mean",
    ]
    smoke_methods = ["causal-in-local@layer", "causal-in-local-mm@global:mean", "random@global"]

    def __init__(self, args):
        self.args = args

    def check(self, crit: str) -> None:
        if crit in CT.BASELINES:
            return
        try:
            S.causal_method(crit)
        except ValueError:
            raise ValueError(
                f"unknown criterion {crit!r}; known: {list(CT.BASELINES)} and "
                f"causal-<direction>-<variant> with <direction> one of {list(S.DIRECTIONS)}, "
                f"<variant> one of {list(S.VARIANTS)}"
            ) from None

    def check_models(self, models, methods) -> None:
        """Every net here prunes per layer and globally."""

    def setup(self) -> None:
        self.data = S.load_data()
        xtr, ytr = self.data[0], self.data[1]
        self.xcal, self.ycal = xtr[: CT.CALIBRATION], ytr[: CT.CALIBRATION]
        self.ft = {**S.FINETUNE, "epochs": 1} if self.args.smoke else S.FINETUNE

    def bases(self, name, seed, testbeds):
        import torch

        xtr, ytr, xte, _ = self.data
        torch.manual_seed(seed)
        trained = S.fit(CT.build(name), xtr, ytr, S.TRAIN, seed)
        for testbed in testbeds:
            base = copy.deepcopy(trained)
            info = {}
            if testbed == "rescaled":
                CT.rescale(base, seed)
                with torch.no_grad():
                    a, b = trained(xte), base(xte)
                info["max_rel_logit_error"] = float((a - b).abs().max() / a.abs().max())
                if not info["max_rel_logit_error"] <= 1e-4:
                    raise RuntimeError(f"rescaled {name} computes another function")
            yield testbed, base, info

    def scores(self, base, name, seed, testbed, crits) -> dict:
        variants = {S.causal_method(c)[1] for c in crits if c.startswith("causal-")}
        return CT.causal_scores(base, variants, seed)

    def importance(self, crit, model, seed, scores):
        return CT.importance(crit, model, seed, scores, self.xcal, self.ycal)

    def prune(self, model, importance, ratio, scope) -> None:
        S.meta_prune(model, importance, ratio, scope)

    def evaluate(self, model) -> float:
        return S.accuracy(model, self.data[2], self.data[3])

    def finetune(self, model, seed):
        S.fit(model, self.data[0], self.data[1], self.ft, 1000 + seed)
        return model

    def widths(self, model) -> dict:
        return {n: m.out_channels for n, m in model.named_modules() if hasattr(m, "out_channels")}

    def settings(self) -> dict:
        return {
            "train": S.TRAIN,
            "finetune": self.ft,
            "split": S.SPLIT,
            "causal": {v: S.causal_settings(v) for v in S.VARIANTS},
            "pruner": "tp.pruner.MetaPruner(..., global_pruning=scope == 'global', "
            "ignored_layers=[fc])",
            "loss": "test accuracy (higher is better)",
        }


FAMILIES = {"lm": LMFamily, "cnn": CNNFamily}
