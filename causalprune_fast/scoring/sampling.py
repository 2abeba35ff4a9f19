"""A layer's sample rows: which (example, position) rows propagated mode keeps, and how local
mode makes the rows of one layer (docs/method.md sections 2.2 and 3.4).

Local mode measures every layer on exactly ``samples_per_layer`` rows, whatever the layer's
spatial size and the calibration pass. The rows are made by a :class:`RowSource`, which makes
any range ``[a, b)`` of the layer's global rows on demand, so a layer can be processed in
tiles (within ``memory_budget``) and split over ranks without changing its rows:

- ``patches`` (ConvNd with zero padding, Linear): each row is drawn on its own. For a
  convolution it is one receptive-field patch: an output position drawn uniformly, i.i.d.
  uniform noise for every (input channel, tap) on the channel's calibrated range, and 0 for
  every tap that falls in the padding. The layer's outputs at those rows are one matrix
  product (im2col form), and the response is applied per output channel. Rows come in
  blocks of :data:`BLOCK`, each drawn from its own generator seeded from ``(seed, (LOCAL,
  layer), block)``.
- ``full-tensor`` (any other layer: other padding modes, a response that is not elementwise
  per channel): noise examples of the layer's full input shape, drawn per global example
  index, run through the layer; the rows are the seeded subsample of
  :func:`example_rows`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from causalprune_fast.base.conv_geometry import ConvGeometry
from causalprune_fast.base.noise import LOCAL, ROWS, example_seed, stream, uniform_examples
from causalprune_fast.model.layers import Layer, input_rows, output_rows
from causalprune_fast.model.response import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_NAMES,
    ACTIVATION_TYPES,
    ResponsePoint,
)

# Local-mode rows per noise generator (patches path): large enough that copying each block's
# rows into the column-major tile runs at memory speed, small enough to tile tiny budgets.
BLOCK = 256

_FUNCTION_LABELS = {getattr(f, "__name__", "") for f in ACTIVATION_FUNCTIONS} | {
    m.rstrip("_") for m in ACTIVATION_METHODS
}


def example_rows(
    seed: int, stream_id: int, rows: int, examples: int, positions: int, start: int, count: int
) -> torch.Tensor:
    """Flat (example, position) rows kept from examples ``start .. start + count - 1``.

    Example ``e`` keeps ``per`` or ``per + 1`` of its ``positions`` (``rows = per * examples +
    extra``; the first ``extra`` examples keep one more): the first of a permutation seeded
    from ``(seed, stream_id, e)``, sorted. Every position when ``per >= positions``.
    """
    per, extra = divmod(rows, examples)
    if per >= positions:
        return torch.arange(count * positions)
    chosen = []
    for k in range(count):
        e = start + k
        take = per + (1 if e < extra else 0)
        gen = torch.Generator().manual_seed(example_seed(seed, stream_id, e))
        chosen.append(torch.randperm(positions, generator=gen)[:take].sort().values + k * positions)
    return torch.cat(chosen)


def per_channel_elementwise(response: ResponsePoint) -> bool:
    """Whether every step of ``response`` acts on each output channel elementwise (an eval
    BatchNorm with running statistics, or an elementwise activation), so it can be applied
    to ``[rows, channels]`` as well as to the whole output."""
    for label, fn in response.steps:
        if isinstance(fn, nn.modules.batchnorm._BatchNorm):
            if fn.training or not fn.track_running_stats:
                return False
        elif isinstance(fn, nn.Module):
            if not (isinstance(fn, ACTIVATION_TYPES) or type(fn).__name__ in ACTIVATION_NAMES):
                return False
        elif label.split("(")[0] not in _FUNCTION_LABELS:
            return False
    return True


@dataclass
class RowSource:
    """Makes rows ``[a, b)`` of one layer in local mode.

    ``units`` are what tiles and ranks split: rows (``patches``) or noise examples
    (``full-tensor``); ``rows_in(a, b)`` is the number of rows of units ``[a, b)``;
    ``unit_bytes`` bounds the float working memory of one unit.
    """

    path: str
    units: int
    unit_bytes: int
    make: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
    rows_in: Callable[[int, int], int]
    min_units: int = 1  # the smallest tile that is drawn without waste


def row_source(
    layer: Layer,
    response: ResponsePoint,
    *,
    index: int,
    rows: int,
    input_shape: tuple[int, ...],
    positions: int,
    lo: torch.Tensor,
    hi: torch.Tensor,
    taps: str,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    full_tensor: bool = False,
    calls: Sequence[tuple[tuple[int, ...], int, int]] = (),
) -> RowSource:
    """How local mode makes the ``rows`` sample rows of ``layer`` (module docstring);
    ``full_tensor=True`` takes the full-tensor path for any layer (to compare the two).

    ``calls``: ``(input shape, batch rows per example, positions)`` of each call of a layer
    called several times per forward pass. Where the calls' input shapes differ, a
    convolution's patch rows take their output position uniformly over the positions of all
    calls (each with its call's padding), and full-tensor rows are split over the shapes in
    proportion to their positions (each shape's examples drawn from its own example indices)."""
    kw = dict(index=index, seed=seed, device=device, dtype=dtype)
    m = layer.module
    shapes = _shape_weights(calls) if calls else {}
    if len(shapes) < 2:
        shapes = {tuple(input_shape): positions}
    patches = not full_tensor and per_channel_elementwise(response)
    has_norm = any(isinstance(fn, nn.modules.batchnorm._BatchNorm) for _, fn in response.steps)
    if patches and layer.is_conv and m.padding_mode == "zeros":
        return _patch_source(layer, response, rows, shapes, lo, hi, taps, **kw)
    if patches and not layer.is_conv and (all(len(t) == 1 for t in shapes) or not has_norm):
        return _linear_source(layer, response, rows, lo, hi, **kw)
    if len(shapes) == 1:
        return _tensor_source(layer, response, rows, input_shape, positions, lo, hi, taps, **kw)
    parts, total, done = [], sum(shapes.values()), 0
    for k, (shape, weight) in enumerate(shapes.items()):
        share = rows - done if k == len(shapes) - 1 else rows * weight // total
        done += share
        positions_k = dict((tuple(c[0]), c[2]) for c in calls)[shape]
        parts.append(
            _tensor_source(
                layer, response, share, shape, positions_k, lo, hi, taps, first=k << 32, **kw
            )
        )
    return _joined([p for p in parts if p.units])


def _shape_weights(calls) -> dict[tuple[int, ...], int]:
    """The distinct input shapes of a layer's calls, each with its sample positions per noise
    example (batch rows times output positions, summed over the calls of that shape)."""
    out: dict[tuple[int, ...], int] = {}
    for shape, batch, positions in calls:
        out[tuple(shape)] = out.get(tuple(shape), 0) + batch * positions
    return out


def _joined(parts: list[RowSource]) -> RowSource:
    """The rows of several sources, one after the other (units of the first, then of the
    second, ...)."""
    starts = [0]
    for p in parts:
        starts.append(starts[-1] + p.units)

    def pieces(a: int, b: int):
        for p, lo in zip(parts, starts, strict=False):
            x, y = max(a, lo), min(b, lo + p.units)
            if x < y:
                yield p, x - lo, y - lo

    def make(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        made = [p.make(x, y) for p, x, y in pieces(a, b)]
        return torch.cat([m[0] for m in made]), torch.cat([m[1] for m in made])

    def rows_in(a: int, b: int) -> int:
        return sum(p.rows_in(x, y) for p, x, y in pieces(a, b))

    unit_bytes = max(p.unit_bytes for p in parts)
    return RowSource(parts[0].path, starts[-1], unit_bytes, make, rows_in)


def _blocks(
    a: int, b: int, outs: list[torch.Tensor], draw: Callable[[torch.Generator, list], None], **kw
) -> None:
    """Fill ``outs`` (each ``[..., b - a]``: the row index last, so that the rows end up
    column-major, as the binning and MI kernels read them fastest) with rows ``[a, b)`` of
    the blocks that ``draw(generator, views)`` writes into ``views`` (each ``[..., BLOCK]``).
    Block ``j`` has its own generator, seeded from ``(seed, (LOCAL, layer), j)``, so a row
    does not depend on the tile that makes it, nor on the thread that draws it.

    On the CPU, where drawing from one generator is serial, the blocks that lie whole in the
    tile are drawn straight into their rows (an in-place draw consumes the generator in the
    same order as a fresh block) by up to ``torch.get_num_threads()`` threads, each a
    contiguous run of blocks with a generator of its own. The draws are serial kernels, so
    no thread starts a parallel region of its own. A block the tile cuts, and every block on
    other devices, is drawn whole in this thread and its rows in the tile copied."""
    device = torch.device(kw["device"])

    def seeded(gen: torch.Generator, j: int) -> torch.Generator:
        return gen.manual_seed(example_seed(kw["seed"], stream(LOCAL, kw["index"]), j))

    def fill(js: range) -> None:
        gen = torch.Generator(device=device)
        for j in js:
            r = j * BLOCK - a
            draw(seeded(gen, j), [out[..., r : r + BLOCK] for out in outs])

    first, last = a // BLOCK, (b - 1) // BLOCK
    whole = range(first + (a % BLOCK != 0), last + 1 - (b % BLOCK != 0))
    if device.type != "cpu":
        whole = range(0)
    gen = torch.Generator(device=device)
    for j in range(first, last + 1):
        if j in whole:
            continue
        blocks = [torch.empty((*o.shape[:-1], BLOCK), dtype=o.dtype, device=device) for o in outs]
        draw(seeded(gen, j), blocks)
        r0, r1 = max(a, j * BLOCK), min(b, (j + 1) * BLOCK)
        for out, block in zip(outs, blocks, strict=True):
            out[..., r0 - a : r1 - a] = block[..., r0 - j * BLOCK : r1 - j * BLOCK]
    workers = max(1, min(torch.get_num_threads(), len(whole)))
    if workers == 1:
        fill(whole)
        return
    step = [whole.start + len(whole) * w // workers for w in range(workers + 1)]
    with ThreadPoolExecutor(workers) as pool:  # torch's kernels release the GIL
        list(pool.map(fill, [range(step[w], step[w + 1]) for w in range(workers)]))


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """``[rows, C]`` stored column-major (what the binning and MI kernels read fastest)."""
    return t if t.stride(0) == 1 else t.t().contiguous().t()


def _respond(response: ResponsePoint, y: torch.Tensor, dims: int) -> torch.Tensor:
    """The response of ``[rows, C]`` outputs, applied as to ``[rows, C, 1, ...]`` (``dims``
    trailing unit dimensions, so a BatchNormNd sees the shape it expects), column-major."""
    if response.steps:
        y = response.apply(y.reshape(*y.shape, *[1] * dims)).reshape(y.shape)
    return _column_major(y)


def _linear_source(layer, response, rows, lo, hi, *, index, seed, device, dtype) -> RowSource:
    c_in, c_out = layer.in_channels, layer.out_channels
    size = torch.finfo(dtype).bits // 8
    lo2, hi2 = lo.reshape(c_in, 1), hi.reshape(c_in, 1)

    def draw(gen: torch.Generator, views: list[torch.Tensor]) -> None:
        views[0].uniform_(generator=gen)  # as torch.rand((c_in, BLOCK))

    def make(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.empty((c_in, b - a), device=device, dtype=dtype)
        _blocks(a, b, [xt], draw, index=index, seed=seed, device=device)
        x = xt.mul_(hi2 - lo2).add_(lo2).t()  # [rows, c_in], column-major
        with torch.no_grad():
            y = _respond(response, layer.forward(x), 0)
        return x, y

    unit_bytes = (2 * c_in + 3 * c_out) * size  # noise rows and block, outputs, response
    return RowSource("patches", rows, unit_bytes, make, lambda a, b: b - a, BLOCK)


def _patch_source(
    layer, response, rows, shapes, lo, hi, taps, *, index, seed, device, dtype
) -> RowSource:
    """Patch rows of a zero-padded convolution on inputs of the shapes of ``shapes`` (one, or
    several, each with the positions it holds per noise example: the output position of a row
    is drawn over all of them, and its padding is its shape's)."""
    m = layer.module
    geometries = [ConvGeometry.of(m, shape) for shape in shapes]
    geometry = geometries[0]
    dims, k = len(geometry.kernel_size), geometry.taps
    c_in, c_out, g = m.in_channels, m.out_channels, m.groups
    spans = [math.prod(geometry.output_size)]  # positions are drawn from [0, sum(spans))
    if len(geometries) > 1:
        spans = list(shapes.values())
    total = sum(spans)
    grid = torch.meshgrid(*[torch.arange(s) for s in geometry.kernel_size], indexing="ij")
    taps_idx = torch.stack([t.reshape(-1) for t in grid]).to(device)  # [dims, k], row-major
    weight = m.weight.detach().reshape(g, c_out // g, (c_in // g) * k)
    lo3, hi3 = lo.reshape(c_in, 1, 1), hi.reshape(c_in, 1, 1)
    size = torch.finfo(dtype).bits // 8

    def draw(gen: torch.Generator, views: list[torch.Tensor]) -> None:
        views[0].random_(0, total, generator=gen)  # as torch.randint(total, (BLOCK,))
        views[1].uniform_(generator=gen)  # as torch.rand((c_in, k, BLOCK))

    def inside_of(pos: torch.Tensor, geo: ConvGeometry) -> torch.Tensor:
        """``[rows, k]``: which taps of each row's receptive field are inside the input."""
        out_size, left = geo.output_size, [lo for lo, _ in geo.padding]
        ok = torch.ones((len(pos), k), dtype=torch.bool, device=device)
        rest = pos
        for d in reversed(range(dims)):
            o = rest % out_size[d]
            rest = torch.div(rest, out_size[d], rounding_mode="floor")
            coord = o[:, None] * m.stride[d] + taps_idx[d][None, :] * m.dilation[d] - left[d]
            ok &= (coord >= 0) & (coord < geo.input_size[d])
        return ok

    def inside(pos: torch.Tensor) -> torch.Tensor:
        if len(geometries) == 1:
            return inside_of(pos, geometry)
        ok = torch.empty((len(pos), k), dtype=torch.bool, device=device)
        start = 0
        for geo, span in zip(geometries, spans, strict=True):
            mine = (pos >= start) & (pos < start + span)
            per_row = math.prod(geo.output_size)  # the shape's positions of one batch row
            ok[mine] = inside_of((pos[mine] - start) % per_row, geo)
            start += span
        return ok

    def make(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = b - a
        pos = torch.empty(n, device=device, dtype=torch.long)
        xt = torch.empty((c_in, k, n), device=device, dtype=dtype)  # the rows last
        _blocks(a, b, [pos, xt], draw, index=index, seed=seed, device=device)
        xt.mul_(hi3 - lo3).add_(lo3)
        # 0 for every tap in the padding: a few percent of the (tap, row) columns, so zero
        # those columns by index rather than pass over the whole tile with a mask
        outside = (~inside(pos).t()).reshape(-1).nonzero().squeeze(1)
        if len(outside):
            xt.view(c_in, k * n).index_fill_(1, outside, 0)
        x = xt.reshape(c_in * k, n).t()  # [rows, c_in * k], column-major
        with torch.no_grad():
            if g == 1:
                y = F.linear(x, weight[0], m.bias)
            else:
                y = torch.einsum("rgi,goi->rgo", x.reshape(n, g, -1), weight).reshape(n, c_out)
                if m.bias is not None:
                    y = y + m.bias
            y = _respond(response, y, dims)
        units = xt[:, geometry.center, :].t() if taps == "center" else x
        return units, y

    # The patch rows, the noise block being drawn, the outputs and response, the mask.
    unit_bytes = (2 * c_in * k + 3 * c_out) * size + 16 * k
    return RowSource("patches", rows, unit_bytes, make, lambda a, b: b - a, BLOCK)


def _tensor_source(
    layer,
    response,
    rows,
    input_shape,
    positions,
    lo,
    hi,
    taps,
    *,
    index,
    seed,
    device,
    dtype,
    first: int = 0,
) -> RowSource:
    """Full-tensor rows: noise examples ``first + a .. first + b - 1`` of the layer's input
    shape through the layer, and the seeded subsample of positions of examples ``a .. b -
    1``."""
    examples = math.ceil(rows / positions)
    view = [-1] + [1] * (len(input_shape) - 1) if layer.is_conv else [-1]
    lo_v, hi_v = lo.reshape(view), hi.reshape(view)
    per, extra = divmod(rows, examples)
    size = torch.finfo(dtype).bits // 8
    out_per_example = positions * layer.out_channels

    def make(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = uniform_examples(
            input_shape,
            first + a,
            b - a,
            lo_v,
            hi_v,
            seed=seed,
            stream=stream(LOCAL, index),
            device=device,
            dtype=dtype,
        )
        with torch.no_grad():
            out = layer.forward(x)
            y = response.apply(out)
        kept = example_rows(seed, stream(ROWS, index), rows, examples, positions, a, b - a)
        kept = kept.to(device)
        return input_rows(layer, x, kept, taps), output_rows(layer, y, kept)

    def rows_in(a: int, b: int) -> int:
        return (b - a) * per + max(0, min(b, extra) - a)

    units_per_row = layer.input_units(taps) + layer.out_channels
    unit_bytes = (
        3 * math.prod(input_shape) + 3 * out_per_example + 2 * (per + 1) * units_per_row
    ) * size
    return RowSource("full-tensor", examples, unit_bytes, make, rows_in)
