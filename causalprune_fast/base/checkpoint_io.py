"""Hugging Face checkpoint directories, read and written one tensor at a time.

A checkpoint directory is what ``save_pretrained`` writes: ``config.json`` and the weights as
safetensors, either one ``model.safetensors`` or shards listed by
``model.safetensors.index.json`` (``{"metadata": {...}, "weight_map": {tensor: shard}}``).

:class:`Checkpoint` checks the whole directory when it is opened (the config, the index, every
shard's header, every tensor the index names), before anything is loaded, so a missing or
broken file is an error naming it before any work starts; tensors are then read on demand
(safetensors maps the file and reads only the tensors asked for).

:class:`CheckpointWriter` writes a new directory one shard at a time into a temporary
directory next to the destination, and renames it to the destination only when everything is
written: an interrupted or failed write leaves nothing under the destination's name.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from causalprune_fast.base.memory import return_freed_memory

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Files of a checkpoint directory that describe the model without being weights: copied as
# they are into a pruned checkpoint (the tokenizer is unchanged by pruning).
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor of a checkpoint lives, and its shape and dtype (from the header)."""

    shard: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} does not hold a JSON object")
    return data


def _shard_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, from its header (no tensor data is read)."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint shard {str(path)!r} does not exist")
    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                dtype = _DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise ValueError(f"tensor {name!r} has dtype {sl.get_dtype()}")
                out[name] = TensorInfo(path.name, tuple(sl.get_shape()), dtype)
    except (OSError, ValueError, RuntimeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(
            f"checkpoint shard {str(path)!r} is not a readable safetensors file ({e})"
        ) from None
    except Exception as e:  # safetensors' own error types
        raise ValueError(
            f"checkpoint shard {str(path)!r} is not a readable safetensors file "
            f"({type(e).__name__}: {e})"
        ) from None
    return out


class Checkpoint:
    """A Hugging Face checkpoint directory, checked when opened (see the module docstring).

    Attributes:
        path: the directory.
        config: the parsed ``config.json``.
        tensors: every tensor name -> :class:`TensorInfo` (shard file, shape, dtype).
    """

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"checkpoint path must be a str or os.PathLike, got {path!r}")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"checkpoint directory {str(self.path)!r} does not exist")
        if not self.path.is_dir():
            raise NotADirectoryError(
                f"{str(self.path)!r} is not a checkpoint directory (config.json and safetensors "
                "shards, as save_pretrained writes them)"
            )
        config = self.path / CONFIG
        if not config.is_file():
            raise FileNotFoundError(
                f"checkpoint directory {str(self.path)!r} has no {CONFIG} (a Hugging Face "
                "checkpoint directory, as save_pretrained writes it, is needed)"
            )
        self.config = _read_json(config, "checkpoint config")
        self.tensors = self._index()

    def _index(self) -> dict[str, TensorInfo]:
        index, single = self.path / INDEX, self.path / SINGLE
        if index.is_file():
            data = _read_json(index, "checkpoint index")
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"checkpoint index {str(index)!r} has no weight_map")
            shards: dict[str, list[str]] = {}
            for name, shard in weight_map.items():
                if not isinstance(shard, str) or os.path.basename(shard) != shard:
                    raise ValueError(
                        f"checkpoint index {str(index)!r}: tensor {name!r} names the shard "
                        f"{shard!r}, which is not a file name in the directory"
                    )
                shards.setdefault(shard, []).append(name)
            missing = [s for s in shards if not (self.path / s).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"checkpoint {str(self.path)!r}: {len(missing)} shard(s) listed in {INDEX} "
                    f"do not exist: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
                )
            out = {}
            for shard, names in shards.items():
                header = _shard_header(self.path / shard)
                absent = [n for n in names if n not in header]
                if absent:
                    raise ValueError(
                        f"checkpoint shard {str(self.path / shard)!r} lacks tensor(s) that "
                        f"{INDEX} puts there: {', '.join(absent[:4])}"
                        f"{' ...' if len(absent) > 4 else ''}"
                    )
                out.update({n: header[n] for n in names})
            return out
        if single.is_file():
            return _shard_header(single)
        raise FileNotFoundError(
            f"checkpoint directory {str(self.path)!r} has neither {INDEX} nor {SINGLE} (the "
            "weights must be safetensors, as save_pretrained writes them)"
        )

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        """Bytes of the named tensors (all by default), as stored."""
        names = self.tensors if names is None else names
        return sum(self.tensors[n].nbytes for n in names)

    def load(
        self,
        names: Iterable[str],
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named tensors, read from their shards onto ``device`` (cast to ``dtype`` where
        given and the tensor is floating point). A name the checkpoint does not hold is a
        KeyError naming it and the directory."""
        from safetensors import safe_open

        by_shard: dict[str, list[str]] = {}
        for n in names:
            info = self.tensors.get(n)
            if info is None:
                raise KeyError(f"checkpoint {str(self.path)!r} holds no tensor {n!r}")
            by_shard.setdefault(info.shard, []).append(n)
        out = {}
        for shard, group in by_shard.items():
            with safe_open(str(self.path / shard), framework="pt", device="cpu") as f:
                for n in group:
                    t = f.get_tensor(n)
                    if dtype is not None and t.is_floating_point():
                        t = t.to(dtype)
                    out[n] = t.to(device)
        return out

    def iter_tensors(self, names: Iterable[str] | None = None):
        """``(name, tensor)`` of the named tensors (all by default), one at a time on the CPU,
        shard by shard (each shard opened once), in the order given within a shard."""
        from safetensors import safe_open

        names = list(self.tensors if names is None else names)
        order = {n: i for i, n in enumerate(names)}
        by_shard: dict[str, list[str]] = {}
        for n in names:
            by_shard.setdefault(self.tensors[n].shard, []).append(n)
        for shard in sorted(by_shard, key=lambda s: min(order[n] for n in by_shard[s])):
            with safe_open(str(self.path / shard), framework="pt", device="cpu") as f:
                for n in by_shard[shard]:
                    yield n, f.get_tensor(n)


def parse_size(size: int | str, name: str = "max_shard_size") -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``, ``"10KB"``."""
    if isinstance(size, bool):
        raise ValueError(f"{name} must be bytes or a size such as '5GB', got {size!r}")
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"{name} must be positive, got {size}")
        return size
    if isinstance(size, str):
        from causalprune_fast.base.memory import parse_bytes

        return parse_bytes(size, name)
    raise ValueError(f"{name} must be bytes or a size such as '5GB', got {size!r}")


