"""What :func:`causalprune_fast.prune` did: widths before and after, and any shortfall."""

from __future__ import annotations

import contextlib
import io
import math
import sys
from dataclasses import dataclass, field


@dataclass
class PruneReport:
    """What :func:`prune` did.

    ``groups`` has one entry per channel group Torch-Pruning could prune (named after its root
    layer): ``(width before, width after)``. ``channels`` has the output channels of every
    measured layer before and after. ``ratio`` is the fraction of the groups' channels that
    was asked for, ``achieved`` the fraction removed. ``kept`` names the layers whose output
    channels a structure of the model forbids to prune (ShuffleNetV2's shuffled streams), with
    why: their groups are not among ``groups``.
    """

    params_before: int
    params_after: int
    macs_before: float
    macs_after: float
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (before, after)
    rescored: int = 0  # how many times the network was scored
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # root: (before, after)
    ratio: float = 0.0
    achieved: float = 0.0
    short: dict[str, int] = field(default_factory=dict)  # root: channels it should have lost
    kept: dict[str, str] = field(default_factory=dict)  # layer: why its outputs are kept

    def summary(self) -> str:
        """Params and MACs before and after, the ratio asked for and reached, every group."""
        lines = [
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(self.params_before, 1):.1%}); MACs {self.macs_before:,.0f}"
            f" -> {self.macs_after:,.0f} ({self.macs_after / max(self.macs_before, 1):.1%}); "
            f"scored {self.rescored} time(s)",
            f"channels removed: {self.achieved:.1%} of the prunable groups' channels "
            f"(asked for {self.ratio:.1%})",
        ]
        for name, (before, after) in self.groups.items():
            note = ""
            if name in self.short:
                note = f" (short of the ratio: wanted {before - self.short[name]} left)"
            lines.append(f"  group {name}: {before} -> {after} channels{note}")
        for name, (before, after) in self.channels.items():
            if before != after and name not in self.groups:
                lines.append(f"  {name}: {before} -> {after} output channels")
        by_reason: dict[str, list[str]] = {}
        for name, why in self.kept.items():
            by_reason.setdefault(why, []).append(name)
        for why, names in by_reason.items():
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            lines.append(f"  kept, {why}: {shown}")
        return "\n".join(lines)


def wanted_removals(width: int, ratio: float) -> int:
    """Channels that ``ratio`` asks to remove from ``width`` (never all of them)."""
    return min(width - 1, math.floor(width * ratio + 1e-9))


def shortfall_message(report: PruneReport, global_pruning: bool) -> str | None:
    """Why ``report`` falls short of the ratio asked for, with the numbers; None if it does not."""
    total = sum(w for w, _ in report.groups.values())
    removed = sum(w - a for w, a in report.groups.values())
    if global_pruning:
        wanted = wanted_removals(total, report.ratio)
        slack = len(report.groups)
        if removed >= wanted - slack:
            return None
        detail = (
            "with global_pruning, the threshold would empty groups, and Torch-Pruning leaves "
            "such groups alone"
        )
    elif not report.short:
        return None
    else:
        listed = ", ".join(
            f"{n} ({report.groups[n][0]} -> {report.groups[n][1]}, wanted "
            f"{report.groups[n][0] - k} left)"
            for n, k in list(report.short.items())[:8]
        )
        more = len(report.short) - 8
        detail = (
            f"Torch-Pruning leaves alone a group it would empty, or whose channels are not "
            f"scored; {len(report.short)} group(s) fell short: {listed}"
            + (f" and {more} more" if more > 0 else "")
        )
    return (
        f"prune(ratio={report.ratio:g}) removed {removed} of the {total} channels of the "
        f"prunable groups ({removed / max(total, 1):.1%}), short of the {report.ratio:.1%} "
        f"asked for: {detail}"
    )


# What Torch-Pruning's op counter (ptflops' code) prints to stdout when a module instance is
# reached twice (a module shared by two parents, as in CoaT): a note about its own attribute
# names, not about the user's model. Anything else it prints is passed on to stderr.
_OP_COUNTER_NOTE = "Warning: variables __flops__ or __params__ are already defined for the module"


def count_macs_and_params(model, example_input) -> tuple[float, int]:
    """Torch-Pruning's ``count_ops_and_params``, with its stdout kept off the user's stdout."""
    import torch_pruning as tp

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        macs, params = tp.utils.count_ops_and_params(model, example_input)
    other = [line for line in buf.getvalue().splitlines() if not line.startswith(_OP_COUNTER_NOTE)]
    if other:
        print("\n".join(other), file=sys.stderr)
    return macs, params
