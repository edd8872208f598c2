"""The task kinds: one entry per kind says everything the package does differently for it.

A kind's entry names its category (which shared output module of the model serves it), the crop group it reads,
its decoding (a function of `processing/decoding.py`, by name, or a function), where its value goes in the
pipeline's result and in what JSON form, its Hub pipeline tag, its training metric, and how pictures and the demo
word it. Every other place reads this table: the config (`TaskSpec`), the model's output modules, the image
processor's `post_process`, the pipeline's result, the Parquet columns, the pictures, the demo and the metrics.
The tools key their presentation by the JSON form, so a kind they do not know gets its form's generic one.

Adding a kind: an entry here (`TASK_KINDS[name] = TaskKind(...)`) and its decoding, nothing else.

This file travels to the Hub as remote code, so it holds data and plain Python only: the image processor (in
`processing/`, which cannot import this folder) reads an entry through a task's `TaskSpec.kind_info`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The JSON forms of a face's value, which the pipeline writes and the tools read:
# "points" [[x, y], ...] in image pixels; "label_map" {"labels", "mask"} (run-length, of the image's size);
# "number" a float; "named_values" {name: float}; "vector" [float, ...].
JSON_FORMS = ("points", "label_map", "number", "named_values", "vector")
CATEGORIES = ("dense", "attribute", "identity")
# Crop groups: "dense" 512-px crops, "face" 112-px crops, "parsing" the dense crops, tanh-warped when the image
# processor has a warp factor.
CROP_GROUPS = ("dense", "face", "parsing")


def _top(values: dict[str, float], count: int) -> list[tuple[str, float]]:
    return sorted(values.items(), key=lambda item: -item[1])[:count]


def _percentages(values: dict[str, float], count: int) -> list[str]:
    return [f"{name.replace('_', ' ')} {probability:.0%}" for name, probability in _top(values, count)]


@dataclass(frozen=True)
class TaskKind:
    """What a task kind is, for every part of the package.

    Args:
        name: the kind's name, as a task spec's `kind`.
        category: `dense`, `attribute` or `identity`: the model's shared output module that serves it (dense
            maps from the pixel decoder, one value per query, or the encoder's identity embedding).
        crop_group: the face crop it reads (`CROP_GROUPS`).
        decoding: the raw output -> per-face values: the name of a function of `processing/decoding.py`, or a
            function of the raw output tensor `(F, ...)` giving an `(F, ...)` tensor.
        result_key: its key in a face of the pipeline's result (the first task of the kind; others go to "more").
        json_form: the value's JSON form (`JSON_FORMS`); it also picks the Parquet column's type, the image
            processor's mapping back to image pixels ("points") and the picture's drawing.
        label_prefix: names of unnamed queries in a "named_values" or "label_map" result (`<prefix>_<index>`).
        pipeline_tag: the Hub pipeline tag of a model card or query-set card of the kind.
        description: what a task of the kind does, for query-set cards.
        metric: the `faceptor.train.metrics` class scoring it, by name; None when it has none.
        picture_caption: a face's value -> the lines written beside it in pictures; None: the form's generic
            lines (a number or named values written out; nothing for points, label maps and vectors).
        demo_caption: a face's value -> its words in the demo's panel; None: the form's generic words.
    """

    name: str
    category: str
    crop_group: str
    decoding: str | Callable[[Any], Any]
    result_key: str
    json_form: str
    pipeline_tag: str
    description: str = ""
    label_prefix: str = "value"
    metric: str | None = None
    picture_caption: Callable[[Any], list[str]] | None = None
    demo_caption: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("category", self.category, CATEGORIES),
            ("crop_group", self.crop_group, CROP_GROUPS),
            ("json_form", self.json_form, JSON_FORMS),
        ):
            if value not in allowed:
                raise ValueError(f"Task kind {self.name!r}: {field} must be one of {allowed}, got {value!r}.")


TASK_KINDS: dict[str, TaskKind] = {
    "landmarks": TaskKind(
        name="landmarks",
        category="dense",
        crop_group="dense",
        decoding="landmark_points",
        result_key="landmarks",
        json_form="points",
        pipeline_tag="keypoint-detection",
        description="facial landmarks (one heatmap per query)",
        metric="FaceLandmarkNME",
    ),
    "parsing": TaskKind(
        name="parsing",
        category="dense",
        crop_group="parsing",
        decoding="parsing_labels",
        result_key="parsing",
        json_form="label_map",
        pipeline_tag="image-segmentation",
        description="face parsing (one mask per class query)",
        label_prefix="class",
        metric="FaceParsingF1",
    ),
    "age": TaskKind(
        name="age",
        category="attribute",
        crop_group="face",
        decoding="expected_age",
        result_key="age",
        json_form="number",
        pipeline_tag="image-classification",
        description="age estimation (one query per age)",
        metric="AgeEstimationError",
        picture_caption=lambda age: [f"age {age:.0f}"],
        demo_caption=lambda age: f"{age:.0f} years",
    ),
    "classification": TaskKind(
        name="classification",
        category="attribute",
        crop_group="face",
        decoding="class_probabilities",
        result_key="expression",
        json_form="named_values",
        pipeline_tag="image-classification",
        description="single-label classification (one query per class)",
        label_prefix="class",
        metric="ExpressionAccuracy",
        picture_caption=lambda scores: [f"{name} {probability:.0%}" for name, probability in _top(scores, 1)],
        demo_caption=lambda scores: ", ".join(_percentages(scores, 3)),
    ),
    "multilabel": TaskKind(
        name="multilabel",
        category="attribute",
        crop_group="face",
        decoding="attribute_probabilities",
        result_key="attributes",
        json_form="named_values",
        pipeline_tag="image-classification",
        description="multi-label attributes (one query per attribute)",
        label_prefix="attribute",
        metric="AttributeAccuracy",
        picture_caption=lambda scores: _percentages(scores, 3),
        demo_caption=lambda scores: ", ".join(_percentages(scores, 5)),
    ),
    "embedding": TaskKind(
        name="embedding",
        category="identity",
        crop_group="face",
        decoding="normalized_embeddings",
        result_key="embedding",
        json_form="vector",
        pipeline_tag="image-feature-extraction",
        description="identity embedding",
        metric="VerificationAccuracy",
    ),
}


def task_kind(name: str) -> TaskKind:
    """The entry of kind `name`; a `ValueError` lists the known kinds."""
    if name not in TASK_KINDS:
        raise ValueError(f"Unknown task kind {name!r}; expected one of {sorted(TASK_KINDS)}.")
    return TASK_KINDS[name]


__all__ = ["CATEGORIES", "CROP_GROUPS", "JSON_FORMS", "TASK_KINDS", "TaskKind", "task_kind"]
