"""Facial landmark metrics: NME under several normalisations, and the failure rate and area under the CED
curve, as the official `core/evaluator/align_evaluator.py`.

Per sample, NME = mean over points of ||pred - gt|| / d, with d from the ground truth:

- `inter_ocular` / `inter_pupil`: distance between the mean of a left group and the mean of a right group of
  ground-truth points (official ids: 300W 36 | 45 and 36-41 | 42-47, WFLW 60 | 72 and 96 | 97, COFW 8 | 9,
  AFLW-19 6 | 11 and 7 | 10);
- `box`: sqrt(w * h) of the face box; `diag`: sqrt(w^2 + h^2) of the face box.

The dataset NME is the mean of the per-sample NMEs. For the CED curve the official code samples thresholds
`np.arange(0, t + 1e-4, 1e-4)`, takes the fraction of samples with NME <= x at each, integrates it with
Simpson's rule and divides by t (AUC@t); FR@t = 1 - CED(last x). Official curves: WFLW and COFW inter-ocular
at 0.1, AFLW-19 box at 0.07. The official 300W evaluator reports no curve; ours adds inter-ocular @ 0.1.

All values are fractions (multiply by 100 for the percentages papers print).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._common import canonical_dataset, to_numpy

CED_STEP = 1e-4  # official AUC_FR(step=0.0001)

# A normalisation is either "box", "diag", or (left ids, right ids) whose means span the unit distance.
Normalization = str | tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class LandmarkProtocol:
    """How one dataset is scored: its normalisations (name -> definition), which NME is the headline
    `nme`, and the (normalisation, threshold) of the CED curve for AUC and FR."""

    num_points: int
    normalizations: Mapping[str, Normalization]
    primary: str
    curve: tuple[str, float]
    notes: str = field(default="", compare=False)

    @property
    def needs_boxes(self) -> bool:
        return any(isinstance(norm, str) for norm in self.normalizations.values())


LANDMARK_PROTOCOLS: dict[str, LandmarkProtocol] = {
    # Official IBUG300WEvaluator: inter-ocular (outer eye corners 36, 45) and inter-pupil (eye-contour means).
    "300w": LandmarkProtocol(
        num_points=68,
        normalizations={
            "inter_ocular": ((36,), (45,)),
            "inter_pupil": (tuple(range(36, 42)), tuple(range(42, 48))),
        },
        primary="inter_ocular",
        curve=("inter_ocular", 0.1),
        notes="the official 300W evaluator reports no AUC/FR; the inter-ocular @0.1 curve is ours",
    ),
    # Official WFLWEvaluator: inter-ocular (outer eye corners 60, 72), inter-pupil (pupils 96, 97).
    "wflw": LandmarkProtocol(
        num_points=98,
        normalizations={"inter_ocular": ((60,), (72,)), "inter_pupil": ((96,), (97,))},
        primary="inter_ocular",
        curve=("inter_ocular", 0.1),
    ),
    # Official COFWEvaluator: "inter_ocular" between points 8 and 9 (the outer eye corners of the LFPW/COFW
    # 29-point definition, the HRNet convention). The pupils (16, 17) give our extra `inter_pupil`.
    "cofw": LandmarkProtocol(
        num_points=29,
        normalizations={"inter_ocular": ((8,), (9,)), "inter_pupil": ((16,), (17,))},
        primary="inter_ocular",
        curve=("inter_ocular", 0.1),
        notes="the official COFW evaluator reports only inter_ocular (8, 9); inter_pupil (16, 17) is ours",
    ),
    # Official AFLWEvaluator: outer eye corners 6 | 11, eye centres 7 | 10, box sqrt(w h), box diagonal;
    # AUC/FR on the box NME at 0.07. The paper's AFLW-19 column is NME_diag.
    "aflw": LandmarkProtocol(
        num_points=19,
        normalizations={"inter_ocular": ((6,), (11,)), "inter_pupil": ((7,), (10,)), "box": "box", "diag": "diag"},
        primary="diag",
        curve=("box", 0.07),
    ),
}

_BY_NUM_POINTS = {protocol.num_points: name for name, protocol in LANDMARK_PROTOCOLS.items()}


def landmark_protocol(dataset: str | None = None, num_points: int | None = None) -> LandmarkProtocol:
    """The protocol of `dataset` (any alias: "300W", "align_wflw", ...), or else the one of the dataset with
    `num_points` points (68, 98, 29, 19)."""
    key = canonical_dataset(dataset)
    if key is not None:
        if key not in LANDMARK_PROTOCOLS:
            raise ValueError(f"No landmark protocol for dataset {dataset!r}; known: {sorted(LANDMARK_PROTOCOLS)}.")
        return LANDMARK_PROTOCOLS[key]
    if num_points in _BY_NUM_POINTS:
        return LANDMARK_PROTOCOLS[_BY_NUM_POINTS[num_points]]
    raise ValueError(
        f"Cannot tell the landmark dataset of {num_points}-point annotations; pass dataset= or normalizations=."
    )


def _as_points(value, name: str) -> np.ndarray:
    points = to_numpy(value).astype(np.float64)
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"{name} must be (batch, points, 2) or (points, 2), got shape {points.shape}.")
    return points


def _as_boxes(boxes, batch: int) -> np.ndarray:
    array = to_numpy(boxes).astype(np.float64).reshape(-1, 4)
    if len(array) != batch:
        raise ValueError(f"Got {len(array)} boxes for {batch} samples.")
    return array


def unit_distances(references, normalization: Normalization, boxes=None) -> np.ndarray:
    """`(B,)` normalising distances of ground-truth points `(B, N, 2)` (boxes `(B, 4)` as x0, y0, x1, y1 for
    "box" and "diag")."""
    references = _as_points(references, "references")
    if isinstance(normalization, str):
        if boxes is None:
            raise ValueError(f"The {normalization!r} normalisation needs face boxes (x0, y0, x1, y1).")
        box = _as_boxes(boxes, len(references))
        width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        if normalization == "box":
            return np.sqrt(width * height)
        if normalization == "diag":
            return np.sqrt(width**2 + height**2)
        raise ValueError(f"Unknown box normalisation {normalization!r}; expected 'box' or 'diag'.")
    left, right = (list(ids) for ids in normalization)
    return np.linalg.norm(references[:, left].mean(axis=1) - references[:, right].mean(axis=1), axis=-1)


def nme_per_sample(predictions, references, unit_distance) -> np.ndarray:
    """`(B,)` per-sample NME: mean over points of the point error divided by the sample's unit distance."""
    predictions, references = _as_points(predictions, "predictions"), _as_points(references, "references")
    if predictions.shape != references.shape:
        raise ValueError(f"Prediction shape {predictions.shape} mismatches the reference shape {references.shape}.")
    errors = np.linalg.norm(predictions - references, axis=-1)  # (B, N)
    with np.errstate(divide="ignore", invalid="ignore"):
        return errors.mean(axis=1) / np.asarray(unit_distance, dtype=np.float64).reshape(-1)


