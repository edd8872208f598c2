"""`evaluate.Metric` wrappers of the numpy metric cores, defined here so they work offline
(`evaluate.load("accuracy")` needs the Hub). Use them as any evaluate metric:

    metric = FaceLandmarkNME(dataset="wflw")
    metric.add_batch(predictions=points, references=true_points)   # (B, 98, 2) each, as often as needed
    metric.compute()  # {"nme": ..., "nme_inter_ocular": ..., "auc_inter_ocular_10": ..., ...}

or pick one by task kind with `metric_for_task`. Extra constructor arguments (`keep_in_memory`,
`num_process`, `process_id`, `experiment_id`, ...) go to `evaluate.Metric`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets
import evaluate
import numpy as np

from ...task_presets import CELEBA_ATTRIBUTES, EXPRESSIONS
from ._common import canonical_dataset
from .attributes import CS_THRESHOLD, EPSILON_SIGMA, age_scores, attribute_scores, expression_scores
from .landmarks import Normalization, landmark_protocol, landmark_scores
from .parsing import OFFICIAL_EXCLUDED, ParsingConfusion, parsing_classes, parsing_scores
from .verification import NUM_FOLDS, verification_scores

_CITATION = """\
@inproceedings{qin2024faceptor,
  title={Faceptor: A Generalist Model for Face Perception},
  author={Qin, Lixiong and Wang, Mei and Liu, Xuannan and Zhang, Yuhang and Deng, Wei and Song, Xiaoshuai and
          Xu, Weiran and Deng, Weihong},
  booktitle={ECCV},
  year={2024}
}
"""

_POINTS = datasets.Sequence(datasets.Sequence(datasets.Value("float64"), length=2))


class _FaceptorMetric(evaluate.Metric):
    """Base of the Faceptor metrics; subclasses store their options before `evaluate.Metric.__init__`
    calls `_info`."""

    def _module_info(self, description: str, inputs: str, features: Mapping) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=description,
            citation=_CITATION,
            inputs_description=inputs,
            features=datasets.Features(dict(features)),
            codebase_urls=["https://github.com/lxq1000/Faceptor"],
        )


class FaceLandmarkNME(_FaceptorMetric):
    """NME, AUC and FR of facial landmarks with the official per-dataset normalisations (see
    `faceptor.train.metrics.landmarks`). `dataset`: "300w", "wflw", "cofw", "aflw" (aliases accepted) or
    `None` to infer it from the number of points; AFLW's box normalisations take a `boxes` input."""

    def __init__(
        self,
        dataset: str | None = None,
        normalizations: Mapping[str, Normalization] | None = None,
        curve: tuple[str, float] | None = None,
        primary: str | None = None,
        **kwargs,
    ):
        self.dataset = canonical_dataset(dataset)
        self.normalizations, self.curve, self.primary = normalizations, curve, primary
        if normalizations is not None:
            self.needs_boxes = any(isinstance(norm, str) for norm in normalizations.values())
        else:
            self.needs_boxes = self.dataset is not None and landmark_protocol(self.dataset).needs_boxes
        kwargs.setdefault("config_name", self.dataset or "default")
        super().__init__(**kwargs)

    def _info(self):
        features = {"predictions": _POINTS, "references": _POINTS}
        inputs = (
            "predictions: (N, 2) predicted points (x, y) per sample.\n"
            "references: (N, 2) ground-truth points in the same coordinates.\n"
        )
        if self.needs_boxes:
            features["boxes"] = datasets.Sequence(datasets.Value("float64"), length=4)
            inputs += "boxes: the face box (x0, y0, x1, y1) per sample, for the box and diagonal normalisations.\n"
        return self._module_info("Normalised mean error of facial landmarks, AUC and failure rate.", inputs, features)

    def _compute(self, predictions, references, boxes=None):
        return landmark_scores(
            np.asarray(predictions, dtype=np.float64),
            np.asarray(references, dtype=np.float64),
            dataset=self.dataset,
            boxes=None if boxes is None else np.asarray(boxes, dtype=np.float64),
            normalizations=self.normalizations,
            curve=self.curve,
            primary=self.primary,
        )


