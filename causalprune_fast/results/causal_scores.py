"""CausalScores: the result of scoring a model, with a summary table, plots, and save/load
(the file format is described in ``file_format.py``)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping

import torch

from causalprune_fast.base.validation import check_image_path
from causalprune_fast.model.attention import head_scores
from causalprune_fast.model.channel_members import Member
from causalprune_fast.results.channel_scores import (
    DIRECTIONS,
    REDUCTIONS,
    channel_scores,
    direction_fallbacks,
)
from causalprune_fast.results.file_format import read_scores, write_scores
from causalprune_fast.results.layer_scores import LayerScores, few_sample_layers


class CausalScores(Mapping):
    """Channel scores of every measured layer: ``scores[name]`` is a 1-D float64 tensor over
    the output channels of the layer called ``name`` (low = little causal information flows
    through the channel = pruned first), under ``config["direction"]``."""

    def __init__(
        self,
        layers: dict[str, LayerScores],
        groups: dict[str, list[Member]],
        config: dict,
        unsupported: dict[str, str] | None = None,
        timings: dict[str, float] | None = None,
        heads: dict[str, dict] | None = None,
    ):
        self.layers = layers
        self.groups = groups
        self.config = dict(config)
        self.unsupported = dict(unsupported or {})
        self.timings = dict(timings or {})
        self._heads_spec = dict(heads or {})  # attention module -> head spec (attention.py)
        self._scores = self._compute(self.config.get("direction", "in"))

    # ------------------------------------------------------------------ scores
    def _compute(self, direction: str, reduction: str | None = None) -> dict[str, torch.Tensor]:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        reduction = reduction or self.config.get("reduction", "sum")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        incoming = {n: s.incoming for n, s in self.layers.items()}
        outgoing = {n: s.outgoing for n, s in self.layers.items()}
        # Layers scored by "in" although direction is "out"/"both" (no measured consumer).
        self.fallbacks = direction_fallbacks(self.groups, self.layers, direction)
        return {
            name: channel_scores(
                self.groups[name], len(s.incoming), incoming, outgoing, direction, reduction
            )
            for name, s in self.layers.items()
        }

    def with_direction(self, direction: str, reduction: str | None = None) -> CausalScores:
        """The same measurements, scored under another direction (and reduction).

        Raises:
            ValueError: ``direction`` not one of "in", "out", "both", or ``reduction`` not
                None, "sum", "mean" or "max".
        """
        if not isinstance(direction, str) or direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if reduction is not None and reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be None or one of {REDUCTIONS}, got {reduction!r}")
        config = dict(self.config, direction=direction)
        if reduction is not None:
            config["reduction"] = reduction
        return CausalScores(
            self.layers, self.groups, config, self.unsupported, self.timings, self._heads_spec
        )

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._scores[name]
        except KeyError:
            raise KeyError(f"no measured layer called {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    @property
    def heads(self) -> dict[str, torch.Tensor]:
        """Attention-head scores, ``[num_heads]`` per attention module: the sum over each
        head's q, k and v channels of their channel scores (with grouped-query attention a
        key/value head's share; see :mod:`causalprune_fast.model.attention`)."""
        return head_scores(self._heads_spec, self._scores)

    def sensitivity(self) -> dict[str, float]:
        """Layer sensitivity: the sum of each layer's MI matrix."""
        return {n: s.sensitivity for n, s in self.layers.items()}

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        """A per-layer table: response point, samples and how they were made (path), units,
        scores, time."""
        head = (
            "layer",
            "kind",
            "channels",
            "inputs",
            "samples",
            "path",
            "score mean",
            "score min",
            "score max",
            "sensitivity",
            "ms",
            "response",
        )
        rows = []
        for name, s in self.layers.items():
            sc = self._scores[name]
            ms = 1e3 * sum(s.timings.values())
            resp = s.response + (f" ({s.response_reason})" if s.response_reason else "")
            kind = s.kind
            if s.called_by:  # e.g. "Linear via F.linear": used through its weight
                kind += " via " + ", ".join(sorted(set(re.findall(r"F\.\w+", s.called_by))))
            if s.calls > 1:
                kind += f" x{s.calls}"  # called several times per pass: rows pooled
            rows.append(
                (
                    name,
                    kind,
                    str(len(sc)),
                    str(s.input_units),
                    str(s.samples),
                    s.path or "-",
                    f"{sc.mean():.4g}",
                    f"{sc.min():.4g}",
                    f"{sc.max():.4g}",
                    f"{s.sensitivity:.4g}",
                    f"{ms:.0f}",
                    resp,
                )
            )
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
        lines = []
        for r in [head, *rows]:
            pairs = enumerate(zip(r[:-1], widths, strict=True))
            cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
            lines.append("  ".join(cells) + "  " + r[-1])
        lines.insert(1, "-" * len(lines[0]))
        c = self.config
        lines.insert(
            0,
            (
                f"{len(self.layers)} layers; mode={c.get('mode')} direction="
                f"{c.get('direction')} bins={c.get('bins')} taps={c.get('taps')} "
                f"examples={c.get('examples', c.get('samples'))} samples_per_layer="
                f"{c.get('samples_per_layer', c.get('max_samples_per_layer'))} "
                f"seed={c.get('seed')} "
                f"backend={c.get('backend')}"
            ),
        )
        if self.timings:
            lines.append("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        few = few_sample_layers(self.layers, c.get("bins", 16))
        if few:
            lines.append(
                f"few samples (< bins^2, MI dominated by estimator bias): "
                f"{', '.join(few)}; raise `samples_per_layer` (local mode) or `examples` "
                "(propagated mode) to measure them better"
            )
        outputs = [n for n, s in self.layers.items() if s.model_output]
        if outputs:
            lines.append(f"model outputs (their channels are not prunable): {', '.join(outputs)}")
        if self.fallbacks:
            fell = ", ".join(f"{n} ({r})" for n, r in self.fallbacks.items())
            lines.append(f"direction={c.get('direction')} fell back to 'in' for: {fell}")
        for name, reason in self.unsupported.items():
            lines.append(f"not scored: {name}: {reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"CausalScores({len(self.layers)} layers, direction="
            f"{self.config.get('direction')!r}, mode={self.config.get('mode')!r})"
        )

    def plot(self, path: str | os.PathLike | None = None, *, ax=None):
        """Per-layer distributions of the channel scores (one box per layer, in forward
        order); needs matplotlib. Returns the figure.

        Args:
            path: if given, the figure is saved there (the format from the extension).
            ax: a matplotlib ``Axes`` to draw into (its figure is returned and left open).

        Without ``ax``, saving to ``path`` draws on a figure of its own that is never
        registered with ``pyplot``: nothing is left open and matplotlib's backend and global
        state are left as found. Without ``path`` and ``ax``, the figure comes from
        ``pyplot.subplots`` (so notebooks show it); closing it is then the caller's business.

        Raises:
            TypeError: ``path`` not a path, or ``ax`` not a matplotlib Axes.
            FileNotFoundError: the folder of ``path`` does not exist (checked before drawing).
            ValueError: matplotlib cannot write files with the extension of ``path``.
        """
        if path is not None:
            path = check_image_path(path, "path")
        try:
            import matplotlib.axes
            import matplotlib.figure
        except ImportError as e:
            raise ImportError("plotting needs matplotlib: pip install matplotlib") from e
        if ax is not None and not isinstance(ax, matplotlib.axes.Axes):
            raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        names = list(self.layers)
        size = (max(6.0, 0.28 * len(names) + 2), 4.5)
        if ax is not None:
            fig = ax.figure
        elif path is not None:
            fig = matplotlib.figure.Figure(figsize=size)  # not known to pyplot: nothing to close
            ax = fig.subplots()
        else:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=size)
        data = [self._scores[n].numpy() for n in names]
        ax.boxplot(data, showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(names) + 1), names, rotation=90, fontsize=6)
        # Scores span orders of magnitude across layers (and dead channels score 0).
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"channel score (bits, direction={self.config.get('direction')})")
        ax.set_title(f"{self.config.get('model', 'model')}: causal channel scores per layer")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=150)
        return fig

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file (format in ``file_format.py``), atomically: to a
        temporary name first, renamed when complete; on any failure nothing is left behind.

        Raises:
            TypeError: ``path`` is not a str or os.PathLike.
            IsADirectoryError: ``path`` is a directory.
            FileNotFoundError: the folder of ``path`` does not exist.
            OSError: the file could not be written (the message names ``path``).
        """
        write_scores(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CausalScores:
        """Read a file written by :meth:`save`.

        Raises:
            TypeError: ``path`` is not a str or os.PathLike.
            FileNotFoundError: no file at ``path``.
            IsADirectoryError: ``path`` is a directory.
            ValueError: the file is not a valid causalprune_fast scores file (not safetensors,
                no or unreadable metadata, missing entries); the message names the path and
                what is wrong.
        """
        return cls(*read_scores(path))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors (average ranks for ties)."""

    def ranks(t: torch.Tensor) -> torch.Tensor:
        t = t.double().flatten()
        values, order = torch.sort(t)
        starts = torch.ones_like(values, dtype=torch.bool)
        starts[1:] = values[1:] != values[:-1]
        tie = torch.cumsum(starts, 0) - 1  # index of each sorted value's run of ties
        position = torch.arange(len(t), dtype=torch.float64)
        mean_rank = torch.zeros(int(tie[-1]) + 1, dtype=torch.float64).index_add_(0, tie, position)
        mean_rank /= torch.bincount(tie).double()
        r = torch.empty_like(t)
        r[order] = mean_rank[tie]
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")
