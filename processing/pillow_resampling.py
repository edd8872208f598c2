"""Pillow's bilinear `Image.resize` in torch, exactly: its filter taps, its 8-bit fixed-point rounding of each pass
and its `reduce` for `reducing_gap`, on any device and for many boxes of many images at once. The face detector's
pyramid levels and crops go through it off the CPU, so its detections equal those made with Pillow
(tests/test_detection_torch.py compares them). The crops of the model's image processor use `resampling.py`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .resampling import triangle_filter

_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)
_GATHER_BUDGET = 1 << 22  # gathered pixels per chunk of crops, to bound memory


def pillow_bilinear_taps(
    in_size: torch.Tensor, extent: torch.Tensor, out_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's `precompute_coeffs` for the bilinear filter, for N inputs along one axis at once.

    in_size (N,) pixels along the axis, extent (N,) the box's end (Pillow's float32 box[2] or box[3]; the box
    starts at 0). Returns the first source pixel of each output pixel (N, out) and the integer weights
    (N, out, K) in Pillow's fixed point; taps past an output's own count have weight 0.
    """
    scale = extent.to(torch.float32).to(torch.float64) / out_size  # Pillow: (double)(in1 - in0) with float box
    first, weights = triangle_filter(scale, in_size, out_size)
    fixed = (weights * (1 << _PRECISION_BITS) + 0.5).trunc().to(torch.int32)
    return first.to(torch.int64), fixed


