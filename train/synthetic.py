"""Synthetic samples of every task kind: random crops with labels of the right type and shape, fixed by the
seed and the index, for smoke runs and tests without face datasets."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SyntheticTaskDataset(Dataset):
    """`num_samples` samples `{"pixel_values": (3, S, S), "labels": ...}` for one task spec (a dict with
    `kind`, `num_queries`, `input_size`); identity labels come from `num_identities` classes."""

    def __init__(self, spec: dict, num_samples: int = 8, seed: int = 0, num_identities: int = 4):
        if num_samples <= 0:
            raise ValueError(f"Synthetic dataset of task {spec['name']!r} needs num_samples > 0.")
        self.spec, self.num_samples, self.seed, self.num_identities = spec, num_samples, seed, num_identities

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        size, kind, queries = self.spec["input_size"], self.spec["kind"], self.spec["num_queries"]
        pixel_values = torch.randn(3, size, size, generator=generator)
        if kind == "landmarks":
            labels = torch.rand(queries, 2, generator=generator) * (0.6 * size) + 0.2 * size
        elif kind == "parsing":
            # Horizontal bands of classes, so the maps have structure to learn.
            bands = torch.randint(0, queries, (8,), generator=generator)
            labels = bands.repeat_interleave((size + 7) // 8)[:size, None].expand(size, size).clone()
        elif kind == "age":
            labels = torch.randint(0, queries, (), generator=generator).float()
        elif kind == "classification":
            labels = torch.randint(0, queries, (), generator=generator)
        elif kind == "multilabel":
            labels = torch.randint(0, 2, (queries,), generator=generator)
        else:
            labels = torch.randint(0, self.num_identities, (), generator=generator)
        return {"pixel_values": pixel_values, "labels": labels}
