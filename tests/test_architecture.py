"""The package's folders are its layers (README.md, "Architecture"): every import of a package
module, at the top of a module or deferred inside a function, goes to the same layer or one
below; the import graph has no cycle; the package root holds few modules; the kernels import
neither the public ops nor the dispatcher; above the estimator, the estimator is reached only
through its ops and its dispatcher. Read from the source with ``ast``, nothing is imported."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

import pytest

PACKAGE = "causalprune_fast"
SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

#: The layers, bottom first: a module may import its own layer and the ones before it.
LAYERS = ("base", "estimator", "model", "results", "scoring", "pruning", "cli")
TOP = len(LAYERS)  # the package root (public API, __main__, the old-path aliases)
MAX_ROOT_MODULES = 10
#: The kernels: they take checked tensors and return tensors.
KERNELS = ("estimator.triton", "estimator.reference", "estimator.extension",
           "estimator.fake_kernels")  # fmt: skip
#: What the layers above the estimator may import of it: the public ops and the dispatcher.
ESTIMATOR_FACE = ("estimator", "estimator.ops", "estimator.backends")


def _modules() -> dict[str, str]:
    """Dotted name (without the package) -> file, for every module of the package."""
    found = {}
    for folder, _, files in os.walk(SOURCE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, SOURCE)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__").removesuffix("__init__")] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    """The layer of a module, by its folder; the root's modules are above every layer."""
    first = module.split(".")[0] if "." in module or module in LAYERS else ""
    return LAYERS.index(first) if first in LAYERS else TOP


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """``(imported package module, line)`` of every import in ``module``, deferred ones too."""
    path = MODULES[module]
    is_package = path.endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    yield name[len(PACKAGE) + 1 :], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                base = node.module[len(PACKAGE) + 1 :]
            else:
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}" if base else alias.name
                yield (child if child in MODULES else base), node.lineno


GRAPH = {m: sorted({t for t, _ in _imports(m)} - {m}) for m in MODULES}


def test_the_layers_are_folders_and_every_module_has_one():
    assert {m.split(".")[0] for m in MODULES if "." in m} <= set(LAYERS)
    for layer in LAYERS:
        assert layer in MODULES, f"{layer}/__init__.py is missing"


def test_imports_go_only_downward():
    upward = [
        f"{m} (layer {LAYERS[layer_of(m)] if layer_of(m) < TOP else 'root'}) imports {t} "
        f"(line {line})"
        for m in MODULES
        for t, line in _imports(m)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_nothing_imports_the_package_root():
    """The root (the public API) is the top: no module below it imports it or its aliases."""
    bad = [
        f"{m} imports {t or PACKAGE}"
        for m in MODULES
        if layer_of(m) < TOP
        for t, _ in _imports(m)
        if layer_of(t) == TOP
    ]
    assert not bad, "\n".join(bad)


def _cycle() -> list[str] | None:
    """One cycle of the import graph, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in GRAPH[m]:
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_root_holds_few_modules():
    root = [m for m in MODULES if "." not in m and m not in LAYERS]
    assert len(root) <= MAX_ROOT_MODULES, root


def _is(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def test_the_kernels_never_import_the_public_api():
    bad = [
        f"{m} imports {t}"
        for m in MODULES
        if _is(m, KERNELS)
        for t in GRAPH[m]
        if not (layer_of(t) == 0 or _is(t, KERNELS))
    ]
    assert not bad, "\n".join(bad)


def test_above_the_estimator_only_its_ops_and_dispatcher_are_imported():
    bad = [
        f"{m} imports {t}"
        for m in MODULES
        if layer_of(m) > LAYERS.index("estimator")
        for t in GRAPH[m]
        if layer_of(t) == LAYERS.index("estimator") and t not in ESTIMATOR_FACE
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_is_documented_in_its_package_docstring(layer):
    tree = ast.parse(open(MODULES[layer], encoding="utf-8").read())
    doc = ast.get_docstring(tree) or ""
    assert f"Layer {LAYERS.index(layer)}" in doc, f"{layer}/__init__.py"
