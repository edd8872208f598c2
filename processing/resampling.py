"""Separable resampling of square crops: each crop axis is a list of taps (source pixel, weight) per output pixel,
for the antialiased resize of a zero-padded window (`antialiased_taps`) or bilinear sampling at given coordinates
(`bilinear_taps`); `sample_crops` applies them to many crops of many images in a few batched calls. Taps outside
an image are dropped (the padding is black), so a crop reads and costs memory only for its pixels inside the image,
never for the padded window around them.

The antialiased resize is that of torch's uint8 images (`F.interpolate(mode="bilinear", antialias=True)` on the CPU,
PIL's convolution): the triangle filter widened by the downscale factor, its weights normalised per output pixel,
then rounded to fixed point (16-bit, the finest precision that fits the largest weight); columns first, each pass
rounded to 0..255. Sums of integers are exact, so the crops equal torch's CPU crops on every device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

# Work memory (source pixels, intermediate rows, output) of one batched call, which bounds the memory of a batch
# of faces whatever their number (a single larger face goes alone): small on a CPU, where the allocator then
# reuses warm memory (fresh pages cost more than the arithmetic), large on an accelerator, for few launches.
CHUNK_BYTES = {"cpu": 2**24}
DEVICE_CHUNK_BYTES = 2**28
# A crop's intermediate (its rows x the output's columns) above which rows are contracted first when that is
# smaller: only a tall strip's crops leave torch's order (columns first), rounding then by one grey level at most.
ROWS_FIRST_BYTES = 2**26


class AxisTaps(NamedTuple):
    """Taps of F crops along one axis: output pixel o of crop f reads `weight[f, o, k]` times the source pixel
    `source[f, position[f, o, k]]`. `source` `(F, U)` lists image rows or columns (valid indices, in order, the
    tail repeating the last one); unused taps have weight 0."""

    source: torch.Tensor  # (F, U) int64 image pixel indices
    position: torch.Tensor  # (F, S, K) int64 indices into `source`
    weight: torch.Tensor  # (F, S, K) int32 (fixed point, see `shift`) or float32
    used: torch.Tensor  # (F,) int64: how many leading entries of `source` the taps read
    run: bool  # each crop's source is a run of consecutive pixels (then sliced out of the image, not gathered)
    # Fixed point: `weight` holds int32 multiples of 2**-shift[f] and each pass rounds to 0..255; None: float.
    shift: torch.Tensor | None = None


def triangle_filter(scales: torch.Tensor, lengths: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The antialiased bilinear filter of PIL's resize and torch's `interpolate(antialias=True)` along one axis, for
    N inputs of `lengths` `(N,)` pixels read at `scales` `(N,)` input pixels per output pixel into `size` pixels:
    each output pixel's first input pixel `(N, size)` and its normalised float64 tap weights `(N, size, K)` (the
    triangle widened by the downscale factor, cut at the input's ends; unused taps 0). Shared by the crops and the
    detector's pyramid, which round the weights to their own fixed points."""
    device = scales.device
    scales = scales.to(torch.float64)[:, None]
    support = scales.clamp(min=1.0)  # the triangle's half-width in input pixels
    centres = scales * (torch.arange(size, dtype=torch.float64, device=device) + 0.5)
    first = (centres - support + 0.5).floor().clamp(min=0)
    stop = torch.minimum((centres + support + 0.5).floor(), lengths.to(device, torch.float64)[:, None])
    width = max(int((stop - first).max().item()), 1) if len(scales) else 1
    taps = first[..., None] + torch.arange(width, dtype=torch.float64, device=device)
    weights = (1 - ((taps - centres[..., None] + 0.5) * (1.0 / support)[..., None]).abs()).clamp(min=0)
    weights = torch.where(taps < stop[..., None], weights, 0.0)
    total = weights[..., 0]
    for tap in range(1, width):  # left to right, as both libraries sum
        total = total + weights[..., tap]
    return first, weights / total.clamp(min=1e-30)[..., None]


