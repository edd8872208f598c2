"""Multi-task batches: every optimiser step takes n_t samples from each task's dataset (paper Sec. 4.1),
sharded over distributed ranks, in an order fixed by the seed and the step alone (so a resumed run sees
exactly the batches the uninterrupted run would have)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate


@dataclass
class TaskStream:
    """One task's training data: a map-style dataset of `{"pixel_values", "labels"}` samples and n_t, the
    samples it contributes to each step over all ranks."""

    name: str
    dataset: Dataset
    samples_per_step: int


class MultiTaskStepDataset(IterableDataset):
    """Yields steps `{"task_batches": {task: {"pixel_values": (n_t / W, ...), "labels": ...}}}` forever,
    starting at `start_step`. Task t's samples follow a fresh seeded permutation of its dataset every pass;
    step s takes positions [s * n_t, (s + 1) * n_t) of that stream and rank r of W keeps every W-th of them.
    DataLoader workers split the steps round-robin, which keeps their order."""

    def __init__(
        self,
        tasks: Sequence[TaskStream],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ):
        super().__init__()
        for task in tasks:
            if task.samples_per_step <= 0:
                raise ValueError(
                    f"Task {task.name!r}: samples per step (n_t) must be positive, got {task.samples_per_step}."
                )
            if task.samples_per_step % world_size:
                raise ValueError(
                    f"Task {task.name!r}: n_t = {task.samples_per_step} does not split over {world_size} processes."
                )
            if len(task.dataset) == 0:
                raise ValueError(f"Task {task.name!r}: the dataset is empty.")
        self.tasks = list(tasks)
        self.seed, self.rank, self.world_size, self.start_step = seed, rank, world_size, start_step
        self._permutations: dict[tuple[int, int], torch.Tensor] = {}

    def _permutation(self, task_index: int, epoch: int) -> torch.Tensor:
        key = (task_index, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 64:
                self._permutations.clear()
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + task_index * 7_919 + epoch)
            self._permutations[key] = torch.randperm(len(self.tasks[task_index].dataset), generator=generator)
        return self._permutations[key]

    def indices(self, task_index: int, step: int) -> list[int]:
        """Dataset indices of task `task_index` that this rank reads at `step`."""
        task = self.tasks[task_index]
        size = len(task.dataset)
        positions = range(step * task.samples_per_step, (step + 1) * task.samples_per_step)
        chosen = [int(self._permutation(task_index, position // size)[position % size]) for position in positions]
        return chosen[self.rank :: self.world_size]

    def step(self, step: int) -> dict:
        batches = {}
        for task_index, task in enumerate(self.tasks):
            samples = [task.dataset[index] for index in self.indices(task_index, step)]
            batches[task.name] = default_collate(samples)
        return {"task_batches": batches}

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        first, stride = (0, 1) if worker is None else (worker.id, worker.num_workers)
        step = self.start_step + first
        while True:
            yield self.step(step)
            step += stride


def group_by_input_size(task_batches: Mapping[str, Mapping]) -> dict[tuple[int, int], list[str]]:
    """Task names grouped by their crops' (height, width), so the encoder runs once per size."""
    groups: dict[tuple[int, int], list[str]] = {}
    for name, batch in task_batches.items():
        groups.setdefault(tuple(batch["pixel_values"].shape[-2:]), []).append(name)
    return groups
