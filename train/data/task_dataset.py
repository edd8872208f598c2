"""A task's training or evaluation data: a dataset reader's rows through the task's transform, as the
`{"pixel_values", "labels"}` samples the trainer and the evaluation loop take.

A training config's `data: {reader, root, split}` names a task-dataset builder: every reader of `READERS` has
one. Data in a layout of your own plugs into `faceptor train` through `register_task_dataset`, in the process that
trains:

    from faceptor.train.data.task_dataset import register_task_dataset
    from faceptor.train.run import main as train

    def build_my_faces(spec, root, split, train):  # spec: the task's spec dict (kind, input_size, num_queries...)
        return MyFaces(root, split, spec["kind"], spec["input_size"], augment=train)

    register_task_dataset("my_faces", build_my_faces)
    train(["--config", "my_config.yaml"])  # its tasks read `data: {reader: my_faces, root: ..., split: ...}`

A builder returns a map-style dataset of `{"pixel_values": (3, S, S) tensor, "labels": ...}` samples with the
labels the task kind's loss takes (the run checks the first sample: `run.check_sample`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset

from ..augmentation import build_eval_transform, build_train_transform
from . import READERS, DatasetFormatError, load_face_dataset

# The reader column holding each attribute-like kind's label.
LABEL_COLUMNS = {"age": "age", "classification": "label", "multilabel": "attributes", "embedding": "label"}

# builder(spec, root, split, train) -> a map-style dataset of {"pixel_values", "labels"} samples.
TaskDatasetBuilder = Callable[[dict, str, str, bool], Dataset]


class TaskDataset(Dataset):
    """Rows of a `datasets.Dataset` (images decoded lazily) -> transformed samples of one task kind."""

    def __init__(self, rows, kind: str, transform):
        self.rows, self.kind, self.transform = rows, kind, transform

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: int) -> dict:
        """The raw sample the transforms take: image plus the kind's annotations."""
        row = self.rows[int(index)]
        sample = {"image": row["image"]}
        if self.kind == "landmarks":
            sample["landmarks"] = np.asarray(row["landmarks"], dtype=np.float32)
            if row.get("box") is not None:
                sample["box"] = np.asarray(row["box"], dtype=np.float32)
        elif self.kind == "parsing":
            sample["mask"] = row["mask"]
            if row.get("landmarks") is not None:  # LaPa aligns with its 106 points
                sample["landmarks"] = np.asarray(row["landmarks"], dtype=np.float32)
        else:
            sample["label"] = row[LABEL_COLUMNS[self.kind]]
        return sample

    def __getitem__(self, index: int) -> dict:
        return self.transform(self.sample(index))


def face_dataset_builder(reader: str) -> TaskDatasetBuilder:
    """The builder of a public dataset's reader (a key of `READERS`): its rows through the paper's transforms."""

    def build(spec: dict, root: str, split: str, train: bool = True) -> TaskDataset:
        rows = load_face_dataset(reader, root, split)
        transform = build_train_transform if train else build_eval_transform
        return TaskDataset(rows, spec["kind"], transform(spec["kind"], spec["input_size"], reader))

    return build


TASK_DATASET_BUILDERS: dict[str, TaskDatasetBuilder] = {reader: face_dataset_builder(reader) for reader in READERS}


def register_task_dataset(reader: str, builder: TaskDatasetBuilder) -> None:
    """Makes `data: {reader: <reader>, root, split}` in a training config build its data with
    `builder(spec, root, split, train)`, which returns a map-style dataset of `{"pixel_values", "labels"}`
    samples of the task `spec` (its spec dict), with training augmentation when `train`. A name already taken
    by another builder (the public readers' included) raises ValueError; registering the same builder again
    does nothing."""
    registered = TASK_DATASET_BUILDERS.get(reader)
    if registered is not None and registered is not builder:
        raise ValueError(f"Reader {reader!r} already has a task-dataset builder ({registered.__qualname__}).")
    TASK_DATASET_BUILDERS[reader] = builder


def build_task_dataset(spec: dict, reader: str, root: str | os.PathLike, split: str, train: bool = True) -> Dataset:
    """The `split` of the data `reader` (a public reader or one added with `register_task_dataset`) under
    `root`, prepared for the task `spec` (a task spec dict)."""
    if reader not in TASK_DATASET_BUILDERS:
        raise DatasetFormatError(
            f"unknown reader {reader!r}; valid readers: {', '.join(TASK_DATASET_BUILDERS)} "
            "(add your own with faceptor.train.data.task_dataset.register_task_dataset)"
        )
    return TASK_DATASET_BUILDERS[reader](spec, root, split, train)