def antialiased_taps(origins: torch.Tensor, sides: torch.Tensor, extents: torch.Tensor, size: int) -> AxisTaps:
    """Taps of the antialiased linear resize of windows `[origin, origin + side)` of an axis with `extent` pixels
    (per crop, `(F,)` integers) to `size` pixels, the window zero outside the image: the triangle filter of PIL's
    and `F.interpolate(mode="bilinear", antialias=True)`'s convolution, widened by the downscale factor, its
    weights normalised over the window's taps. The taps outside the image are then dropped: they read zeros."""
    device = origins.device
    origins, sides, extents = (values.to(device, torch.float64) for values in (origins, sides, extents))
    first, weights = triangle_filter(sides / size, sides, size)
    taps = first[..., None] + torch.arange(weights.shape[-1], dtype=torch.float64, device=device)  # window pixels
    # Fixed point as torch's uint8 resize: the most fractional bits (up to 22) that keep 2 x the largest weight of
    # the whole window under 2**15, weights rounded half away from zero.
    largest = weights.amax(dim=(1, 2))
    shift = torch.zeros_like(largest, dtype=torch.long)
    for bits in range(22):
        fits = (0.5 + largest * 2.0 ** (bits + 1)).floor() < 2**15
        shift = torch.where(fits & (shift == bits), bits + 1, shift)
    weights = (weights * (2.0 ** shift.double())[:, None, None] + 0.5).floor()
    # Keep only the taps inside the image: a contiguous run per output pixel, from the first inside.
    pixels = taps + origins[:, None, None]
    inside = (pixels >= 0) & (pixels < extents[:, None, None]) & (weights > 0)
    count = inside.sum(-1)
    kept = max(int(count.max().item()) if len(origins) else 0, 1)
    skip = torch.where(count > 0, inside.int().argmax(-1), 0)  # (F, S) the first tap inside
    gather = (skip[..., None] + torch.arange(kept, device=device)).clamp(max=taps.shape[-1] - 1)
    weight = torch.where(torch.arange(kept, device=device) < count[..., None], weights.gather(-1, gather), 0.0)
    pixel = pixels.gather(-1, gather)
    # The source run: the pixels of the window inside the image.
    low = origins.clamp(min=0).minimum(extents - 1)
    high = torch.minimum(origins + sides, extents).clamp(min=low + 1)
    return _axis_taps(pixel, weight.int(), low, high, shift)


def bilinear_taps(coordinates: torch.Tensor, extents: torch.Tensor) -> AxisTaps:
    """Taps of bilinear sampling at `coordinates` `(F, S)` (pixel centres at integers; increasing along S) of an
    axis with `extents` `(F,)` pixels, zero outside the image (`grid_sample(padding_mode="zeros")`). Each crop's
    source is its taps in order (at most 2 S pixels, wherever they lie in the image)."""
    device = coordinates.device
    coordinates = coordinates.to(torch.float64)
    extents = extents.to(device, torch.float64)[:, None, None]
    below = coordinates.floor()
    pixel = torch.stack([below, below + 1], dim=-1)  # (F, S, 2)
    fraction = (coordinates - below)[..., None]
    weight = torch.cat([1 - fraction, fraction], dim=-1)
    weight = torch.where((pixel >= 0) & (pixel < extents), weight, 0.0)
    pixel = pixel.clamp(min=0).minimum(extents - 1)
    faces, size = coordinates.shape
    position = torch.arange(2 * size, device=device).expand(faces, -1).reshape(faces, size, 2)
    used = torch.full((faces,), 2 * size, dtype=torch.long, device=device)
    return AxisTaps(pixel.reshape(faces, -1).long(), position, weight.float(), used, False)


def _axis_taps(
    pixel: torch.Tensor, weight: torch.Tensor, low: torch.Tensor, high: torch.Tensor, shift: torch.Tensor
) -> AxisTaps:
    # Taps at image pixels `pixel` (F, S, K), read from the contiguous run [low, high) of each crop's axis.
    used = (high - low).long()
    span = int(used.max().item()) if len(used) else 1
    source = (low[:, None] + torch.arange(span, device=low.device)).minimum(high[:, None] - 1)
    position = (pixel - low[:, None, None]).clamp(min=0).minimum((used - 1)[:, None, None].double())
    return AxisTaps(source.long(), position.long(), weight, used, True, shift)


