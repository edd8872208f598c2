"""Metric choice by task kind, and adapters for `transformers.Trainer`:

    trainer = Trainer(..., compute_metrics=compute_metrics_for_task("landmarks", "wflw"),
                      preprocess_logits_for_metrics=preprocess_logits_for_task("landmarks"))

`preprocess_logits_for_task` reduces raw head outputs batch by batch (heatmaps -> points, parsing logits ->
label maps, ...), so the Trainer does not gather whole logit maps; `compute_metrics_for_task` accepts either
the raw outputs or the reduced ones. Both decode with `faceptor.processing.decoding`, as the image processor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from ...processing.decoding import attribute_labels, class_labels, expected_age, landmark_points, parsing_labels
from ...processing.geometry import normalized_to_pixels
from ...task_kinds import TASK_KINDS
from ._common import canonical_dataset, to_numpy

DENSE_INPUT_SIZE = 512


def _metric_class(kind: str):
    """The metric class of `kind`, as its entry in the table of task kinds names it."""
    from . import modules

    if kind not in TASK_KINDS:
        raise ValueError(f"Unknown task kind {kind!r}; expected one of {tuple(TASK_KINDS)}.")
    if TASK_KINDS[kind].metric is None:
        raise ValueError(f"Task kind {kind!r} has no metric.")
    return getattr(modules, TASK_KINDS[kind].metric)


def metric_for_task(kind: str, dataset: str | None = None, **kwargs):
    """The `evaluate.Metric` of a task kind (`landmarks`, `parsing`, `age`, `classification`, `multilabel`,
    `embedding`). `dataset` selects the landmark protocol (300W, WFLW, COFW, AFLW) or the parsing classes
    (CelebAMask-HQ, LaPa); official task names such as "align_wflw" work too. Other kinds ignore it.
    `kwargs` go to the metric (e.g. `class_names`, `attribute_names`, `keep_in_memory`)."""
    metric_class = _metric_class(kind)
    if kind in ("landmarks", "parsing"):
        return metric_class(dataset=dataset, **kwargs)
    return metric_class(**kwargs)


# ----------------------------------------------------------------------------------- reducing raw outputs


def _crop_pixel_points(maps: torch.Tensor, input_size: int) -> torch.Tensor:
    """Raw landmark maps `(B, N, h, w)` -> points `(B, N, 2)` in input-crop pixels (pixel centres at integers,
    the convention of the training labels)."""
    return normalized_to_pixels(landmark_points(maps), input_size)


def _first(outputs):
    while isinstance(outputs, (tuple, list)) and not isinstance(outputs, torch.Tensor):
        outputs = outputs[0]
    return outputs


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # a writable copy only when needed: torch warns on (and must not write into) read-only arrays
    return torch.from_numpy(np.require(array, requirements=("C", "W")))


def preprocess_logits_for_task(
    kind: str, input_size: int = DENSE_INPUT_SIZE
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`Trainer(preprocess_logits_for_metrics=...)` for one task kind: reduces a batch of raw outputs to what
    the metric scores (points, label maps, ages, class indices, 0/1 attributes; embeddings unchanged), with
    the decoding functions of `faceptor.processing.decoding`."""
    if kind not in TASK_KINDS:
        raise ValueError(f"Unknown task kind {kind!r}; expected one of {tuple(TASK_KINDS)}.")

    def reduce(logits, labels):
        logits = _first(logits)
        if kind == "landmarks" and logits.ndim == 4:
            return _crop_pixel_points(logits, input_size)
        if kind == "parsing" and logits.ndim == 4:
            return parsing_labels(logits, tuple(labels.shape[-2:]))
        if kind == "age" and logits.ndim == 2:
            return expected_age(logits)
        if kind == "classification" and logits.ndim == 2:
            return class_labels(logits)
        if kind == "multilabel" and logits.is_floating_point():
            return attribute_labels(logits)
        return logits

    return reduce


def prepare_inputs(
    kind: str, predictions, references, input_size: int = DENSE_INPUT_SIZE, from_logits: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Raw or reduced model outputs and labels -> the (predictions, references) arrays the metric expects."""
    predictions, references = to_numpy(_first(predictions)), to_numpy(references)
    if kind == "landmarks" and predictions.ndim == 4:
        predictions = _crop_pixel_points(_as_tensor(predictions), input_size).numpy()
    elif kind == "parsing" and predictions.ndim == 4:
        predictions = parsing_labels(_as_tensor(predictions), references.shape[-2:]).numpy()
    elif kind == "age" and predictions.ndim == 2:
        # in float64, the precision of the other numpy metric inputs
        predictions = expected_age(_as_tensor(predictions.astype(np.float64))).numpy()
    elif kind == "classification" and predictions.ndim == 2:
        predictions = class_labels(_as_tensor(predictions)).numpy()
    elif kind == "multilabel" and np.issubdtype(predictions.dtype, np.floating):
        if from_logits:
            predictions = attribute_labels(_as_tensor(predictions)).numpy()
        else:  # already probabilities
            predictions = (predictions > 0.5).astype(np.int64)
    elif kind == "embedding":
        from .verification import split_pairs

        first, second = split_pairs(predictions)
        predictions = np.stack([first, second], axis=1)
    return predictions, references


def compute_metrics_for_task(
    kind: str,
    dataset: str | None = None,
    input_size: int = DENSE_INPUT_SIZE,
    from_logits: bool = True,
    scalars_only: bool = True,
    **metric_kwargs,
) -> Callable[[object], dict]:
    """`Trainer(compute_metrics=...)` for one task: takes an `EvalPrediction` (or a `(predictions, labels)`
    pair) of raw or reduced outputs, returns the metric's scores (without the confusion matrix when
    `scalars_only`, so every value logs as a scalar).

    Landmark predictions and labels are compared in input-crop pixels; for protocols normalised by the face
    box (AFLW) the box is the whole crop (its official evaluation maps points back to the original image
    first, see `faceptor.train.augmentation.points_to_original`). Embedding predictions are pairs `(P, 2, D)`
    or interleaved `(2P, D)`, labels `(P,)` same/different."""
    metric = metric_for_task(kind, dataset, **metric_kwargs)
    needs_boxes = getattr(metric, "needs_boxes", False)

    def compute_metrics(eval_prediction) -> dict:
        if isinstance(eval_prediction, Mapping):
            predictions, references = eval_prediction["predictions"], eval_prediction["label_ids"]
        elif hasattr(eval_prediction, "predictions"):
            predictions, references = eval_prediction.predictions, eval_prediction.label_ids
        else:
            predictions, references = eval_prediction
        predictions, references = prepare_inputs(kind, predictions, references, input_size, from_logits)
        extra = {}
        if needs_boxes:
            crop = [-0.5, -0.5, input_size - 0.5, input_size - 0.5]
            extra["boxes"] = np.tile(np.asarray(crop, dtype=np.float64), (len(references), 1))
        scores = metric.compute(predictions=predictions, references=references, **extra)
        if scalars_only:
            scores = {name: value for name, value in scores.items() if np.isscalar(value)}
        return scores

    compute_metrics.metric = metric
    compute_metrics.dataset = canonical_dataset(dataset)
    return compute_metrics
