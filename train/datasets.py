"""A task's training or evaluation data: a dataset reader's rows through the task's transform, as the
`{"pixel_values", "labels"}` samples the trainer and the evaluation loop take."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from .augmentation import build_eval_transform, build_train_transform
from .data import load_face_dataset

# The reader column holding each attribute-like kind's label.
LABEL_COLUMNS = {"age": "age", "classification": "label", "multilabel": "attributes", "embedding": "label"}


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


def build_task_dataset(spec: dict, reader: str, root: str, split: str, train: bool = True) -> TaskDataset:
    """The `split` of the dataset `reader` under `root` prepared for the task `spec` (a task spec dict);
    reader `distill` is a dataset written by `faceptor distill data`."""
    if reader == "distill":
        from .distill.data import build_distill_task_dataset

        return build_distill_task_dataset(spec, root, split, train)
    rows = load_face_dataset(reader, root, split)
    builder = build_train_transform if train else build_eval_transform
    return TaskDataset(rows, spec["kind"], builder(spec["kind"], spec["input_size"], reader))
