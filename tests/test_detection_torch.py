"""The torch MTCNN cascade (processing/detection.py) against the earlier onnxruntime one it replaces.

`OnnxRuntimeMTCNN` below is that earlier detector, kept as the reference: numpy boxes and NMS, Pillow pyramid and
crops, the three ONNX networks run by onnxruntime. The torch path must give the same faces (boxes and keypoints
within 1 px, scores within 1e-3) with the torch networks and both resamplers, Pillow (used on the CPU) and the torch
emulation of Pillow's arithmetic (used on accelerators, run here on the CPU), and with the onnxruntime networks
(the CPU default when onnxruntime is installed) inside the same batched cascade.
"""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from faceptor.processing import detection, mtcnn_networks, onnx_weights, pillow_resampling
from faceptor.processing.detection import MTCNNDetector, load_default_detector

skimage_data = pytest.importorskip("skimage.data", reason="the test photos come from scikit-image")

BOX_TOLERANCE = 1.0  # pixels, boxes and keypoints
SCORE_TOLERANCE = 1e-3


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def asset_photo() -> np.ndarray:
    import importlib.resources

    with importlib.resources.as_file(importlib.resources.files("faceptor.assets") / "astronaut.jpg") as path:
        return np.asarray(Image.open(path).convert("RGB"))


def lfw_crops() -> np.ndarray:
    return rgb_batch(np.round(skimage_data.lfw_subset() * 255).astype(np.uint8))  # 0-99 faces, 100-199 not


def rgb_batch(grays: np.ndarray) -> np.ndarray:
    return np.repeat(grays[..., None], 3, axis=-1)


def numpy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0])
        height = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1])
        inter = np.clip(width, 0, None) * np.clip(height, 0, None)
        union = areas[best] + areas[rest] - inter if mode == "union" else np.minimum(areas[best], areas[rest])
        order = rest[inter / np.maximum(union, 1e-9) <= threshold]
    return np.asarray(keep, dtype=np.int64)


class OnnxRuntimeMTCNN:
    """The detector before the torch port (default options), the reference the torch path must reproduce."""

    def __init__(self):
        onnxruntime = pytest.importorskip("onnxruntime")
        folder = mtcnn_networks.default_weights_dir()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.pnet, self.rnet, self.onet = (
            onnxruntime.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
            for name in detection.WEIGHT_FILES
        )

    @staticmethod
    def run(session, batch: np.ndarray) -> list[np.ndarray]:
        normalised = (batch.astype(np.float32) - 127.5) * (1.0 / 128.0)
        return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(normalised.transpose(0, 2, 1, 3))})

    @staticmethod
    def squared(boxes):
        boxes = boxes.copy()
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        boxes[:, 0], boxes[:, 2] = centre_x - side / 2, centre_x + side / 2
        boxes[:, 1], boxes[:, 3] = centre_y - side / 2, centre_y + side / 2
        return boxes

    @staticmethod
    def regressed(boxes, offsets):
        return boxes + offsets * np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)

    @staticmethod
    def crops(picture, boxes, size):
        crops = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
        for index, (x0, y0, x1, y1) in enumerate(np.round(boxes[:, :4]).astype(np.int64)):
            crop = picture.crop((int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))))
            crops[index] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
        return crops

    def __call__(self, image: np.ndarray) -> list[detection.DetectedFace]:
        picture = Image.fromarray(image)
        scale, found = 12 / 20, []
        while min(picture.size) * scale >= 12:
            width, height = max(12, int(np.ceil(picture.width * scale))), max(12, int(np.ceil(picture.height * scale)))
            level = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0))
            offsets, probabilities = self.run(self.pnet, level[None])
            face_map = probabilities[0, :, :, 1].T
            rows, cols = np.nonzero(face_map >= 0.6)
            scale_x, scale_y = width / picture.width, height / picture.height
            x0, y0 = cols * 2 / scale_x, rows * 2 / scale_y
            boxes = np.stack([x0, y0, x0 + 12 / scale_x, y0 + 12 / scale_y], axis=1)
            boxes = self.regressed(boxes, offsets[0].transpose(1, 0, 2)[rows, cols])
            keep = numpy_nms(boxes, face_map[rows, cols], 0.5)
            found.append(np.concatenate([boxes[keep], face_map[rows, cols][keep, None]], axis=1))
            scale *= 0.709
        candidates = np.concatenate(found) if found else np.zeros((0, 5))
        candidates = candidates[numpy_nms(candidates[:, :4], candidates[:, 4], 0.7)]
        if not len(candidates):
            return []
        boxes = self.squared(candidates[:, :4])
        offsets, probabilities = self.run(self.rnet, self.crops(picture, boxes, 24))
        passed = probabilities[:, 1] >= 0.7
        boxes, scores, offsets = boxes[passed], probabilities[passed, 1], offsets[passed]
        keep = numpy_nms(boxes, scores, 0.7)
        if not len(keep):
            return []
        boxes = self.squared(self.regressed(boxes[keep], offsets[keep]))
        offsets, points, probabilities = self.run(self.onet, self.crops(picture, boxes, 48))
        passed = probabilities[:, 1] >= 0.7
        boxes, scores, offsets, points = boxes[passed], probabilities[passed, 1], offsets[passed], points[passed]
        width, height = (boxes[:, 2] - boxes[:, 0])[:, None], (boxes[:, 3] - boxes[:, 1])[:, None]
        keypoints = np.stack([boxes[:, :1] + points[:, :5] * width, boxes[:, 1:2] + points[:, 5:] * height], axis=2)
        boxes = self.regressed(boxes, offsets)
        keep = numpy_nms(boxes, scores, 0.7, mode="min")
        return [
            detection.DetectedFace(
                tuple(boxes[i].tolist()), float(scores[i]), [tuple(p) for p in keypoints[i].tolist()]
            )
            for i in keep
        ]


