"""Face parsing metrics: per-class F1 and their mean as the official `core/evaluator/parsing_evaluator.py`
(FaRL's `F1Score`), plus IoU, accumulated in a confusion matrix so any number of images fits in memory.

The official scorer sums a (ground truth x prediction) pixel histogram over the test set, then per class
F1 = 2 * TP / (#predicted + #true), and `fg_mean` = the mean F1 over every class except the one named
`background` (for both CelebAMask-HQ and LaPa the official configs set `bg_label_name: background`; hair,
cloth, neck, accessories etc. are all *included*). A class that neither the predictions nor the ground truth
contain gets F1 = NaN, which the official code would propagate into the mean; here the means skip NaNs
(`nanmean`), which only differs in that degenerate case.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ...task_presets import CELEBAMASK_HQ_CLASSES, LAPA_CLASSES
from ._common import canonical_dataset, to_numpy

PARSING_CLASSES = {"celebamask_hq": CELEBAMASK_HQ_CLASSES, "lapa": LAPA_CLASSES}
OFFICIAL_EXCLUDED = ("background",)  # bg_label_name of both official parsing evaluators


def parsing_classes(dataset: str) -> tuple[str, ...]:
    """Class names, in label order, of a parsing dataset ("celebamask_hq", "lapa" or an alias)."""
    key = canonical_dataset(dataset)
    if key not in PARSING_CLASSES:
        raise ValueError(f"No parsing classes for dataset {dataset!r}; known: {sorted(PARSING_CLASSES)}.")
    return tuple(PARSING_CLASSES[key])


def confusion_matrix(predictions, references, num_classes: int) -> np.ndarray:
    """`(C, C)` int64 pixel counts, rows = ground truth, columns = prediction, of label maps of any (equal)
    shape. Labels must lie in [0, C)."""
    predictions = to_numpy(predictions).astype(np.int64, copy=False).reshape(-1)
    references = to_numpy(references).astype(np.int64, copy=False).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"Prediction size {predictions.size} mismatches the reference size {references.size}.")
    for name, labels in (("predictions", predictions), ("references", references)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} hold labels outside [0, {num_classes}): {labels.min()}..{labels.max()}.")
    return np.bincount(references * num_classes + predictions, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _pairs(predictions, references) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Label-map pairs from either single maps `(H, W)`, batches `(B, H, W)` or lists of maps of any sizes."""
    if hasattr(predictions, "shape") and hasattr(references, "shape") and len(predictions.shape) == 2:
        yield predictions, references
        return
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predicted maps for {len(references)} reference maps.")
    yield from zip(predictions, references, strict=True)


class ParsingConfusion:
    """Streaming confusion matrix of one parsing dataset: `update(predictions, references)` with label maps
    (one map, a batch or a list of maps of different sizes), then `compute()`."""

    def __init__(self, class_names: Sequence[str], exclude: Sequence[str] = OFFICIAL_EXCLUDED):
        self.class_names = tuple(class_names)
        self.exclude = tuple(exclude)
        self.matrix = np.zeros((len(self.class_names),) * 2, dtype=np.int64)
        self.num_images = 0

    @classmethod
    def for_dataset(cls, dataset: str, **kwargs) -> ParsingConfusion:
        return cls(parsing_classes(dataset), **kwargs)

    def reset(self) -> None:
        self.matrix[:] = 0
        self.num_images = 0

    def update(self, predictions, references) -> None:
        for prediction, reference in _pairs(predictions, references):
            self.matrix += confusion_matrix(prediction, reference, len(self.class_names))
            self.num_images += 1

    def compute(self) -> dict[str, float]:
        return parsing_scores(self.matrix, self.class_names, self.exclude)


def parsing_scores(matrix, class_names: Sequence[str], exclude: Sequence[str] = OFFICIAL_EXCLUDED) -> dict[str, float]:
    """Scores of a `(C, C)` ground-truth x prediction confusion matrix:

    - `f1_mean`: mean F1 over the classes not in `exclude` (the official `fg_mean`);
    - `f1_<class>`, `iou_<class>` for every class;
    - `mean_iou`: mean IoU over all classes; `mean_iou_fg`: over the classes not in `exclude`;
    - `pixel_accuracy`.
    Classes absent from both predictions and ground truth get NaN and are skipped by the means."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(class_names),) * 2:
        raise ValueError(f"Confusion matrix {matrix.shape} does not match {len(class_names)} class names.")
    unknown = set(exclude) - set(class_names)
    if unknown:
        raise ValueError(f"Excluded classes {sorted(unknown)} are not among {list(class_names)}.")
    predicted, true, hits = matrix.sum(axis=0), matrix.sum(axis=1), np.diag(matrix)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * hits / (predicted + true)
        iou = hits / (predicted + true - hits)
        pixel_accuracy = hits.sum() / matrix.sum()
    kept = np.array([name not in exclude for name in class_names])
    scores = {
        "f1_mean": _nanmean(f1[kept]),
        "mean_iou": _nanmean(iou),
        "mean_iou_fg": _nanmean(iou[kept]),
        "pixel_accuracy": float(pixel_accuracy),
    }
    scores.update({f"f1_{name}": float(value) for name, value in zip(class_names, f1, strict=True)})
    scores.update({f"iou_{name}": float(value) for name, value in zip(class_names, iou, strict=True)})
    return scores


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")
