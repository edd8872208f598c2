"""Attribute-prediction metrics as the official evaluators: age (`age_evaluator.py`: MAE, CS@5, epsilon
error), expression (`affect_evaluator.py`: top-1 accuracy) and binary attributes (`biattr_evaluator.py`:
per-attribute accuracy and their mean). Rates are fractions in [0, 1] (the official logs print percent).
Raw logits are decoded to ages, classes and 0/1 attributes by `faceptor.processing.decoding`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import to_numpy

CS_THRESHOLD = 5.0  # official: |error| <= 5 years
EPSILON_SIGMA = 3.0  # official AgeEvaluator_V2 uses a fixed std_label = 3.0


def age_scores(
    predictions, references, cs_threshold: float = CS_THRESHOLD, sigma: float = EPSILON_SIGMA
) -> dict[str, float]:
    """`mae` (years), `cs_<t>` (share of samples with |error| <= t) and `epsilon_error`
    (1 - mean exp(-error^2 / (2 sigma^2))) of predicted vs true ages `(B,)`."""
    predictions = to_numpy(predictions).astype(np.float64).reshape(-1)
    references = to_numpy(references).astype(np.float64).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"Got {predictions.size} predicted ages for {references.size} references.")
    if predictions.size == 0:
        raise ValueError("No ages to score.")
    errors = np.abs(predictions - references)
    tag = f"{cs_threshold:g}".replace(".", "p")
    return {
        "mae": float(errors.mean()),
        f"cs_{tag}": float((errors <= cs_threshold).mean()),
        "epsilon_error": float(1.0 - np.exp(-(errors**2) / (2 * sigma**2)).mean()),
    }


def classification_confusion(predictions, references, num_classes: int) -> np.ndarray:
    """`(C, C)` counts, rows = true class, columns = predicted class."""
    predictions = to_numpy(predictions).astype(np.int64).reshape(-1)
    references = to_numpy(references).astype(np.int64).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"Got {predictions.size} predictions for {references.size} references.")
    for name, labels in (("predictions", predictions), ("references", references)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} hold classes outside [0, {num_classes}).")
    return np.bincount(references * num_classes + predictions, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def expression_scores(
    predictions, references, num_classes: int | None = None, class_names: Sequence[str] | None = None
) -> dict:
    """Top-1 `accuracy` (the official metric), `mean_class_accuracy` (mean per-class recall over the classes
    present in the references; not reported by the official evaluator), `recall_<class>` and the
    `confusion_matrix` (list of rows, true x predicted) of predicted vs true class indices `(B,)`."""
    references_array = to_numpy(references).astype(np.int64).reshape(-1)
    if references_array.size == 0:
        raise ValueError("No expressions to score.")
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else None
    if num_classes is None:
        num_classes = int(max(references_array.max(), to_numpy(predictions).max())) + 1
    names = list(class_names) if class_names is not None else [str(index) for index in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"Got {len(names)} class names for {num_classes} classes.")
    matrix = classification_confusion(predictions, references_array, num_classes)
    support = matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.diag(matrix) / support
    scores = {
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "mean_class_accuracy": float(recall[support > 0].mean()),
    }
    scores.update({f"recall_{name}": float(value) for name, value in zip(names, recall, strict=True)})
    scores["confusion_matrix"] = matrix.tolist()
    return scores


def attribute_scores(predictions, references, attribute_names: Sequence[str] | None = None) -> dict[str, float]:
    """`mean_accuracy` over attributes (the official CelebA metric) and `accuracy_<attribute>` of binary
    predictions vs labels `(B, A)`. As the official `binary_accuracy`, a label that is not 0/1 (e.g. -1 for
    unknown) never matches. Decode logits with `decoding.attribute_labels` (logits > 0, official round(sigmoid))."""
    predictions = to_numpy(predictions).astype(np.int64)
    references = to_numpy(references).astype(np.int64)
    if predictions.ndim == 1:
        predictions, references = predictions[None], references[None]
    if predictions.shape != references.shape:
        raise ValueError(f"Prediction shape {predictions.shape} mismatches the reference shape {references.shape}.")
    if predictions.shape[0] == 0:
        raise ValueError("No attribute labels to score.")
    names = list(attribute_names) if attribute_names is not None else [str(i) for i in range(predictions.shape[1])]
    if len(names) != predictions.shape[1]:
        raise ValueError(f"Got {len(names)} attribute names for {predictions.shape[1]} attributes.")
    per_attribute = (predictions == references).mean(axis=0)
    scores = {"mean_accuracy": float(per_attribute.mean())}
    scores.update({f"accuracy_{name}": float(value) for name, value in zip(names, per_attribute, strict=True)})
    return scores