def largest_differences(expected, actual) -> tuple[float, float, float]:
    """Largest box, score and keypoint differences of two equally long face lists."""
    assert len(expected) == len(actual), (expected, actual)
    pairs = list(zip(expected, actual, strict=True))
    box = max((abs(a - b) for e, f in pairs for a, b in zip(e.box, f.box, strict=True)), default=0.0)
    score = max((abs(e.score - f.score) for e, f in pairs), default=0.0)
    points = [(p, q) for e, f in pairs for p, q in zip(e.keypoints, f.keypoints, strict=True)]
    keypoint = max((abs(a - b) for p, q in points for a, b in zip(p, q, strict=True)), default=0.0)
    return box, score, keypoint


@pytest.fixture(scope="module")
def reference():
    return OnnxRuntimeMTCNN()


@pytest.fixture(scope="module", params=[("torch", "pillow"), ("torch", "torch"), ("onnxruntime", "pillow")])
def detector(request):
    backend, resampler = request.param
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    try:
        return MTCNNDetector(backend=backend, resampler=resampler)
    except detection.DetectorUnavailable as error:
        pytest.skip(str(error))


PHOTOS = {
    "asset": asset_photo,
    "astronaut": skimage_data.astronaut,
    "camera": lambda: rgb(skimage_data.camera()),
}


@pytest.mark.parametrize("name", PHOTOS)
def test_photos_give_the_reference_faces(detector, reference, name):
    photo = PHOTOS[name]()
    expected = reference(photo)
    assert len(expected) == 1  # one face in each: the comparison is not vacuous
    box, score, keypoint = largest_differences(expected, detector(photo))
    assert box <= BOX_TOLERANCE and score <= SCORE_TOLERANCE and keypoint <= BOX_TOLERANCE


def test_lfw_crops_give_the_reference_faces(detector, reference):
    crops = lfw_crops()
    found = detector.detect_batch(crops)
    expected = [reference(crop) for crop in crops]
    assert [bool(f) for f in found] == [bool(e) for e in expected]
    assert sum(map(bool, expected)) >= 50  # most of the 100 faces are found: the comparison is not vacuous
    for own, theirs in zip(expected, found, strict=True):
        box, score, keypoint = largest_differences(own, theirs)
        assert box <= BOX_TOLERANCE and score <= SCORE_TOLERANCE and keypoint <= BOX_TOLERANCE


def test_a_batch_equals_one_image_at_a_time(detector):
    photos = [
        skimage_data.astronaut(),
        asset_photo(),
        np.zeros((5, 5, 3), np.uint8),  # too small for the pyramid: no faces, and no effect on the others
        rgb(skimage_data.camera()),
        skimage_data.astronaut()[:300, 100:],
    ]
    batched = detector.detect_batch(photos)
    assert [len(faces) for faces in batched] == [1, 1, 0, 1, 1]
    for faces, photo in zip(batched, photos, strict=True):
        box, score, keypoint = largest_differences(detector(photo), faces)
        # Equal but for float rounding: the networks' kernels may sum in another order for another batch size.
        assert box < 1e-3 and score < 1e-5 and keypoint < 1e-3