def sample_crops(
    images: Sequence[torch.Tensor], image_index: torch.Tensor, rows: AxisTaps, columns: AxisTaps
) -> torch.Tensor:
    """`(C, H, W)` images (any dtype, one device), each crop's image index `(F,)` and its row and column taps ->
    `(F, C, S_rows, S_columns)` float32 crops. Crops are batched by the size of their source region (the rows and
    columns they read, copied out of their image), so faces of all images go through a few calls together."""
    faces = len(image_index)
    channels = images[0].shape[0] if images else 3
    device = images[0].device if images else image_index.device
    # Every crop is written below (empty: no first pass over the output's memory).
    output = torch.empty(faces, channels, rows.position.shape[1], columns.position.shape[1], device=device)
    # Buckets of faces whose regions are within a factor 2 per axis: padding to the bucket's largest region costs
    # at most 4x a face's own region, and each bucket is cut into calls of at most CHUNK_BYTES of work memory.
    used_rows, used_columns = rows.used.tolist(), columns.used.tolist()
    # Per crop on the host, read once: (image, used rows, used columns, first row, first column).
    firsts = (rows.source[:, 0].tolist(), columns.source[:, 0].tolist())
    placement = list(zip(image_index.tolist(), used_rows, used_columns, *firsts, strict=True))
    buckets: dict[tuple[int, int], list[int]] = {}
    for face in range(faces):
        key = ((used_rows[face] - 1).bit_length(), (used_columns[face] - 1).bit_length())
        buckets.setdefault(key, []).append(face)
    for members in buckets.values():
        height = max(used_rows[face] for face in members)
        width = max(used_columns[face] for face in members)
        # Columns first, as torch (the same rounding), leaving the output in place; rows first for a tall strip.
        size_rows, size_columns = rows.position.shape[1], columns.position.shape[1]
        intermediate = 4 * channels * height * size_columns
        columns_first = intermediate <= ROWS_FIRST_BYTES or height * size_columns <= size_rows * width
        budget = CHUNK_BYTES.get(device.type, DEVICE_CHUNK_BYTES)
        count = max(1, budget // _work_bytes(height, width, rows, columns, channels))
        for start in range(0, len(members), count):
            chunk = members[start : start + count]
            selected = torch.tensor(chunk, device=device)
            region = _regions(images, placement, chunk, rows, columns, (height, width), columns_first)
            consecutive = chunk == list(range(chunk[0], chunk[0] + len(chunk)))
            # Consecutive crops are written in place; others through a copy.
            target = output[chunk[0] : chunk[0] + len(chunk)] if consecutive else None
            crops = _resample(region, selected, rows, columns, columns_first, target)
            if not consecutive:
                output.index_copy_(0, selected, crops)
    return output


def _work_bytes(height: int, width: int, rows: AxisTaps, columns: AxisTaps, channels: int) -> int:
    # Work memory (int32 or float32) of one crop in a call: its region, the intermediate twice (before and after its
    # transposition) and the output, each with a tap's rows beside it.
    size_rows, size_columns = rows.position.shape[1], columns.position.shape[1]
    intermediate = max(size_rows * width, height * size_columns)
    return channels * 4 * (height * width + 3 * intermediate + 2 * size_rows * size_columns)


def _regions(
    images: Sequence[torch.Tensor],
    faces: list[tuple[int, int, int, int, int]],
    chunk: list[int],
    rows: AxisTaps,
    columns: AxisTaps,
    region_size: tuple[int, int],
    columns_first: bool,
) -> torch.Tensor:
    # The crops' source pixels `(n, C, height, width)` in the taps' type (int32 or float32), padded with zeros,
    # transposed to `(n, C, width, height)` when columns are contracted first: that axis comes before the last.
    # `faces` holds per crop (image, used rows, used columns, first row, first column).
    height, width = region_size
    channels, device = images[0].shape[0], images[0].device
    shape = (len(chunk), channels, width, height) if columns_first else (len(chunk), channels, height, width)
    padded = any(faces[face][1] < height or faces[face][2] < width for face in chunk)
    region = (torch.zeros if padded else torch.empty)(shape, dtype=rows.weight.dtype, device=device)
    for slot, face in enumerate(chunk):
        index, used_rows, used_columns, top, left = faces[face]
        if rows.run and columns.run:
            pixels = images[index][:, top : top + used_rows, left : left + used_columns]
        else:
            pixels = images[index][:, rows.source[face, :used_rows, None], columns.source[face, None, :used_columns]]
        if columns_first:
            region[slot, :, :used_columns, :used_rows] = pixels.transpose(1, 2)
        else:
            region[slot, :, :used_rows, :used_columns] = pixels
    return region


def _resample(
    region: torch.Tensor,
    selected: torch.Tensor,
    rows: AxisTaps,
    columns: AxisTaps,
    columns_first: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    # Contract the region's third axis, transpose, contract the other: `(n, C, S_rows, S_columns)`, into `out`.
    first, second = (columns, rows) if columns_first else (rows, columns)
    partial = _contract(region, first, selected)
    partial = partial.transpose(2, 3).contiguous()
    if columns_first:
        result = _contract(partial, second, selected)
    else:
        result = _contract(partial, second, selected).transpose(2, 3)
    return result.float() if out is None else out.copy_(result)


def _contract(values: torch.Tensor, taps: AxisTaps, selected: torch.Tensor) -> torch.Tensor:
    # values (n, C, A, B), the `selected` crops' taps (n, S, K) along A -> (n, C, S, B): per tap one row copy
    # (`index_select`) for all crops and channels at once, then a multiply-add; fixed point rounds to 0..255.
    faces, channels, length, other = values.shape
    position, weight = taps.position[selected], taps.weight[selected]
    size = position.shape[1]
    flat = values.reshape(-1, other)
    offsets = (torch.arange(faces * channels, device=values.device) * length).reshape(faces, channels, 1)
    result = rows = None
    for tap in range(position.shape[2]):
        # The taps' rows land in one buffer, reused: fresh memory is costly on a CPU (page faults).
        rows = torch.index_select(flat, 0, (position[:, None, :, tap] + offsets).reshape(-1), out=rows)
        tap_weight = weight[:, None, :, tap].expand(faces, channels, size).reshape(-1, 1)
        if tap == 0:
            result = rows * tap_weight
        else:
            result.addcmul_(rows, tap_weight)
    if taps.shift is not None:
        shift = taps.shift[selected].int()[:, None, None].expand(faces, channels, size).reshape(-1, 1)
        result = result.add_(torch.ones_like(shift).bitwise_left_shift_(shift - 1)).bitwise_right_shift_(shift)
        result = result.clamp_(0, 255)
    return result.reshape(faces, channels, size, other)
