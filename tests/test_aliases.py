"""The module paths of the flat layout keep working for one release (causalprune_fast/_aliases.py):
every old path is the very module (or package) that now holds its code, warns once, and the
documented imports of the README and docs/method.md work through them. The only test that
imports the old paths; each check runs in a fresh interpreter, where nothing is imported yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from causalprune_fast import _aliases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="default")
    return subprocess.run(
        [sys.executable, *args, "-c", code] if code else [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


ALIASES = """
import importlib, json, sys, warnings
from causalprune_fast import _aliases

report = {}
for old, new in _aliases.MOVED.items():
    old, new = "causalprune_fast." + old, new and "causalprune_fast." + new
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
        again = importlib.import_module(old)
    deprecations = [str(w.message) for w in caught if w.category is DeprecationWarning
                    and old in str(w.message)]
    target = importlib.import_module(new) if new else None
    report[old] = {
        "same": module is again and (target is None or module is target),
        "spec": None if target is None else module.__spec__.name,
        "warnings": len(deprecations),
        "package": hasattr(module, "__path__"),
    }
print(json.dumps(report))
"""


def test_every_old_path_is_the_new_module_and_warns_once():
    proc = _run(ALIASES)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert set(report) == {f"causalprune_fast.{old}" for old in _aliases.MOVED}
    for old, new in _aliases.MOVED.items():
        got = report[f"causalprune_fast.{old}"]
        assert got["same"], old
        if new is None:  # a stand-in package: holds the old modules below it, warns nothing
            assert got["package"] and got["warnings"] == 0, old
            continue
        assert got["spec"] == f"causalprune_fast.{new}", old  # the new module keeps its spec
        assert got["warnings"] == 1, (old, got)


DOCUMENTED = """
import warnings
warnings.simplefilter("ignore", DeprecationWarning)
import causalprune_fast as cf
from causalprune_fast.integrations.torch_pruning import CausalImportance
from causalprune_fast.nn_prune import causal_structured
from causalprune_fast.integrations.attention_pruning import attention_pruning
import causalprune_fast.score
import causalprune_fast.triton_kernels.pairwise_mi as old_kernels
from causalprune_fast.estimator import default_memory_budget, pairwise_mi, quantize
from causalprune_fast.results import CausalScores, LayerScores, spearman
from causalprune_fast.pruning import prune
from causalprune_fast.cli import main
from causalprune_fast.pruning import importance, nn_prune, attention_pruning as ap
from causalprune_fast.estimator.triton import pairwise_mi as new_kernels
from causalprune_fast.scoring import score

assert CausalImportance is importance.CausalImportance
assert causal_structured is nn_prune.causal_structured
assert attention_pruning is ap.attention_pruning
assert causalprune_fast.score is score and cf.score is score
assert old_kernels is new_kernels
assert cf.backends is __import__("causalprune_fast.estimator.backends").estimator.backends
assert (pairwise_mi, quantize, default_memory_budget) == (
    cf.pairwise_mi, cf.quantize, cf.default_memory_budget)
assert (CausalScores, LayerScores, prune) == (cf.CausalScores, cf.LayerScores, cf.prune)
assert main is __import__("causalprune_fast.cli.command").cli.command.main
assert callable(spearman)
print("ok")
"""


def test_documented_old_imports_work():
    pytest.importorskip("torch_pruning")
    proc = _run(DOCUMENTED)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_old_module_path_runs_with_python_m():
    """``python -m causalprune_fast.triton_kernels.compile_check`` (documented) still runs."""
    proc = _run("", "-m", "causalprune_fast.triton_kernels.compile_check", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--arch" in proc.stdout


def test_unknown_names_are_not_aliases():
    assert _aliases.new_name("causalprune_fast.nothing_here") is None
    assert _aliases.new_name("torch.nn") is None
    assert _aliases.new_name("causalprune_fast.triton_kernels.local_run") == (
        "causalprune_fast.estimator.triton.local_run"
    )
    with pytest.raises(ModuleNotFoundError):
        __import__("causalprune_fast.integrations.nothing_here")
