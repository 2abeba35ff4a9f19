"""The memory budget: bytes of working memory that every tiled or refused piece of work stays
within (``memory_budget`` arguments), by default :func:`default_memory_budget`."""

from __future__ import annotations

import ctypes
import os
import re
import sys

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gib": 2**30,
    "t": 2**40,
    "tib": 2**40,
}


def parse_bytes(text: str, name: str) -> int:
    """A byte count from text: plain bytes (``1073741824``) or a number with a unit, case
    insensitive: ``KB``/``MB``/``GB``/``TB`` are powers of 1000, ``KiB``/``MiB``/``GiB``/``TiB``
    and the bare ``K``/``M``/``G``/``T`` powers of 1024 (``512MB``, ``1GiB``, ``1.5G``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    unit = m and _BYTE_UNITS.get(m.group(2).lower())
    if not m or unit is None:
        raise ValueError(
            f"{name}={text!r} is not a byte count: give bytes or a number with a unit, "
            "e.g. 1073741824, 512MB, 1GiB or 1.5G"
        )
    value = int(float(m.group(1)) * unit)
    if value <= 0:
        raise ValueError(f"{name}={text!r} must be a positive number of bytes")
    return value


def default_memory_budget() -> int:
    """Bytes of working memory per call: ``CAUSALPRUNE_MEMORY_BUDGET`` or 1 GiB.

    The variable holds bytes or a number with a unit (``512MB``, ``1GiB``, ``1.5G``; ``KB``,
    ``MB``, ... are powers of 1000, ``KiB``, ``MiB``, ... and bare ``K``, ``M``, ``G``, ``T``
    powers of 1024); anything else is a ValueError naming the variable."""
    env = os.environ.get("CAUSALPRUNE_MEMORY_BUDGET")
    return parse_bytes(env, "CAUSALPRUNE_MEMORY_BUDGET") if env else DEFAULT_MEMORY_BUDGET


def return_freed_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc's ``malloc_trim``; nothing
    elsewhere), after a big piece of work is freed (a checkpoint block, a written shard).
    Without it glibc keeps the pages of freed chunks below the mmap threshold it has raised,
    and the resident memory of a block walk (scoring/block_walk.py) creeps up by a few MB per
    block (measured: +116 MB over 24 blocks of 34 MB; +22 MB with it). No allocator setting
    is changed."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to hand back this way
        pass
