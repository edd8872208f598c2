"""Decoding of Faceptor's raw task outputs, one function per task kind, shared by the image processor's
`post_process_*`, the training metrics and `faceptor evaluate`:

| kind             | raw output              | decoding                                                        |
|------------------|-------------------------|-----------------------------------------------------------------|
| `landmarks`      | heatmaps `(B, N, h, w)` | `landmark_points`: (x, y) normalised to [0, 1]                  |
| `parsing`        | logits `(B, C, h, w)`   | `parsing_labels`: label maps `(B, H, W)`                        |
| `age`            | logits `(B, 101)`       | `expected_age` (from `age_probabilities`)                       |
| `classification` | logits `(B, C)`         | `class_probabilities`, `class_labels`                           |
| `multilabel`     | logits `(B, A)`         | `attribute_probabilities`, `attribute_labels`                   |
| `embedding`      | features `(B, D)`       | `normalized_embeddings`                                         |

A task kind's entry (`task_kinds.TASK_KINDS`) names its decoding here; `find_decoding` resolves the name.
Pure tensor functions on any device; the mapping to image coordinates and to label names stays with the
callers. Half-precision inputs are decoded in float32; float64 ones keep their precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .geometry import heatmaps_to_points


def _floating(values: torch.Tensor) -> torch.Tensor:
    # float64 stays float64 so the metrics keep numpy's precision; half precision is too coarse to decode in
    return values if values.dtype == torch.float64 else values.float()


def landmark_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """Raw landmark maps `(B, N, h, w)` -> points `(B, N, 2)` as (x, y) normalised to [0, 1] with pixel
    centres at `(index + 0.5) / size`, as the official code reads them: sigmoid, then the soft-argmax
    [`heatmaps_to_points`]. `geometry.normalized_to_pixels` maps them to crop or image pixels."""
    return heatmaps_to_points(_floating(heatmaps).sigmoid())


def parsing_labels(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Parsing logits `(B, C, h, w)` -> int64 label maps `(B, H, W)`: bilinear upsampling to `size` (H, W)
    when given and different, then the arg-max over classes."""
    logits = _floating(logits)
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


def age_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Age logits `(B, A)` -> a distribution over ages 0..A-1 `(B, A)`: sigmoid outputs normalised to sum to
    one, as the official DLDL-v2 age loss and evaluator."""
    return F.normalize(_floating(logits).sigmoid(), p=1, dim=1)


def expected_age(logits: torch.Tensor) -> torch.Tensor:
    """Age logits `(B, A)` -> ages `(B,)`: the expectation of [`age_probabilities`] over ages 0..A-1."""
    probabilities = age_probabilities(logits)
    ages = torch.arange(logits.shape[1], dtype=probabilities.dtype, device=probabilities.device)
    return (probabilities * ages).sum(dim=1)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Classification logits `(B, C)` -> softmax probabilities `(B, C)`."""
    return _floating(logits).softmax(dim=1)


def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """Classification logits `(B, C)` -> int64 class indices `(B,)` (the first on ties)."""
    # arg-max of the logits, not of the probabilities: softmax can round distinct logits to equal values
    return logits.argmax(dim=1)


def attribute_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Multi-label logits `(B, A)` -> independent sigmoid probabilities `(B, A)`."""
    return _floating(logits).sigmoid()


def attribute_labels(logits: torch.Tensor) -> torch.Tensor:
    """Multi-label logits `(B, A)` -> int64 0/1 attributes `(B, A)`: present when the logit is positive (the
    official round(sigmoid))."""
    # the logit's sign, not sigmoid > 0.5: sigmoid rounds tiny positive logits to exactly 0.5
    return (logits > 0).long()


def normalized_embeddings(features: torch.Tensor) -> torch.Tensor:
    """Identity features `(B, D)` -> L2-normalised embeddings `(B, D)` (zero rows stay zero); compare them by
    dot product or squared distance."""
    return F.normalize(_floating(features), dim=1)


def find_decoding(decoding: str | Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A task kind's decoding (`TaskKind.decoding`): the function of this module it names, or the function given."""
    if callable(decoding):
        return decoding
    if decoding not in __all__ or decoding == "find_decoding":
        raise ValueError(
            f"No decoding named {decoding!r}; the decodings are {sorted(set(__all__) - {'find_decoding'})}."
        )
    return globals()[decoding]


__all__ = [
    "age_probabilities",
    "attribute_labels",
    "attribute_probabilities",
    "class_labels",
    "class_probabilities",
    "expected_age",
    "find_decoding",
    "landmark_points",
    "normalized_embeddings",
    "parsing_labels",
]
