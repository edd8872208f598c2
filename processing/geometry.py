"""Geometry shared by post-processing and the landmark loss."""

import numpy as np
import torch


def heatmaps_to_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """Soft-argmax of activated heatmaps `(batch, points, h, w)` -> points `(batch, points, 2)` as (x, y)
    normalised to [0, 1] by the pixel-centre convention `(index + 0.5) / size` (FaRL's `heatmap2points`)."""
    height, width = heatmaps.shape[-2:]
    total = heatmaps.sum(dim=(2, 3)).clamp(min=1e-6)
    ys = torch.arange(height, device=heatmaps.device, dtype=heatmaps.dtype)
    xs = torch.arange(width, device=heatmaps.device, dtype=heatmaps.dtype)
    y = (heatmaps.sum(dim=3) * ys).sum(dim=2) / total
    x = (heatmaps.sum(dim=2) * xs).sum(dim=2) / total
    scale = torch.tensor([width, height], device=heatmaps.device, dtype=heatmaps.dtype)
    return (torch.stack([x, y], dim=-1) + 0.5) / scale


def normalized_to_pixels(
    points: torch.Tensor, side: float | torch.Tensor, origin: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Points normalised by [`heatmaps_to_points`]'s convention -> pixels of a square crop of `side` pixels
    whose corner is at `origin`, with pixel centres at integer coordinates (those of the labels and images):
    `origin + points * side - 0.5`. `side` and `origin` broadcast (numbers or tensors)."""
    return origin + points * side - 0.5


def _array_module(coords):
    return torch if isinstance(coords, torch.Tensor) else np


def tanh_warp(coords, size: int, warp_factor: float):
    """FaRL's tanh-warping of crop pixel coordinates (numpy or torch; identity for a factor of 0): with u the
    coordinate scaled to [-1, 1] and f the factor, every |u| > 1 - f becomes sign(u) ((1 - f) + f tanh((|u| -
    (1 - f)) / f)), so the whole image beyond the face fits into the crop's border."""
    if warp_factor <= 0:
        return coords
    xp, f = _array_module(coords), warp_factor
    u = coords / size * 2 - 1
    outer = xp.abs(u) > 1 - f
    u = xp.where(outer, xp.sign(u) * ((1 - f) + f * xp.tanh((xp.abs(u) - (1 - f)) / f)), u)
    return (u + 1) / 2 * size


def tanh_unwarp(coords, size: int, warp_factor: float):
    """Inverse of [`tanh_warp`] (its artanh argument clipped to +-0.999, as FaRL)."""
    if warp_factor <= 0:
        return coords
    xp, f = _array_module(coords), warp_factor
    u = coords / size * 2 - 1
    outer = xp.abs(u) > 1 - f
    argument = xp.clip((xp.abs(u) - (1 - f)) / f, -0.999, 0.999)
    u = xp.where(outer, xp.sign(u) * ((1 - f) + f * xp.arctanh(argument)), u)
    return (u + 1) / 2 * size


def square_crops(boxes: torch.Tensor, scales: torch.Tensor | float) -> torch.Tensor:
    """Face boxes `(F, 4)` as (x0, y0, x1, y1) and their enlargement `scales` -> crops `(F, 3)` as (left, top,
    side) in whole pixels: the square centred on each box with side `scale` times the box's longer side, at least
    one pixel. Rounds half to even, as Python's `round` (pass float64 boxes to get its results exactly)."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sides = (torch.maximum(widths, heights) * scales).round().clamp(min=1)
    lefts = ((boxes[:, 0] + boxes[:, 2]) / 2 - sides / 2).round()
    tops = ((boxes[:, 1] + boxes[:, 3]) / 2 - sides / 2).round()
    return torch.stack([lefts, tops, sides], dim=1)