def test_a_tensor_batch_equals_a_list_of_arrays(detector):
    photos = [skimage_data.astronaut(), rgb(skimage_data.camera())]
    assert detector.detect_batch(torch.from_numpy(np.stack(photos))) == detector.detect_batch(photos)


def test_the_networks_match_onnxruntime():
    onnxruntime = pytest.importorskip("onnxruntime")
    folder = mtcnn_networks.default_weights_dir()
    networks = detection.load_mtcnn_networks()
    rng = np.random.default_rng(0)
    for network, name, shape in zip(
        networks, detection.WEIGHT_FILES, [(2, 37, 53), (5, 24, 24), (5, 48, 48)], strict=True
    ):
        session = onnxruntime.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        images = rng.uniform(-1, 1, (*shape, 3)).astype(np.float32)
        expected = session.run(None, {session.get_inputs()[0].name: images.transpose(0, 2, 1, 3).copy()})
        outputs = network(torch.from_numpy(images).permute(0, 3, 1, 2))
        if name == "pnet.onnx":  # ONNX's P-Net maps are (N, W', H', C)
            outputs = [output.permute(0, 3, 2, 1) for output in outputs]
        for want, got in zip(expected, outputs, strict=True):
            assert want.shape == tuple(got.shape)
            np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_the_weights_reader_matches_onnx():
    numpy_helper = pytest.importorskip("onnx.numpy_helper")
    import onnx

    for name in detection.WEIGHT_FILES:
        path = mtcnn_networks.default_weights_dir() / name
        expected = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
        read = onnx_weights.read_onnx_initializers(path)
        assert read.keys() == expected.keys()
        for key, array in expected.items():
            np.testing.assert_array_equal(read[key], array)


@pytest.mark.parametrize(
    ("shape", "size"), [((384, 512), (231, 308)), ((512, 512), (37, 37)), ((600, 97), (12, 16)), ((50, 60), (13, 12))]
)
def test_torch_resize_equals_pillow_bit_for_bit(shape, size):
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR, reducing_gap=3.0)
    resized = pillow_resampling.resize_like_pillow(torch.from_numpy(image).permute(2, 0, 1)[None], *size, 3.0)
    np.testing.assert_array_equal(resized[0].permute(1, 2, 0).numpy(), np.asarray(expected))


def test_torch_crops_equal_pillow_crops_bit_for_bit():
    image = np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    boxes = [(-10, -5, 30, 40), (60, 80, 100, 120), (5, 5, 6, 6), (0, 0, 70, 90), (20, 30, 44, 54), (-50, 10, 200, 20)]
    flat, base, heights, widths = pillow_resampling.flatten_images([torch.from_numpy(image).permute(2, 0, 1)])
    corners = torch.tensor(boxes)
    in_size = torch.stack([corners[:, 3] - corners[:, 1], corners[:, 2] - corners[:, 0]], dim=1)
    owners = torch.zeros(len(boxes), dtype=torch.int64)
    crops = pillow_resampling.resample_like_pillow(
        flat, base[owners], heights[owners], widths[owners], corners[:, [1, 0]], in_size, in_size.double(), (24, 24)
    )
    for crop, box in zip(crops, boxes, strict=True):
        expected = np.asarray(Image.fromarray(image).crop(box).resize((24, 24), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(crop.permute(1, 2, 0).numpy(), expected)


def test_batched_nms_keeps_groups_apart_and_breaks_ties_in_input_order():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [2, 2, 6, 6]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.9, 0.8, 0.95])
    groups = torch.tensor([0, 0, 1, 0])
    assert detection.batched_nms(boxes, scores, groups, 0.5).tolist() == [3, 0, 2]
    assert detection.batched_nms(boxes, scores, groups, 0.5, mode="min").tolist() == [3, 2]


def test_load_default_detector_takes_a_device_and_picks_by_it():
    found = load_default_detector(device="cpu", backend="torch")
    assert found.device == torch.device("cpu") and found.pnet.conv1.weight.device.type == "cpu"
    assert found.resampler == "pillow"
    expected = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"
    assert load_default_detector(device="cpu").backend == expected
    with pytest.raises(ValueError, match="resampler"):
        MTCNNDetector(resampler="nearest")
    with pytest.raises(ValueError, match="CPU"):
        MTCNNDetector(device="meta", backend="onnxruntime")
