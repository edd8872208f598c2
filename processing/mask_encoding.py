"""JSON-ready run-length encoding of label maps, computed on the maps' device so only the runs cross to the CPU."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def label_map_runs(label_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Label maps `(height, width)` of any sizes, on any one device -> per map its runs `(R, 2)` int64 as
    (label, length) in row-major order, on the same device. All maps are encoded together: one pass over their
    concatenated pixels and a single host synchronisation (the number of runs per map)."""
    if not label_maps:
        return []
    flats = [label_map.reshape(-1) for label_map in label_maps]
    device = flats[0].device
    sizes = torch.tensor([flat.numel() for flat in flats], device=device)
    flat = torch.cat(flats)
    if flat.numel() == 0:
        return [torch.zeros(0, 2, dtype=torch.long, device=device) for _ in flats]
    starts = torch.ones(flat.numel(), dtype=torch.bool, device=device)
    starts[1:] = flat[1:] != flat[:-1]
    ends = sizes.cumsum(0)
    # A run never crosses from one map into the next, even when the labels on both sides agree.
    starts[(ends - sizes)[sizes > 0]] = True
    positions = starts.nonzero().squeeze(1)
    lengths = torch.diff(positions, append=ends[-1:])
    runs = torch.stack([flat[positions].long(), lengths], dim=1)
    per_map = torch.bucketize(positions, ends, right=True).bincount(minlength=len(flats))
    return list(runs.split(per_map.tolist()))


def encode_label_map(label_map: np.ndarray | torch.Tensor) -> dict:
    """`(height, width)` integer labels (numpy, or a tensor on any device) -> `{"size": [height, width], "counts":
    [[label, run], ...]}`, runs in row-major order; plain lists, so it survives `json.dumps`."""
    tensor = label_map if isinstance(label_map, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(label_map))
    return runs_to_json(label_map_runs([tensor])[0], tensor.shape)


def runs_to_json(runs: torch.Tensor, size: Sequence[int]) -> dict:
    """Runs of [`label_map_runs`] and the map's `(height, width)` -> the JSON form of [`encode_label_map`]."""
    return {"size": [int(side) for side in size], "counts": runs.cpu().tolist()}


def decode_label_map(encoded: dict) -> np.ndarray:
    """Inverse of [`encode_label_map`]: a `(height, width)` uint8 array."""
    counts = np.asarray(encoded["counts"], dtype=np.int64).reshape(-1, 2)
    flat = np.repeat(counts[:, 0], counts[:, 1]).astype(np.uint8)
    return flat.reshape(encoded["size"])
