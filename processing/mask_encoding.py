"""JSON-ready run-length encoding of label maps."""

from __future__ import annotations

import numpy as np


def encode_label_map(label_map: np.ndarray) -> dict:
    """`(height, width)` integer labels -> `{"size": [height, width], "counts": [[label, run], ...]}`,
    runs in row-major order; plain lists, so it survives `json.dumps`."""
    flat = np.asarray(label_map).reshape(-1)
    if flat.size == 0:
        return {"size": list(label_map.shape), "counts": []}
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    runs = np.diff(np.r_[starts, flat.size])
    return {"size": [int(side) for side in label_map.shape], "counts": np.stack([flat[starts], runs], 1).tolist()}


def decode_label_map(encoded: dict) -> np.ndarray:
    """Inverse of [`encode_label_map`]: a `(height, width)` uint8 array."""
    counts = np.asarray(encoded["counts"], dtype=np.int64).reshape(-1, 2)
    flat = np.repeat(counts[:, 0], counts[:, 1]).astype(np.uint8)
    return flat.reshape(encoded["size"])
