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


def label_range(spec: dict) -> tuple[float, float] | None:
    """The labels a task's head can learn, (lowest, highest), for the kinds with one: an age head's queries are
    ages 0..num_queries-1, a classification head's classes 0..num_queries-1."""
    if spec["kind"] in ("age", "classification"):
        return 0, spec["num_queries"] - 1
    return None


def check_label_range(rows, spec: dict, where: str) -> None:
    """Refuses (`DatasetFormatError`, naming the first offending file) labels outside what the task's head can
    learn: an age of 500 for a 0..100 head would train on a clipped target with no word said. Reads only the
    label column, never an image."""
    bounds, column = label_range(spec), LABEL_COLUMNS.get(spec["kind"])
    if bounds is None or column not in getattr(rows, "column_names", ()):
        return
    labels = np.asarray(rows.data.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
    outside = np.flatnonzero(~((labels >= bounds[0]) & (labels <= bounds[1])))  # NaN is outside too
    if outside.size:
        first = int(outside[0])
        names = rows.data.column("file_name") if "file_name" in rows.column_names else None
        name = f"{names[first].as_py()}: " if names is not None else f"row {first}: "
        raise DatasetFormatError(
            f"{name}{column} {labels[first]:g} outside {bounds[0]}..{bounds[1]}, the range of task "
            f"{spec.get('name', spec['kind'])!r} ({outside.size} label{'s' * (outside.size != 1)} outside)",
            where,
        )


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
        try:
            sample = self.sample(index)
        except (OSError, ValueError, SyntaxError) as error:  # Pillow's words for a corrupt or truncated image
            message = f"sample {index}: cannot read its image ({first_line(error)})"
            raise DatasetFormatError(message, self.image_path(index)) from None
        return self.transform(sample)

    def image_path(self, index: int) -> str | None:
        """The file of sample `index`'s image, as the reader stored it (None for an image held as bytes)."""
        try:
            return self.rows.data.column("image")[int(index)]["path"].as_py()
        except (KeyError, AttributeError, TypeError, IndexError):
            return None


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def face_dataset_builder(reader: str) -> TaskDatasetBuilder:
    """The builder of a public dataset's reader (a key of `READERS`): its rows through the paper's transforms."""

    def build(spec: dict, root: str, split: str, train: bool = True) -> TaskDataset:
        rows = load_face_dataset(reader, root, split)
        check_label_range(rows, spec, f"{reader} {root}")
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
