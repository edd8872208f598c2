"""Geometry shared by post-processing and the landmark loss."""

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