class CheckpointWriter:
    """Writes a checkpoint directory at ``dest`` atomically, one shard at a time.

    Tensors given to :meth:`add` are kept until they make up ``max_shard_size`` bytes, then
    written as one shard into a temporary directory next to ``dest``; :meth:`finish` writes
    the last shard, the index and the config, and renames the temporary directory to ``dest``.
    :meth:`abort` (or leaving a ``with`` block with an exception) removes the temporary
    directory: nothing appears under ``dest`` unless the write completed.
    """

    def __init__(self, dest: str | os.PathLike, max_shard_size: int | str = "2GB"):
        self.dest = Path(dest)
        check_destination(self.dest)
        self.max_shard_size = parse_size(max_shard_size)
        prefix = f".{self.dest.name}.partial-"
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self.dest.parent))
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
        self.total_size = 0
        self._done = False

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.abort()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor (copied to the CPU, contiguous); a full shard is written."""
        if name in self._pending or any(name in names for _, names in self._shards):
            raise ValueError(f"tensor {name!r} was added twice")
        t = tensor.detach().to("cpu").contiguous()
        size = t.numel() * t.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_size:
            self.flush()
        self._pending[name] = t
        self._pending_bytes += size
        self.total_size += size

    def flush(self) -> None:
        """Write the queued tensors as one shard."""
        if not self._pending:
            return
        from safetensors.torch import save_file

        file = f"shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(self.tmp / file), metadata={"format": "pt"})
        self._shards.append((file, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0
        return_freed_memory()

    def finish(self, config: Mapping, side_files_from: str | os.PathLike | None = None) -> Path:
        """Write the last shard, the index (or the single ``model.safetensors``), ``config``
        and the side files (tokenizer, generation config) of ``side_files_from``; then rename
        the temporary directory to ``dest``. Returns ``dest``."""
        self.flush()
        n = len(self._shards)
        weight_map = {}
        for k, (file, names) in enumerate(self._shards):
            final = SINGLE if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.tmp / file, self.tmp / final)
            weight_map.update({name: final for name in names})
        if n > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
            with open(self.tmp / INDEX, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2, sort_keys=True)
        with open(self.tmp / CONFIG, "w", encoding="utf-8") as f:
            json.dump(dict(config), f, indent=2, sort_keys=True)
        if side_files_from is not None:
            for name in SIDE_FILES:
                src = Path(side_files_from) / name
                if src.is_file():
                    shutil.copy2(src, self.tmp / name)
        check_destination(self.dest)  # nobody made it meanwhile
        os.rename(self.tmp, self.dest)
        self._done = True
        return self.dest

    def abort(self) -> None:
        """Remove the temporary directory and everything written so far."""
        self._pending = {}
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)


def check_destination(dest: str | os.PathLike, name: str = "out") -> Path:
    """A destination for a new checkpoint directory: it must not exist yet and its parent
    folder must exist and be writable (checked before any work)."""
    if not isinstance(dest, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, got {dest!r}")
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(
            f"{name} {str(dest)!r} already exists; give a new directory name (nothing is "
            "overwritten)"
        )
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{name} {str(dest)!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{name} {str(dest)!r}: the folder {str(parent)!r} is not writable")
    return dest