# What the arrow cache of FaceParsingF1 holds: one flattened (C x C) confusion matrix and its image count
# per added batch, so memory and disk do not grow with the label maps.
_PARSING_STORAGE = datasets.Features(
    {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
)


class FaceParsingF1(_FaceptorMetric):
    """Per-class F1, the official mean F1 (all classes but `background`), IoU and mIoU of face-parsing label
    maps. `dataset`: "celebamask_hq" or "lapa" (aliases accepted), or give `class_names`. Every added batch
    is reduced to a confusion matrix at once; only those are stored."""

    def __init__(
        self,
        dataset: str | None = None,
        class_names: Sequence[str] | None = None,
        exclude: Sequence[str] = OFFICIAL_EXCLUDED,
        **kwargs,
    ):
        if class_names is None:
            if dataset is None:
                raise ValueError("FaceParsingF1 needs dataset= ('celebamask_hq', 'lapa') or class_names=.")
            class_names = parsing_classes(dataset)
        self.dataset = canonical_dataset(dataset)
        self.class_names, self.exclude = tuple(class_names), tuple(exclude)
        kwargs.setdefault("config_name", self.dataset or "default")
        super().__init__(**kwargs)

    def _info(self):
        label_map = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return self._module_info(
            "F1 per class and mean F1 (official Faceptor / FaRL protocol), IoU and mIoU of face parsing.",
            "predictions: (H, W) predicted label map per image.\nreferences: (H, W) true label map per image.\n",
            {"predictions": label_map, "references": label_map},
        )

    def _infer_feature_from_batch(self, batch):
        return _PARSING_STORAGE

    def _infer_feature_from_example(self, example):
        return _PARSING_STORAGE

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of label maps (a `(B, H, W)` array or a list of maps of any sizes)."""
        confusion = ParsingConfusion(self.class_names, self.exclude)
        confusion.update(predictions, references)
        super().add_batch(predictions=[confusion.matrix.reshape(-1)], references=[confusion.num_images], **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one predicted and one true label map."""
        self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def _compute(self, predictions, references):
        size = len(self.class_names)
        matrix = np.asarray(predictions, dtype=np.int64).reshape(-1, size, size).sum(axis=0)
        scores = parsing_scores(matrix, self.class_names, self.exclude)
        scores["num_images"] = int(np.sum(references))
        return scores


class AgeEstimationError(_FaceptorMetric):
    """MAE, CS@5 and epsilon error of age estimates (official AgeEvaluator_V2)."""

    def __init__(self, cs_threshold: float = CS_THRESHOLD, sigma: float = EPSILON_SIGMA, **kwargs):
        self.cs_threshold, self.sigma = cs_threshold, sigma
        super().__init__(**kwargs)

    def _info(self):
        return self._module_info(
            "Mean absolute error, cumulative score and epsilon error of age estimation.",
            "predictions: predicted age (years).\nreferences: true age (years).\n",
            {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")},
        )

    def _compute(self, predictions, references):
        return age_scores(predictions, references, self.cs_threshold, self.sigma)


class ExpressionAccuracy(_FaceptorMetric):
    """Top-1 accuracy (official SingferEvaluator), mean class accuracy, per-class recall and the confusion
    matrix of expression classes (AffectNet's order, `task_presets.EXPRESSIONS`, by default)."""

    def __init__(self, class_names: Sequence[str] = EXPRESSIONS, **kwargs):
        self.class_names = tuple(class_names)
        super().__init__(**kwargs)

    def _info(self):
        return self._module_info(
            "Accuracy and confusion matrix of facial expression recognition.",
            "predictions: predicted class index.\nreferences: true class index.\n",
            {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")},
        )

    def _compute(self, predictions, references):
        return expression_scores(predictions, references, len(self.class_names), self.class_names)


class AttributeAccuracy(_FaceptorMetric):
    """Mean and per-attribute accuracy of binary attributes (official BiAttrEvaluator; CelebA's 40 by
    default). Predictions are 0/1 (logits > 0)."""

    def __init__(self, attribute_names: Sequence[str] = CELEBA_ATTRIBUTES, **kwargs):
        self.attribute_names = tuple(attribute_names)
        super().__init__(**kwargs)

    def _info(self):
        binary = datasets.Sequence(datasets.Value("int64"), length=len(self.attribute_names))
        return self._module_info(
            "Mean accuracy over binary facial attributes.",
            "predictions: (A,) predicted 0/1 per attribute.\nreferences: (A,) true 0/1 per attribute.\n",
            {"predictions": binary, "references": binary},
        )

    def _compute(self, predictions, references):
        return attribute_scores(predictions, references, self.attribute_names)


class VerificationAccuracy(_FaceptorMetric):
    """1:1 verification accuracy with the 10-fold best threshold (insightface protocol) and that threshold."""

    def __init__(self, num_folds: int = NUM_FOLDS, thresholds=None, **kwargs):
        self.num_folds, self.thresholds = num_folds, thresholds
        super().__init__(**kwargs)

    def _info(self):
        return self._module_info(
            "Face verification accuracy with 10-fold cross-validated thresholds on squared L2 distances.",
            "predictions: (2, D) the two embeddings of a pair.\nreferences: whether the pair shows one person.\n",
            {
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float64")), length=2),
                "references": datasets.Value("bool"),
            },
        )

    def _compute(self, predictions, references):
        pairs = np.asarray(predictions, dtype=np.float64)
        return verification_scores(pairs[:, 0], pairs[:, 1], references, self.num_folds, self.thresholds)
