"""Evaluation metrics of Faceptor's tasks, following the official evaluators (`core/evaluator/*.py`).

Each metric has a vectorised numpy core (importable without `evaluate`) and an `evaluate.Metric` wrapper:

| kind             | numpy core            | `evaluate.Metric`      | main outputs                                    |
|------------------|-----------------------|------------------------|-------------------------------------------------|
| `landmarks`      | `landmark_scores`     | `FaceLandmarkNME`      | nme, nme_<norm>, auc_<norm>_<t>, fr_<norm>_<t>  |
| `parsing`        | `ParsingConfusion`    | `FaceParsingF1`        | f1_mean, f1_<class>, mean_iou, iou_<class>      |
| `age`            | `age_scores`          | `AgeEstimationError`   | mae, cs_5, epsilon_error                        |
| `classification` | `expression_scores`   | `ExpressionAccuracy`   | accuracy, mean_class_accuracy, confusion_matrix |
| `multilabel`     | `attribute_scores`    | `AttributeAccuracy`    | mean_accuracy, accuracy_<attribute>             |
| `embedding`      | `verification_scores` | `VerificationAccuracy` | accuracy, accuracy_std, best_threshold          |

`metric_for_task(kind, dataset)` picks the metric; `compute_metrics_for_task` and `preprocess_logits_for_task`
plug it into `transformers.Trainer`, decoding raw outputs with `faceptor.processing.decoding` (the functions
the image processor's `post_process_*` use).
"""

from ._common import canonical_dataset
from .attributes import age_scores, attribute_scores, classification_confusion, expression_scores
from .landmarks import (
    LANDMARK_PROTOCOLS,
    LandmarkProtocol,
    ced_auc_fr,
    landmark_protocol,
    landmark_scores,
    nme_per_sample,
    unit_distances,
)
from .parsing import PARSING_CLASSES, ParsingConfusion, confusion_matrix, parsing_classes, parsing_scores
from .tasks import TASK_KINDS, compute_metrics_for_task, metric_for_task, preprocess_logits_for_task
from .verification import fuse_flipped, kfold_bounds, split_pairs, verification_scores

_MODULES = (
    "FaceLandmarkNME",
    "FaceParsingF1",
    "AgeEstimationError",
    "ExpressionAccuracy",
    "AttributeAccuracy",
    "VerificationAccuracy",
)


def __getattr__(name: str):
    # The evaluate.Metric classes import `evaluate` (slow, optional): load them on first use.
    if name in _MODULES:
        from . import modules

        return getattr(modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LANDMARK_PROTOCOLS",
    "PARSING_CLASSES",
    "TASK_KINDS",
    "LandmarkProtocol",
    "ParsingConfusion",
    "age_scores",
    "attribute_scores",
    "canonical_dataset",
    "ced_auc_fr",
    "classification_confusion",
    "compute_metrics_for_task",
    "confusion_matrix",
    "expression_scores",
    "fuse_flipped",
    "kfold_bounds",
    "landmark_protocol",
    "landmark_scores",
    "metric_for_task",
    "nme_per_sample",
    "parsing_classes",
    "parsing_scores",
    "preprocess_logits_for_task",
    "split_pairs",
    "unit_distances",
    "verification_scores",
    *_MODULES,
]