def _fixed_point_to_uint8(total: torch.Tensor) -> torch.Tensor:
    return ((total + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS).clamp(0, 255)


def _resample_chunk(
    flat: torch.Tensor,
    base: torch.Tensor,
    heights: torch.Tensor,
    widths: torch.Tensor,
    origin: torch.Tensor,
    in_size: torch.Tensor,
    extent: torch.Tensor,
    out_size: tuple[int, int],
) -> torch.Tensor:
    """Pillow's two-pass bilinear resize (horizontal pass rounded to 8 bits, then vertical) of N boxes."""
    out_h, out_w = out_size
    first_y, weights_y = pillow_bilinear_taps(in_size[:, 0], extent[:, 0], out_h)
    first_x, weights_x = pillow_bilinear_taps(in_size[:, 1], extent[:, 1], out_w)
    taps_y, taps_x = weights_y.shape[-1], weights_x.shape[-1]
    # Every source row an output row reads (rows read by two outputs are resampled twice: same result).
    rows = (origin[:, 0, None, None] + first_y[..., None] + torch.arange(taps_y, device=flat.device)).flatten(1)
    row_valid = (rows >= 0) & (rows < heights[:, None])
    plane = (heights * widths)[:, None, None, None]
    row_start = base[:, None, None, None] + torch.arange(3, device=flat.device)[None, :, None, None] * plane
    row_start = row_start + (rows.clamp(min=0) * widths[:, None])[:, None, :, None]
    columns = origin[:, 1, None] + first_x
    horizontal = torch.zeros(rows.shape[0], 3, rows.shape[1], out_w, dtype=torch.int32, device=flat.device)
    for tap in range(taps_x):
        x = columns + tap
        valid = row_valid[:, None, :, None] & ((x >= 0) & (x < widths[:, None]))[:, None, None, :]
        index = row_start + x.clamp(min=0)[:, None, None, :]
        pixels = flat[torch.where(valid, index, 0)].to(torch.int32) * valid
        horizontal += pixels * weights_x[:, None, None, :, tap]
    horizontal = _fixed_point_to_uint8(horizontal).view(rows.shape[0], 3, out_h, taps_y, out_w)
    vertical = (horizontal * weights_y[:, None, :, :, None]).sum(dim=3, dtype=torch.int32)
    return _fixed_point_to_uint8(vertical).to(torch.uint8)


def resample_like_pillow(
    flat: torch.Tensor,
    base: torch.Tensor,
    heights: torch.Tensor,
    widths: torch.Tensor,
    origin: torch.Tensor,
    in_size: torch.Tensor,
    extent: torch.Tensor,
    out_size: tuple[int, int],
) -> torch.Tensor:
    """(N, 3, out_h, out_w) uint8: box n of the image at `base[n]` in `flat` (channels-first, heights[n] x
    widths[n]), starting at `origin[n]` (y, x), `in_size[n]` pixels large and resampled from (0, 0) to
    `extent[n]`, as Pillow's `crop(...).resize(..., BILINEAR)`: pixels outside the image are black.

    Boxes of similar size are resampled together, in chunks that bound the gathered pixels.
    """
    count = len(origin)
    if not count:
        return torch.zeros(0, 3, *out_size, dtype=torch.uint8, device=flat.device)
    # Taps per output pixel grow with the box; sorting by size keeps a chunk's padding to the largest tap small.
    ratio = (extent.to(torch.float64) / torch.tensor(out_size, device=extent.device)).amax(dim=1)
    order = torch.argsort(ratio)
    taps = (ratio[order].clamp(min=1.0).ceil() * 2 + 1).cpu().tolist()
    pieces, start = [], 0
    while start < count:
        stop, limit = start + 1, max(1, _GATHER_BUDGET // int(3 * out_size[0] * out_size[1] * taps[start] ** 2))
        while stop < count and stop - start < limit and taps[stop] == taps[start]:
            stop += 1
        chosen = order[start:stop]
        pieces.append(
            _resample_chunk(
                flat,
                base[chosen],
                heights[chosen],
                widths[chosen],
                origin[chosen],
                in_size[chosen],
                extent[chosen],
                out_size,
            )
        )
        start = stop
    resampled = torch.cat(pieces)
    return resampled[torch.argsort(order)]


def reduce_like_pillow(images: torch.Tensor, factor_y: int, factor_x: int) -> torch.Tensor:
    """Pillow's `Image.reduce((factor_x, factor_y))` of (N, 3, H, W) uint8 images: block means with Pillow's
    fixed-point rounding; the last partial blocks average the pixels they have."""
    height, width = images.shape[-2:]
    out_h, out_w = -(-height // factor_y), -(-width // factor_x)
    padded = F.pad(images.to(torch.int64), (0, out_w * factor_x - width, 0, out_h * factor_y - height))
    sums = padded.view(*images.shape[:2], out_h, factor_y, out_w, factor_x).sum(dim=(3, 5))
    rows = torch.full((out_h,), factor_y, dtype=torch.int64)
    rows[-1] = height - (out_h - 1) * factor_y
    cols = torch.full((out_w,), factor_x, dtype=torch.int64)
    cols[-1] = width - (out_w - 1) * factor_x
    count = (rows[:, None] * cols[None, :]).numpy()
    # Pillow: multiplier = (UINT32)((float)2^32 / (float)(256 * count)), value = ((sum + count / 2) * multiplier) >> 24
    multiplier = (np.float32(2.0**32) / (256 * count).astype(np.float32)).astype(np.int64)
    multiplier = torch.from_numpy(multiplier).to(images.device)
    count = torch.from_numpy(count).to(images.device)
    return (((sums + count // 2) * multiplier) >> 24).to(torch.uint8)


def flatten_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One flat uint8 buffer of (3, H, W) images and each image's start, height and width in it."""
    device = images[0].device
    sizes = torch.tensor([image.numel() for image in images], dtype=torch.int64)
    base = torch.cumsum(sizes, 0) - sizes
    heights = torch.tensor([image.shape[1] for image in images], dtype=torch.int64)
    widths = torch.tensor([image.shape[2] for image in images], dtype=torch.int64)
    flat = torch.cat([image.reshape(-1) for image in images])
    return flat, base.to(device), heights.to(device), widths.to(device)


def resize_like_pillow(images: torch.Tensor, height: int, width: int, reducing_gap: float | None) -> torch.Tensor:
    """Pillow's `Image.resize((width, height), BILINEAR, reducing_gap=...)` of (N, 3, H, W) same-size images."""
    count, _, in_h, in_w = images.shape
    extent_h, extent_w = float(in_h), float(in_w)
    if reducing_gap is not None:
        factor_x = int(in_w / width / reducing_gap) or 1
        factor_y = int(in_h / height / reducing_gap) or 1
        if factor_x > 1 or factor_y > 1:
            images = reduce_like_pillow(images, factor_y, factor_x)
            extent_h, extent_w = in_h / factor_y, in_w / factor_x
    device = images.device
    flat, base, heights, widths = flatten_images(list(images))
    in_size = torch.stack([heights, widths], dim=1)
    extent = torch.tensor([[extent_h, extent_w]], dtype=torch.float64, device=device).expand(count, 2)
    origin = torch.zeros(count, 2, dtype=torch.int64, device=device)
    return resample_like_pillow(flat, base, heights, widths, origin, in_size, extent, (height, width))


__all__ = ["flatten_images", "pillow_bilinear_taps", "reduce_like_pillow", "resample_like_pillow", "resize_like_pillow"]
