"""The module paths of the flat layout (before the layered folders) as aliases, for one release.

``import causalprune_fast.score``, ``from causalprune_fast.integrations.torch_pruning import
CausalImportance`` or ``python -m causalprune_fast.triton_kernels.compile_check`` keep working:
a finder placed first on ``sys.meta_path`` answers for the old dotted names of :data:`MOVED`
with the module that now holds the code, so ``causalprune_fast.score is
causalprune_fast.scoring.score``, and each old name warns once (``DeprecationWarning``, at its
first import). A name below an old package that moved as a whole
(``causalprune_fast.triton_kernels.pairwise_mi``) follows its package. The old
``causalprune_fast.integrations`` package, whose modules went to different layers, is an empty
stand-in package that only holds them.

Old paths that are still packages of the new layout (``causalprune_fast.estimator``,
``causalprune_fast.results``, ``causalprune_fast.pruning``, ``causalprune_fast.cli``) need no
alias: each package re-exports what the old module offered.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

ROOT = "causalprune_fast"

#: old path -> new path, both below ``causalprune_fast``; None: an old package with no single
#: new home (an empty stand-in package).
MOVED: dict[str, str | None] = {
    "_validation": "base.validation",
    "_state": "base.model_state",
    "noise": "base.noise",
    "outputs": "base.outputs",
    "distributed": "base.distributed",
    "conv_geometry": "base.conv_geometry",
    "backends": "estimator.backends",
    "reference": "estimator.reference",
    "tiling": "estimator.tiling",
    "_extension": "estimator.extension",
    "_fake_kernels": "estimator.fake_kernels",
    "triton_kernels": "estimator.triton",
    "triton_kernels.layer_response": "estimator.triton.linear_response",
    "triton_kernels._local_args": "estimator.triton.local_args",
    "layers": "model.layers",
    "discovery": "model.discovery",
    "response": "model.response",
    "attention": "model.attention",
    "channel_members": "model.channel_members",
    "channel_graph": "model.channel_graph",
    "integrations": None,
    "integrations.hf": "model.families",
    "integrations.llm_pruning": "pruning.llm_pruning",
    "integrations.torch_pruning": "pruning.importance",
    "integrations.attention_pruning": "pruning.attention_pruning",
    "layer_scores": "results.layer_scores",
    "channel_scores": "results.channel_scores",
    "results_io": "results.file_format",
    "score": "scoring.score",
    "scoring.state": "scoring.layer_state",
    "scoring.runner": "scoring.driver",
    "prune_report": "pruning.report",
    "prune_support": "pruning.refusals",
    "nn_prune": "pruning.nn_prune",
    "models": "cli.model_specs",
}


def new_name(old: str) -> str | None:
    """The full new name of the full old name ``old``, "" for a stand-in package, or None
    where ``old`` is not an old path."""
    if not old.startswith(ROOT + "."):
        return None
    rest = old[len(ROOT) + 1 :]
    if rest in MOVED:
        target = MOVED[rest]
        return "" if target is None else f"{ROOT}.{target}"
    package, _, leaf = rest.rpartition(".")
    while package:  # a module below an old package that moved as a whole
        if MOVED.get(package):
            return f"{ROOT}.{MOVED[package]}.{rest[len(package) + 1 :]}"
        package = package.rpartition(".")[0]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def create_module(self, spec):
        if not self.new:
            module = types.ModuleType(self.old, "Old package of causalprune_fast (an alias).")
            self.spec = None
            return module
        warnings.warn(
            f"{self.old} is now {self.new}; the old path is an alias that will be removed in "
            "the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        if self.spec is not None:
            module.__spec__ = self.spec  # module_from_spec gave it the alias's spec

    def get_code(self, fullname: str):
        """The new module's code (``python -m`` with an old path)."""
        spec = importlib.util.find_spec(self.new)
        return spec.loader.get_code(self.new)


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED` (first on ``sys.meta_path``, so that the new
    module is never imported a second time under its old name)."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(ROOT + "."):
            return None
        new = new_name(fullname)
        if new is None:
            return None
        target = importlib.util.find_spec(new) if new else None
        return importlib.util.spec_from_loader(
            fullname,
            _AliasLoader(fullname, new),
            origin=None if target is None else target.origin,  # python -m: sys.argv[0]
            is_package=target is None or target.submodule_search_locations is not None,
        )


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
