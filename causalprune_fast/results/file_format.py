"""The results file: one safetensors file per :class:`~causalprune_fast.CausalScores`.

Tensors are named ``layer/<name>/incoming``, ``layer/<name>/outgoing``, optionally
``layer/<name>/x_ranges``, ``layer/<name>/y_ranges`` and ``layer/<name>/matrix``;
``score/<name>`` holds the channel scores under the stored direction and ``head/<name>``
attention-head scores. The header's metadata entry ``causalprune`` is a JSON document with
``config`` (every setting of the run), ``layers`` (per layer: kind, response point and reason,
samples, path and backend (absent in older files: None), calls and called_by (absent in
older files: 1 and None), units, groups, taps, sensitivity,
timings), ``groups`` (producers and consumers of each layer's output channels, so scores can be
recomputed under another direction), ``heads``, ``unsupported`` and ``timings``.
"""

from __future__ import annotations

import json
import os

import torch

from causalprune_fast.base.validation import check_layer_record, check_output_path
from causalprune_fast.model.channel_members import Member
from causalprune_fast.results.layer_scores import LayerScores

FORMAT_VERSION = 1


_IMAGE_SUFFIXES = frozenset(
    (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".tif", ".tiff")
    + (".gif", ".webp", ".bmp", ".pgf", ".raw", ".rgba")
)


def check_scores_path(path: object, name: str, try_write: bool = False) -> str:
    """A path to write a scores file to (:func:`check_output_path`), refusing an image name:
    a scores file written as ``fig.png`` would be a safetensors file no viewer opens."""
    path = check_output_path(path, name, try_write=try_write)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _IMAGE_SUFFIXES:
        raise ValueError(
            f"{name} {path!r}: a scores file is written in safetensors format, not as a "
            f"{suffix} image; give a .safetensors name (a figure is written by plot)"
        )
    return path


def write_scores(scores, path: str | os.PathLike) -> None:
    """Write ``scores`` (a CausalScores) to ``path`` atomically (see CausalScores.save)."""
    from safetensors.torch import save_file

    path = check_scores_path(path, "path")

    tensors = {}
    for name, s in scores.layers.items():
        tensors[f"layer/{name}/incoming"] = s.incoming.double().contiguous()
        tensors[f"layer/{name}/outgoing"] = s.outgoing.double().contiguous()
        for key in ("x_ranges", "y_ranges", "matrix", "incoming_se", "outgoing_se"):
            t = getattr(s, key)
            if t is not None:
                tensors[f"layer/{name}/{key}"] = t.contiguous()
        tensors[f"score/{name}"] = scores[name].double().contiguous()
    for name, h in scores.heads.items():
        tensors[f"head/{name}"] = h.double().contiguous()
    meta = {
        "format": FORMAT_VERSION,
        "config": scores.config,
        "layers": {n: s.meta() for n, s in scores.layers.items()},
        "groups": {n: [m.to_json() for m in g] for n, g in scores.groups.items()},
        "heads": scores._heads_spec,
        "unsupported": scores.unsupported,
        "timings": scores.timings,
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={"causalprune": json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if isinstance(e, Exception) and not isinstance(e, OSError):  # SafetensorError
            raise OSError(f"path {path!r} could not be written: {e}") from e
        raise


def read_scores(path: str | os.PathLike) -> tuple:
    """The constructor arguments of the CausalScores stored at ``path`` (see CausalScores.load):
    ``(layers, groups, config, unsupported, timings, heads)``."""
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
            return _from_meta(meta, f, set(f.keys()))
        except (KeyError, TypeError, IndexError, AttributeError, ValueError, RuntimeError) as e:
            detail = f"missing entry {e}" if isinstance(e, KeyError) else f"{e}"
            raise invalid(f"{detail} ({type(e).__name__})") from None


def _from_meta(meta: dict, f, keys: set[str]) -> tuple:
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
        check_layer_record(
            name, get(f"layer/{name}/incoming", True), get(f"layer/{name}/outgoing", True), m
        )
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
            path=m.get("path"),
            backend=m.get("backend"),
            calls=m.get("calls", 1),
            called_by=m.get("called_by"),
            x_ranges=get(f"layer/{name}/x_ranges"),
            y_ranges=get(f"layer/{name}/y_ranges"),
            matrix=get(f"layer/{name}/matrix"),
            incoming_se=get(f"layer/{name}/incoming_se"),
            outgoing_se=get(f"layer/{name}/outgoing_se"),
            pairs=m.get("pairs"),
        )
    groups = {n: [Member.from_json(d) for d in g] for n, g in meta["groups"].items()}
    missing = set(layers) - set(groups)
    if missing:
        raise KeyError(f"groups of layer(s) {sorted(missing)}")
    return layers, groups, meta["config"], meta["unsupported"], meta["timings"], meta.get("heads")
