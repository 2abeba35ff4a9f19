"""CausalScores: the result of scoring a model, with save/load, a summary table and plots.

File format (``save``/``load``): a safetensors file. Tensors are named
``layer/<name>/incoming``, ``layer/<name>/outgoing``, optionally ``layer/<name>/x_ranges``,
``layer/<name>/y_ranges`` and ``layer/<name>/matrix``; ``score/<name>`` holds the channel
scores under the stored direction and ``head/<name>`` attention-head scores. The header's
metadata entry ``causalprune`` is a JSON document with ``config`` (every setting of the run),
``layers`` (per layer: kind, response point and reason, samples, units, groups, taps,
sensitivity, timings), ``groups`` (producers and consumers of each layer's output channels,
so scores can be recomputed under another direction), ``unsupported`` and ``timings``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from causalprune_fast.channel_graph import Member
from causalprune_fast.channel_scores import (
    DIRECTIONS,
    REDUCTIONS,
    channel_scores,
    direction_fallbacks,
)

FORMAT_VERSION = 1


@dataclass
class LayerScores:
    """What was measured for one layer (METHOD.md section 6)."""

    name: str
    kind: str
    incoming: torch.Tensor  # [C_out]: sum over input units of MI into each output channel
    outgoing: torch.Tensor  # [C_in]: sum over taps and outputs of MI out of each input channel
    sensitivity: float  # sum of the whole MI matrix
    response: str  # where outputs were measured, e.g. "output -> bn1 -> relu"
    response_reason: str | None  # why the search stopped before norm + activation, if it did
    samples: int
    input_units: int
    groups: int
    taps: str
    timings: dict[str, float] = field(default_factory=dict)
    model_output: bool = False  # its output channels are the model's outputs: not prunable
    x_ranges: torch.Tensor | None = None
    y_ranges: torch.Tensor | None = None
    matrix: torch.Tensor | None = None

    def meta(self) -> dict:
        return {
            "kind": self.kind,
            "sensitivity": self.sensitivity,
            "response": self.response,
            "response_reason": self.response_reason,
            "samples": self.samples,
            "input_units": self.input_units,
            "groups": self.groups,
            "taps": self.taps,
            "timings": self.timings,
            "model_output": self.model_output,
        }


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
        key/value head's share; see :mod:`causalprune_fast.attention`)."""
        from causalprune_fast.attention import head_scores

        return head_scores(self._heads_spec, self._scores)

    def sensitivity(self) -> dict[str, float]:
        """Layer sensitivity: the sum of each layer's MI matrix."""
        return {n: s.sensitivity for n, s in self.layers.items()}

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        """A per-layer table: response point, samples, units, scores, time."""
        head = (
            "layer",
            "kind",
            "channels",
            "inputs",
            "samples",
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
            rows.append(
                (
                    name,
                    s.kind,
                    str(len(sc)),
                    str(s.input_units),
                    str(s.samples),
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
                f"examples={c.get('samples')} seed={c.get('seed')} "
                f"backend={c.get('backend')}"
            ),
        )
        if self.timings:
            lines.append("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        few = few_sample_layers(self.layers, c.get("bins", 16))
        if few:
            lines.append(
                f"few samples (< bins^2, MI dominated by estimator bias): "
                f"{', '.join(few)}; raise `samples` to measure them better"
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
        """
        if path is not None:
            path = _check_output_path(path, "path")
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
        """Write a safetensors file (format in this module's docstring), atomically: to a
        temporary name first, renamed when complete; on any failure nothing is left behind.

        Raises:
            TypeError: ``path`` is not a str or os.PathLike.
            IsADirectoryError: ``path`` is a directory.
            FileNotFoundError: the folder of ``path`` does not exist.
        """
        from safetensors.torch import save_file

        path = _check_output_path(path, "path")

        tensors = {}
        for name, s in self.layers.items():
            tensors[f"layer/{name}/incoming"] = s.incoming.double().contiguous()
            tensors[f"layer/{name}/outgoing"] = s.outgoing.double().contiguous()
            for key in ("x_ranges", "y_ranges", "matrix"):
                t = getattr(s, key)
                if t is not None:
                    tensors[f"layer/{name}/{key}"] = t.contiguous()
            tensors[f"score/{name}"] = self._scores[name].double().contiguous()
        for name, h in self.heads.items():
            tensors[f"head/{name}"] = h.double().contiguous()
        meta = {
            "format": FORMAT_VERSION,
            "config": self.config,
            "layers": {n: s.meta() for n, s in self.layers.items()},
            "groups": {n: [m.to_json() for m in g] for n, g in self.groups.items()},
            "heads": self._heads_spec,
            "unsupported": self.unsupported,
            "timings": self.timings,
        }
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            save_file(tensors, tmp, metadata={"causalprune": json.dumps(meta)})
            os.replace(tmp, path)
        except BaseException:
            if os.path.lexists(tmp):
                os.remove(tmp)
            raise

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
        from safetensors import safe_open

        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"path {path!r} is a directory, not a scores file")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no scores file at {path!r}")

        def invalid(what: str) -> ValueError:
            return ValueError(f"{path!r} is not a valid causalprune_fast scores file: {what}")

        try:
            f_ctx = safe_open(path, framework="pt")
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise invalid(f"not a safetensors file ({type(e).__name__}: {e})") from None
        with f_ctx as f:
            raw = (f.metadata() or {}).get("causalprune")
            if raw is None:
                raise invalid("no 'causalprune' metadata entry")
            try:
                meta = json.loads(raw)
            except json.JSONDecodeError as e:
                raise invalid(f"its metadata is not valid JSON ({e})") from None
            if not isinstance(meta, dict):
                raise invalid(f"its metadata is a JSON {type(meta).__name__}, not an object")
            if meta.get("format") != FORMAT_VERSION:
                raise invalid(
                    f"unsupported format version {meta.get('format')!r} "
                    f"(this version reads {FORMAT_VERSION})"
                )
            try:
                return cls._from_meta(meta, f, set(f.keys()))
            except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
                detail = f"missing entry {e}" if isinstance(e, KeyError) else f"{e}"
                raise invalid(f"{detail} ({type(e).__name__})") from None

    @classmethod
    def _from_meta(cls, meta: dict, f, keys: set[str]) -> CausalScores:
        def get(key: str, required: bool = False) -> torch.Tensor | None:
            if key in keys:
                return f.get_tensor(key)
            if required:
                raise KeyError(f"tensor {key!r}")
            return None

        for key in ("config", "layers", "groups", "unsupported", "timings"):
            if key not in meta:
                raise KeyError(f"metadata {key!r}")
        layers = {}
        for name, m in meta["layers"].items():
            layers[name] = LayerScores(
                name=name,
                kind=m["kind"],
                incoming=get(f"layer/{name}/incoming", required=True),
                outgoing=get(f"layer/{name}/outgoing", required=True),
                sensitivity=m["sensitivity"],
                response=m["response"],
                response_reason=m["response_reason"],
                samples=m["samples"],
                input_units=m["input_units"],
                groups=m["groups"],
                taps=m["taps"],
                timings=m["timings"],
                model_output=m.get("model_output", False),
                x_ranges=get(f"layer/{name}/x_ranges"),
                y_ranges=get(f"layer/{name}/y_ranges"),
                matrix=get(f"layer/{name}/matrix"),
            )
        groups = {n: [Member.from_json(d) for d in g] for n, g in meta["groups"].items()}
        missing = set(layers) - set(groups)
        if missing:
            raise KeyError(f"groups of layer(s) {sorted(missing)}")
        return cls(
            layers, groups, meta["config"], meta["unsupported"], meta["timings"], meta.get("heads")
        )


def _check_output_path(path: object, name: str) -> str:
    """A file path to write: its folder must exist and it must not be a directory."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{name} must not be empty")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name} {path!r} is a directory; give a file name in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{name} {path!r}: the folder {folder!r} does not exist")
    return path


def few_sample_layers(layers: Mapping[str, LayerScores], bins: int) -> list[str]:
    """``"name (samples)"`` of every prunable layer measured on fewer than ``bins**2`` samples,
    where the plug-in MI is dominated by its bias (layers whose output is the model's output
    are left out: their channels are not pruned)."""
    return [
        f"{name} ({s.samples})"
        for name, s in layers.items()
        if s.samples < bins * bins and not s.model_output
    ]


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
