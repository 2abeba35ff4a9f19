"""Producers and consumers of every prunable channel, from Torch-Pruning's dependency graph
(docs/method.md section 6; the reductions into channel scores are in ``channel_scores.py``).

A Torch-Pruning group rooted at a layer's output channels lists every coupled module with the
channel indices it shares with the root: out-channel members (conv/linear whose output
channel it is, including the other writers of a residual stream, and depthwise convolutions)
are the channel's producers, in-channel members are its consumers. No graph code of our own:
the dependency graph and its index mappings are Torch-Pruning's, and a group is collected by
the walk of its ``get_pruning_group``, run here within memory and time bounds
(``build_groups``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from causalprune_fast.base.memory import default_memory_budget
from causalprune_fast.base.outputs import output_tensors
from causalprune_fast.model.channel_members import (
    Attention,
    Member,
    alone_groups,
    attention_layers,
    members_of_group,
    members_of_items,
    out_proj_groups,
    torch_pruning_available,
)
from causalprune_fast.model.llm_graph import torch_pruning_extensions, traceable
from causalprune_fast.model.structures import extend_graph

# Bounds on the walk that finds one layer's group (see ``build_groups``).
BYTES_PER_INDEX = 128  # one Torch-Pruning (idx, root_idx) entry: namedtuple, ints, list slot
GROUP_TIME_LIMIT_S = 120.0  # per layer, all blocks of its channels together
WORK_PER_BUDGET = 4  # entries created per layer, in all its walks, per entry of the budget


class _GroupTooLarge(Exception):
    """A group walk went over its index budget (``used`` entries created so far)."""

    def __init__(self, used: int):
        super().__init__(used)
        self.used = used


@dataclass
class GroupSearch:
    """What :func:`find_groups` found: every layer's members, the layers whose group could not
    be found within the bounds (and why), and why the graph itself could not be built."""

    groups: dict[str, list[Member]]
    uncoupled: dict[str, str]  # layer -> why its group was not found
    graph_error: str = ""  # Torch-Pruning could not build the dependency graph: why
    bounded: bool = True  # whether the walks were bounded (Torch-Pruning 1.6 internals)


def find_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    layer_names: list[str],
    *,
    virtual: list[str] = (),
    index_budget: int | None = None,
    time_limit: float | None = None,
) -> GroupSearch:
    """The members of the output-channel group of every layer in ``layer_names``, walked
    within the bounds that :func:`build_groups` describes; a layer whose group cannot be
    found keeps only itself as producer and is listed in ``uncoupled`` with the reason. No
    warning: :func:`build_groups` (scoring) and ``prune()``'s checks say what it means.

    ``virtual``: measured virtual layers of ``nn.MultiheadAttention`` (``<mha>.in_proj``,
    ``<mha>.out_proj``); they join the groups Torch-Pruning couples their module to (see
    :func:`members_of_items`), and each ``out_proj`` gets the group of the stream it writes into."""
    if not torch_pruning_available():
        return GroupSearch(alone_groups(model, layer_names), {}, "torch-pruning is not installed")
    import torch_pruning as tp

    try:
        # GPT-2's Conv1D gets its pruner; rotary attention is traced as llm_pruning says.
        with traceable(model):
            dg = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_input,
                output_transform=output_tensors,
                customized_pruners=torch_pruning_extensions(model)["customized_pruners"],
                verbose=False,
            )  # its last step maps indices (update_index_mapping), as get_pruning_group does
        extend_graph(dg)  # channel permutations (model/structures)
    except Exception as e:  # tracing arbitrary models can fail in many ways
        return GroupSearch(alone_groups(model, layer_names), {}, f"{type(e).__name__}: {e}")
    if index_budget is None:
        index_budget = max(1, default_memory_budget() // BYTES_PER_INDEX)
    time_limit = GROUP_TIME_LIMIT_S if time_limit is None else time_limit
    names = {m: n for n, m in model.named_modules() if n in set(layer_names)}
    attention = attention_layers(model, virtual)
    bounded = _walk_supported()
    groups: dict[str, list[Member]] = {}
    uncoupled: dict[str, str] = {}
    for name in layer_names:
        module = model.get_submodule(name)
        if module not in dg.module2node:
            groups[name] = alone_groups(model, [name])[name]
            continue
        try:
            if bounded:
                members, why = _bounded_group(
                    dg, module, names, index_budget, time_limit, attention
                )
            else:
                members, why = _unbounded_group(dg, module, names, attention), ""
        except Exception as e:  # an index mapping that fails on this graph
            members, why = None, f"Torch-Pruning raised {type(e).__name__}: {e}"
        if members is None:
            uncoupled[name] = why
            groups[name] = alone_groups(model, [name])[name]
            continue
        if not any(m.layer == name and m.role == "producer" for m in members):
            members.insert(0, alone_groups(model, [name])[name][0])
        groups[name] = members
    inside = [n for n in layer_names if model.get_submodule(n) not in dg.module2node]
    del dg  # its nodes hold the traced autograd graph and its saved activations
    groups.update(out_proj_groups(groups, [out for _, out in attention.values() if out]))
    # Layers inside a module traced as one node (model/structures): the group they
    # write into, where they write one channel per channel of it.
    groups.update(out_proj_groups(groups, [n for n in inside if len(groups[n]) == 1]))
    return GroupSearch(groups, uncoupled, "", bounded)


def build_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    layer_names: list[str],
    *,
    virtual: list[str] = (),
    index_budget: int | None = None,
    time_limit: float | None = None,
) -> tuple[dict[str, list[Member]], str]:
    """Members of the output-channel group of every layer in ``layer_names``, and a note on how
    they were found. Without Torch-Pruning (or where its graph cannot be built), every layer
    is its own only producer and has no known consumers; the note says so.

    Groups are Torch-Pruning's (``DependencyGraph.get_pruning_group``'s walk over the same
    dependencies and index mappings), found within bounded memory and time: Torch-Pruning maps
    indices through the window reshapes of Swin and MaxViT as flattenings (one channel becomes
    ~1000 indices) and its walk through them does not end (one channel of torchvision swin_t's
    last stage passes 3e7 index entries; ``get_pruning_group`` dies with MemoryError). Each
    walk may create at most ``index_budget`` index entries (default
    ``default_memory_budget() // BYTES_PER_INDEX``, about 1 GiB of them); a group over the
    budget is walked on blocks of its root channels (see ``_bounded_group``) and the pieces
    are merged. A layer whose group needs more than ``WORK_PER_BUDGET * index_budget`` entries
    in all, whose single channel goes over the budget, whose walks take more than
    ``time_limit`` seconds (``GROUP_TIME_LIMIT_S``) or raise, keeps only itself as producer
    and no consumer (no coupling); a warning and the returned note name those layers and why.
    """
    if index_budget is None:
        index_budget = max(1, default_memory_budget() // BYTES_PER_INDEX)
    time_limit = GROUP_TIME_LIMIT_S if time_limit is None else time_limit
    found = find_groups(
        model,
        example_input,
        layer_names,
        virtual=virtual,
        index_budget=index_budget,
        time_limit=time_limit,
    )
    if found.graph_error == "torch-pruning is not installed":
        return found.groups, "torch-pruning not installed: no coupled channels, no consumers"
    if found.graph_error:
        note = f"Torch-Pruning could not build the dependency graph ({found.graph_error})"
        warnings.warn(
            f"channel graph: {note}; every layer is scored alone (own channels, no coupled "
            "producers, no consumers; config['graph'] says why)",
            stacklevel=2,
        )
        return found.groups, note
    uncoupled = found.uncoupled
    note = "Torch-Pruning dependency graph"
    if not found.bounded:
        note += " (groups unbounded: this Torch-Pruning lacks the 1.6 internals the bound needs)"
    if uncoupled:
        by_reason: dict[str, list[str]] = {}
        for n, why in uncoupled.items():
            by_reason.setdefault(why, []).append(n)
        listed = "; ".join(f"{why}: {', '.join(ns)}" for why, ns in by_reason.items())
        note += (
            f"; {len(uncoupled)} layer(s) lost their coupling and are scored alone (own "
            f"channels, no coupled producers, no consumers): {listed}"
        )
        shown = ", ".join(list(uncoupled)[:8]) + (" ..." if len(uncoupled) > 8 else "")
        warnings.warn(
            f"channel graph: the Torch-Pruning group of {len(uncoupled)} layer(s) could not "
            f"be built (index budget {index_budget} entries per walk, {time_limit:g} s per "
            f"layer); they are scored alone (own channels, no coupled producers, no "
            f"consumers; config['graph'] says why): {shown}",
            stacklevel=2,
        )
    return found.groups, note


def _walk_supported() -> bool:
    """Whether the installed Torch-Pruning has the internals ``_walk`` uses (1.6)."""
    try:
        from torch_pruning import _helpers
        from torch_pruning.dependency.dependency import Dependency  # noqa: F401
        from torch_pruning.dependency.index_mapping import _FlattenIndexMapping
    except ImportError:
        return False
    return hasattr(_helpers, "_HybridIndex") and hasattr(_FlattenIndexMapping(2), "_stride")


def _unbounded_group(
    dg, module: nn.Module, names: Mapping[nn.Module, str], attention: Attention | None = None
) -> list[Member]:
    """Torch-Pruning's own ``get_pruning_group`` (no bound on its memory)."""
    pruner = dg.get_pruner_of_module(module)
    channels = pruner.get_out_channels(module)
    group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
    return members_of_group(group, names, attention)


def _bounded_group(
    dg,
    module: nn.Module,
    names: Mapping[nn.Module, str],
    budget: int,
    time_limit: float,
    attention: Attention | None = None,
) -> tuple[list[Member] | None, str]:
    """The measured members of ``module``'s output-channel group, or None and the reason where
    it cannot be found within the bounds.

    Channel 0 is walked first, with a budget of ``WORK_PER_BUDGET * budget / channels`` (at
    most ``budget``): a group whose single channel costs more cannot be finished within that
    much work at all (MaxViT's qkv projections: ~1e6 entries per channel). From its cost,
    blocks of the other root channels that should fit ``budget`` are walked (usually one
    block); a block over it is halved. The members of all walks are merged. The layer is given
    up when the entries created in all walks pass ``WORK_PER_BUDGET * budget``, when a single
    channel does not fit, or after ``time_limit`` seconds.
    """
    import torch_pruning as tp

    from causalprune_fast.model.structures.pruners import StructurePruner

    pruner = dg.get_pruner_of_module(module)
    channels = pruner.get_out_channels(module)
    fn = pruner.prune_out_channels
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and (
        module.groups == module.out_channels > 1
    ):
        fn = tp.prune_depthwise_conv_out_channels  # as get_pruning_group does
    deadline = time.perf_counter() + time_limit
    work = WORK_PER_BUDGET * budget
    root_node = dg.module2node[module]
    try:
        probe_budget = max(1, min(budget, work // channels))
        probe, spent = _walk(dg, root_node, fn, range(1), probe_budget, deadline)
    except _GroupTooLarge:
        if time.perf_counter() > deadline:
            return None, f"over {time_limit:g} s"
        return None, (
            f"one channel needs over {probe_budget} index entries: the {channels} channels "
            f"would pass the budget or the work limit ({work} entries in all)"
        )
    merged: dict[tuple, dict[int, int | None]] = {}  # (dep target, handler) -> idx -> root
    deps: dict[tuple, object] = {}

    def merge(items: list) -> None:
        for dep, idxs in items:
            known = dep.target.module in names or dep.target.module in (attention or {})
            structure = isinstance(getattr(dep.handler, "__self__", None), StructurePruner)
            if not known and not structure:
                continue  # norms, activations, reshapes: not members
            key = (dep.target, dep.handler)
            deps.setdefault(key, dep)
            seen = merged.setdefault(key, {})
            for i in idxs:  # merge like Group.add_and_merge: the first root of an idx wins
                seen.setdefault(i.idx, i.root_idx)

    merge(probe)
    size = max(1, budget // (2 * spent))
    blocks = [range(b, min(b + size, channels)) for b in range(1, channels, size)][::-1]
    while blocks:
        block = blocks.pop()
        try:
            items, used = _walk(
                dg, root_node, fn, block, max(1, min(budget, work - spent)), deadline
            )
        except _GroupTooLarge as e:
            spent += e.used
            if time.perf_counter() > deadline:
                return None, f"over {time_limit:g} s"
            if spent >= work:
                return None, f"over {work} index entries in all walks (the work limit)"
            if len(block) == 1:
                return None, f"one channel needs over {budget} index entries (the budget)"
            half = len(block) // 2
            blocks += [block[half:], block[:half]]  # the first half is walked next
            continue
        spent += used
        merge(items)
    triples = ((deps[key], tuple(m), tuple(m.values())) for key, m in merged.items())
    return members_of_items(triples, names, attention), ""


def _walk(dg, root_node, fn, channels: range, budget: int, deadline: float) -> tuple[list, int]:
    """``(dependency, hybrid idxs)`` items of the group rooted at ``channels`` of ``root_node``
    under ``fn``: the walk of Torch-Pruning 1.6's ``get_pruning_group`` (same dependencies, index
    mappings and revisit rule), raising ``_GroupTooLarge`` before it creates more than
    ``budget`` index entries in all or runs past ``deadline``; and the entries created."""
    from torch_pruning import _helpers
    from torch_pruning.dependency.dependency import Dependency
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    root_idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in channels]
    root = Dependency(fn, fn, source=root_node, target=root_node)
    items = [(root, root_idxs)]
    done: dict[tuple, list[list]] = {(root_node, fn): [root_idxs]}
    visited, stack, used = set(), [(root, root_idxs)], len(root_idxs)
    while stack:
        dep, idxs = stack.pop()
        node, handler = dep.target, dep.handler
        visited.add(node)
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(handler):
                continue
            new = idxs
            for mapping in new_dep.index_mapping:
                if mapping is None:
                    continue
                # A flattening is the one mapping whose output outgrows its input: refuse it
                # before it allocates.
                grows = isinstance(mapping, _FlattenIndexMapping) and not mapping.reverse
                if grows and used + len(new) * mapping._stride > budget:
                    raise _GroupTooLarge(used)
                new = mapping(new)
            if len(new) == 0:
                continue
            key = (new_dep.target, new_dep.handler)
            if new_dep.target in visited and any(new == old for old in done.get(key, ())):
                continue
            used += len(new)
            if used > budget or time.perf_counter() > deadline:
                raise _GroupTooLarge(used)
            done.setdefault(key, []).append(new)
            items.append((new_dep, new))
            stack.append((new_dep, new))
    return items, used
