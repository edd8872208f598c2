"""Metric choice by task kind, and adapters for `transformers.Trainer`:

    trainer = Trainer(..., compute_metrics=compute_metrics_for_task("landmarks", "wflw"),
                      preprocess_logits_for_metrics=preprocess_logits_for_task("landmarks"))

`preprocess_logits_for_task` reduces raw head outputs batch by batch (heatmaps -> points, parsing logits ->
label maps, ...), so the Trainer does not gather whole logit maps; `compute_metrics_for_task` accepts either
the raw outputs or the reduced ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ...processing.geometry import heatmaps_to_points
from ._common import canonical_dataset, to_numpy
from .attributes import expected_age

TASK_KINDS = ("landmarks", "parsing", "age", "classification", "multilabel", "embedding")
DENSE_INPUT_SIZE = 512


def _metric_class(kind: str):
    from . import modules

    classes = {
        "landmarks": modules.FaceLandmarkNME,
        "parsing": modules.FaceParsingF1,
        "age": modules.AgeEstimationError,
        "classification": modules.ExpressionAccuracy,
        "multilabel": modules.AttributeAccuracy,
        "embedding": modules.VerificationAccuracy,
    }
    if kind not in classes:
        raise ValueError(f"Unknown task kind {kind!r}; expected one of {TASK_KINDS}.")
    return classes[kind]


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


def landmark_points(maps: torch.Tensor, input_size: int = DENSE_INPUT_SIZE) -> torch.Tensor:
    """Raw landmark maps `(B, N, h, w)` -> points `(B, N, 2)` in input pixels (pixel centres at integers, the
    convention of the training labels): sigmoid, soft-argmax, times the input size, minus half a pixel."""
    return heatmaps_to_points(maps.float().sigmoid()) * input_size - 0.5


def parsing_labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Parsing logits `(B, C, h, w)` -> label maps `(B, H, W)`: bilinear upsampling, then argmax."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


def _first(outputs):
    while isinstance(outputs, (tuple, list)) and not isinstance(outputs, torch.Tensor):
        outputs = outputs[0]
    return outputs


def preprocess_logits_for_task(
    kind: str, input_size: int = DENSE_INPUT_SIZE
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`Trainer(preprocess_logits_for_metrics=...)` for one task kind: reduces a batch of raw outputs to what
    the metric scores (points, label maps, ages, class indices, 0/1 attributes; embeddings unchanged)."""
    if kind not in TASK_KINDS:
        raise ValueError(f"Unknown task kind {kind!r}; expected one of {TASK_KINDS}.")

    def reduce(logits, labels):
        logits = _first(logits)
        if kind == "landmarks" and logits.ndim == 4:
            return landmark_points(logits, input_size)
        if kind == "parsing" and logits.ndim == 4:
            return parsing_labels(logits, tuple(labels.shape[-2:]))
        if kind == "age" and logits.ndim == 2:
            probabilities = F.normalize(logits.float().sigmoid(), p=1, dim=1)
            return probabilities @ torch.arange(logits.shape[1], device=logits.device, dtype=probabilities.dtype)
        if kind == "classification" and logits.ndim == 2:
            return logits.argmax(dim=1)
        if kind == "multilabel" and logits.is_floating_point():
            return (logits > 0).long()
        return logits

    return reduce


def prepare_inputs(
    kind: str, predictions, references, input_size: int = DENSE_INPUT_SIZE, from_logits: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Raw or reduced model outputs and labels -> the (predictions, references) arrays the metric expects."""
    predictions, references = to_numpy(_first(predictions)), to_numpy(references)
    if kind == "landmarks" and predictions.ndim == 4:
        predictions = landmark_points(torch.from_numpy(predictions), input_size).numpy()
    elif kind == "parsing" and predictions.ndim == 4:
        predictions = parsing_labels(torch.from_numpy(predictions), references.shape[-2:]).numpy()
    elif kind == "age" and predictions.ndim == 2:
        predictions = expected_age(predictions)
    elif kind == "classification" and predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    elif kind == "multilabel" and np.issubdtype(predictions.dtype, np.floating):
        predictions = (predictions > (0.0 if from_logits else 0.5)).astype(np.int64)
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