def simpson(y: np.ndarray, x: np.ndarray) -> float:
    """Composite Simpson's rule over samples `y` at abscissae `x`, as `scipy.integrate.simpson` (scipy >= 1.11):
    pairs of intervals by the 3-point rule; with an even number of samples the last interval is closed by the
    parabola through the last three samples (Cartwright's correction)."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    if len(y) < 2:
        return 0.0
    if len(y) == 2:
        return float((x[1] - x[0]) * (y[0] + y[1]) / 2)
    count = len(y) if len(y) % 2 else len(y) - 1  # odd number of samples for the paired rule
    h = np.diff(x[:count])
    h0, h1 = h[0::2], h[1::2]
    y0, y1, y2 = y[0 : count - 2 : 2], y[1 : count - 1 : 2], y[2:count:2]
    total = np.sum((h0 + h1) / 6 * ((2 - h1 / h0) * y0 + (h0 + h1) ** 2 / (h0 * h1) * y1 + (2 - h0 / h1) * y2))
    if count < len(y):
        h0, h1 = x[-2] - x[-3], x[-1] - x[-2]
        alpha = (2 * h1**2 + 3 * h0 * h1) / (6 * (h0 + h1))
        beta = (h1**2 + 3 * h0 * h1) / (6 * h0)
        eta = h1**3 / (6 * h0 * (h0 + h1))
        total += alpha * y[-1] + beta * y[-2] - eta * y[-3]
    return float(total)


def ced_auc_fr(nmes, threshold: float, step: float = CED_STEP) -> tuple[float, float]:
    """(AUC@threshold, FR@threshold) of per-sample NMEs, by the official CED sampling
    (`np.arange(0, threshold + step, step)`, Simpson's rule, divided by the threshold)."""
    nmes = np.sort(np.asarray(nmes, dtype=np.float64).reshape(-1))
    if len(nmes) == 0:
        return float("nan"), float("nan")
    xaxis = np.arange(0.0, threshold + step, step)
    ced = np.searchsorted(nmes, xaxis, side="right") / len(nmes)  # fraction of samples with NME <= x
    return simpson(ced, xaxis) / threshold, float(1.0 - ced[-1])


def _threshold_tag(threshold: float) -> str:
    percent = threshold * 100
    return str(int(round(percent))) if abs(percent - round(percent)) < 1e-9 else f"{percent:g}".replace(".", "p")


def landmark_scores(
    predictions,
    references,
    dataset: str | None = None,
    boxes=None,
    normalizations: Mapping[str, Normalization] | None = None,
    curve: tuple[str, float] | None = None,
    primary: str | None = None,
) -> dict[str, float]:
    """NME per normalisation, AUC and FR of predicted vs ground-truth points `(B, N, 2)`.

    `dataset` picks the official protocol (inferred from N when omitted); `normalizations`, `curve` and
    `primary` override it. Returns `nme` (the primary NME), `nme_<norm>` for every normalisation and
    `auc_<norm>_<t%>` / `fr_<norm>_<t%>` (e.g. `auc_inter_ocular_10`, `fr_box_7`)."""
    references = _as_points(references, "references")
    if normalizations is None:
        protocol = landmark_protocol(dataset, references.shape[1])
        if protocol.num_points != references.shape[1]:
            raise ValueError(
                f"Dataset {dataset!r} has {protocol.num_points} points, the references have {references.shape[1]}."
            )
        normalizations = protocol.normalizations
        curve = curve or protocol.curve
        primary = primary or protocol.primary
    if not normalizations:
        raise ValueError("No normalisation to compute the NME with.")
    primary = primary or next(iter(normalizations))
    curve = curve or (primary, 0.1)
    if boxes is None and any(isinstance(norm, str) for norm in normalizations.values()):
        raise ValueError(f"Normalisations {dict(normalizations)} need face boxes; pass boxes= (x0, y0, x1, y1).")
    nmes = {
        name: nme_per_sample(predictions, references, unit_distances(references, norm, boxes))
        for name, norm in normalizations.items()
    }
    scores = {"nme": float(nmes[primary].mean())}
    scores.update({f"nme_{name}": float(values.mean()) for name, values in nmes.items()})
    curve_name, threshold = curve
    auc, fr = ced_auc_fr(nmes[curve_name], threshold)
    tag = _threshold_tag(threshold)
    scores[f"auc_{curve_name}_{tag}"] = auc
    scores[f"fr_{curve_name}_{tag}"] = fr
    return scores


def normalization_pairs(dataset: str) -> dict[str, tuple[Sequence[int], Sequence[int]]]:
    """The (left ids, right ids) landmark normalisations of a dataset's protocol (box ones left out)."""
    protocol = landmark_protocol(dataset)
    return {name: norm for name, norm in protocol.normalizations.items() if not isinstance(norm, str)}
