"""The maximum-entropy perturbation (docs/method.md section 1): i.i.d. uniform noise on a box.

Every noise example is drawn from its own generator, seeded from ``(seed, stream, example
index)``, where the stream says what the noise is for and for which layer (:func:`stream`),
on the device that holds the model: CUDA generators are counter-based (Philox), so example
``i`` is the same tensor whatever the batch it is drawn in, the number of batches or (issue 6)
the number of processes drawing examples. The CPU generator is torch's default one, seeded
the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_MASK = (1 << 64) - 1

# What a noise stream is for. A stream is (purpose, layer): the model's input noise is stream
# 0; each measured layer has its own stream per purpose, so no two layers or purposes share one.
INPUT = 0  # the model's input noise (layer 0)
ROWS = 1  # a layer's seeded subsample of its (example, position) sample rows
LOCAL = 2  # a layer's input noise in local mode (and the fused local kernel's seed)
PAIRS = 3  # the partner units a layer's MI sums are estimated from (pairs_per_unit)
_LAYER_BITS = 32


def stream(purpose: int, layer: int = 0) -> int:
    """The stream of ``purpose`` (INPUT, ROWS, LOCAL or PAIRS) for measured layer ``layer``:
    a different stream for every (purpose, layer) pair, ``purpose * 2**32 + layer``."""
    if purpose not in (INPUT, ROWS, LOCAL, PAIRS):
        raise ValueError(f"purpose must be INPUT, ROWS, LOCAL or PAIRS, got {purpose!r}")
    if not 0 <= layer < 1 << _LAYER_BITS:
        raise ValueError(f"layer must be in [0, 2**{_LAYER_BITS}), got {layer}")
    return (purpose << _LAYER_BITS) | layer


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def example_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit generator seed for noise example ``index`` of ``stream`` under ``seed``."""
    z = _splitmix64(seed & _MASK)
    z = _splitmix64(z ^ (stream & _MASK))
    z = _splitmix64(z ^ (index & _MASK))
    return z >> 1


def uniform_examples(
    shape: Sequence[int],
    start: int,
    count: int,
    low: float | torch.Tensor,
    high: float | torch.Tensor,
    *,
    seed: int,
    stream: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Examples ``start .. start + count - 1`` of uniform noise, ``[count, *shape]``.

    ``low``/``high`` are floats, or tensors broadcastable to ``shape`` (per-channel ranges).
    Integer ``dtype`` draws uniform integers in ``[low, high)``.
    """
    out = torch.empty((count, *shape), device=device, dtype=dtype)
    gen = torch.Generator(device=device)
    integer = not dtype.is_floating_point
    for k in range(count):
        gen.manual_seed(example_seed(seed, stream, start + k))
        if integer:
            out[k] = torch.randint(
                int(low), int(high), tuple(shape), generator=gen, device=device, dtype=dtype
            )
        elif isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
            u = torch.rand(tuple(shape), generator=gen, device=device, dtype=dtype)
            out[k] = low + u * (high - low)
        else:
            out[k].uniform_(float(low), float(high), generator=gen)
    return out


def input_noise(
    input_shape: Sequence[int],
    start: int,
    count: int,
    input_range: tuple[float, float],
    *,
    seed: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Noise examples ``start .. start + count - 1`` at the model's input (stream INPUT),
    uniform on ``input_range``; a batch that cannot be allocated is a ValueError naming
    input_shape (and batch_size)."""
    try:
        return uniform_examples(
            input_shape,
            start,
            count,
            *input_range,
            seed=seed,
            stream=stream(INPUT),
            device=device,
            dtype=dtype,
        )
    except (RuntimeError, MemoryError) as e:
        if not isinstance(e, MemoryError | torch.OutOfMemoryError) and "alloc" not in str(e):
            raise
        size = count * math.prod(input_shape) * dtype.itemsize
        raise ValueError(
            f"input_shape={tuple(input_shape)}: a noise batch of {count} example(s) needs "
            f"{size} bytes on {device}, which cannot be allocated; check input_shape "
            f"(one example, without the batch dimension) or lower batch_size"
        ) from None
