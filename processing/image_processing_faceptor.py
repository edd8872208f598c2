"""Image processor of Faceptor: face crops per task category in, named results out.

Preprocessing follows the official test transforms: dense tasks (landmarks, parsing) read a 512-px crop
normalised with CLIP's mean/std; attribute and identity tasks read a 112-px crop normalised with mean/std
0.5. A crop is the square around a face box, enlarged by a per-group factor (the official landmark test
zooms the 300W box out by 1/0.8), or the whole image, padded to a square, when the image is already a
face crop. `post_process_*` decode the model's raw outputs with the shared `decoding` functions (those the
training metrics use) and map them back to the original image and to names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ImagesKwargs

from .decoding import (
    attribute_probabilities,
    class_probabilities,
    expected_age,
    landmark_points,
    normalized_embeddings,
    parsing_labels,
)
from .geometry import normalized_to_pixels, tanh_unwarp, tanh_warp
from .image_loading import load_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
# Which crop group feeds each task category.
CATEGORY_GROUP = {"dense": "dense", "attribute": "face", "identity": "face"}
MAX_PARSING_SIDE = 1024  # logits are upsampled at most this far; labels beyond it by nearest neighbour


class FaceptorImageProcessorKwargs(ImagesKwargs, total=False):
    dense_size: int
    dense_mean: tuple[float, float, float]
    dense_std: tuple[float, float, float]
    dense_box_scale: float
    face_size: int
    face_mean: tuple[float, float, float]
    face_std: tuple[float, float, float]
    face_box_scale: float
    parsing_warp_factor: float


def square_crop(box: Sequence[float], scale: float) -> tuple[int, int, int]:
    """`(left, top, side)` of the square, in whole pixels, centred on `box` (x0, y0, x1, y1) with side
    `scale` times the box's longer side."""
    x0, y0, x1, y1 = (float(value) for value in box)
    side = max(1, round(max(x1 - x0, y1 - y0) * scale))
    left = round((x0 + x1) / 2 - side / 2)
    top = round((y0 + y1) / 2 - side / 2)
    return left, top, side


class FaceptorImageProcessor(TorchvisionBackend):
    r"""
    Crops, resizes and normalises faces for [`FaceptorModel`], and turns its raw outputs into results.

    Args:
        dense_size (`int`, defaults to 512): crop side of dense tasks (landmarks, parsing).
        dense_mean, dense_std: normalisation of dense crops (CLIP's, as FaRL).
        dense_box_scale (`float`, defaults to 1.25): dense crop side / face box side (official 1 / 0.8).
        face_size (`int`, defaults to 112): crop side of attribute and identity tasks.
        face_mean, face_std: normalisation of those crops (0.5, as the official attribute transforms).
        face_box_scale (`float`, defaults to 1.3): their crop side / face box side.
        parsing_warp_factor (`float`, defaults to 0): FaRL's tanh-warping of parsing crops (0.8 for a model
            trained on LaPa as the official recipe; 0 for CelebAMask-HQ). When positive, parsing tasks read
            their own "parsing" crops, warped so the whole image fits into the crop border, and
            `post_process_parsing` undoes the warp.
    """

    valid_kwargs = FaceptorImageProcessorKwargs
    model_input_names = ["pixel_values"]
    dense_size = 512
    dense_mean = CLIP_MEAN
    dense_std = CLIP_STD
    dense_box_scale = 1.25
    face_size = 112
    face_mean = HALF
    face_std = HALF
    face_box_scale = 1.3
    parsing_warp_factor = 0.0

    def group_for(self, kind: str, category: str) -> str:
        """The crop group a task reads: "dense", "face", or "parsing" (warped parsing crops)."""
        if kind == "parsing" and self.parsing_warp_factor > 0:
            return "parsing"
        return CATEGORY_GROUP[category]

    def group_settings(self, group: str) -> tuple[int, tuple, tuple, float]:
        if group not in ("dense", "face", "parsing"):
            raise ValueError(f"Unknown crop group {group!r}; expected 'dense', 'face' or 'parsing'.")
        prefix = "dense" if group == "parsing" else group
        return tuple(getattr(self, f"{prefix}_{name}") for name in ("size", "mean", "std", "box_scale"))

    def warped_crop(self, image: torch.Tensor, crop: tuple[int, int, int]) -> torch.Tensor:
        """A tanh-warped parsing crop: each output pixel samples (bilinear) the image where `tanh_unwarp` puts
        it, so the face fills the centre and the rest of the image is squeezed into the border."""
        size, mean, std, _ = self.group_settings("parsing")
        left, top, side = crop
        height, width = image.shape[-2:]
        centres = torch.arange(size, dtype=torch.float32) + 0.5
        source = tanh_unwarp(centres, size, self.parsing_warp_factor) * (side / size)
        xs, ys = (left + source) / width * 2 - 1, (top + source) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        patch = F.grid_sample(image[None].float() / 255.0, grid, mode="bilinear", align_corners=False)[0]
        return tvF.normalize(patch, list(mean), list(std))

    def crop_face(self, image: torch.Tensor, crop: tuple[int, int, int], group: str) -> torch.Tensor:
        """`(3, H, W)` uint8 image and a `(left, top, side)` crop -> normalised `(3, size, size)` float crop;
        the parts outside the image are black, as the official warps leave them."""
        if group == "parsing":
            return self.warped_crop(image, crop)
        size, mean, std, _ = self.group_settings(group)
        left, top, side = crop
        patch = tvF.crop(image, top, left, side, side)  # pads with zeros outside the image
        patch = tvF.resize(patch, [size, size], antialias=True)
        patch = patch.float() / 255.0
        return tvF.normalize(patch, list(mean), list(std))

    def preprocess(
        self,
        images,
        boxes: Sequence[Sequence[Sequence[float]] | None] | None = None,
        groups: Sequence[str] = ("dense", "face"),
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        r"""
        images: an image or a list (paths, PIL images or numpy arrays).
        boxes: per image, a list of face boxes `[x0, y0, x1, y1]` in pixels, or `None` when the image is
            already one face crop (then the whole image is used, padded to a square).
        groups: which crops to make: `"dense"` (512 px) and/or `"face"` (112 px).

        Returns a `BatchFeature` with, for F faces over all images: `pixel_values_<group>` `(F, 3, S, S)`,
        `crops_<group>` `(F, 3)` (left, top, side in original pixels), `face_boxes` `(F, 4)`,
        `image_index` `(F,)` and `image_sizes` `(N, 2)` as (height, width).
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
            boxes = None if boxes is None else [boxes]
        if boxes is None:
            boxes = [None] * len(images)
        if len(boxes) != len(images):
            raise ValueError(f"Got boxes for {len(boxes)} images but {len(images)} images.")
        data = {f"pixel_values_{group}": [] for group in groups}
        data.update({f"crops_{group}": [] for group in groups})
        face_boxes, image_index, image_sizes = [], [], []
        for index, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
            array = load_image(image)
            height, width = array.shape[:2]
            image_sizes.append([height, width])
            tensor = torch.from_numpy(array).permute(2, 0, 1)
            whole_image = image_boxes is None
            for box in [[0, 0, width, height]] if whole_image else image_boxes:
                box = [float(value) for value in box]
                if len(box) != 4 or not box[2] > box[0] or not box[3] > box[1]:
                    raise ValueError(f"Face box {box} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0.")
                face_boxes.append(box)
                image_index.append(index)
                for group in groups:
                    scale = 1.0 if whole_image else self.group_settings(group)[3]
                    crop = square_crop(box, scale)
                    data[f"pixel_values_{group}"].append(self.crop_face(tensor, crop, group))
                    data[f"crops_{group}"].append(list(crop))
        for group in groups:
            size = self.group_settings(group)[0]
            pixels = data[f"pixel_values_{group}"]
            data[f"pixel_values_{group}"] = torch.stack(pixels) if pixels else torch.zeros(0, 3, size, size)
            data[f"crops_{group}"] = torch.tensor(data[f"crops_{group}"], dtype=torch.float32).reshape(-1, 3)
        data["face_boxes"] = torch.tensor(face_boxes, dtype=torch.float32).reshape(-1, 4)
        data["image_index"] = torch.tensor(image_index, dtype=torch.long)
        data["image_sizes"] = torch.tensor(image_sizes, dtype=torch.long).reshape(-1, 2)
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------------------------- post-processing

    @staticmethod
    def post_process_landmarks(heatmaps: torch.Tensor, crops: torch.Tensor) -> list[np.ndarray]:
        """Raw landmark maps `(F, N, h, w)` and their crops `(F, 3)` -> per face an `(N, 2)` array of (x, y)
        in original-image pixels (pixel centres at integer coordinates), decoded by `landmark_points`."""
        points = landmark_points(heatmaps)
        crops = crops.to(points)
        return list(normalized_to_pixels(points, crops[:, None, 2:], crops[:, None, :2]).cpu().numpy())

    @staticmethod
    def unwarp_parsing(logits: torch.Tensor, crop: Sequence[float], height: int, width: int, warp_factor: float):
        """Labels `(height, width)` of a whole image from the logits `(C, h, w)` of a tanh-warped crop: each
        image pixel reads the logits where `tanh_warp` sent it (bilinear), a band of rows at a time."""
        left, top, side = (float(value) for value in crop)
        columns = (torch.arange(width, dtype=torch.float32) + 0.5 - left) / side
        warped_x = tanh_warp(columns * logits.shape[-1], logits.shape[-1], warp_factor) / logits.shape[-1] * 2 - 1
        labels = torch.empty(height, width, dtype=torch.uint8)
        band = max(1, 2**20 // max(width, 1))
        for start in range(0, height, band):
            rows = (torch.arange(start, min(start + band, height), dtype=torch.float32) + 0.5 - top) / side
            warped_y = tanh_warp(rows * logits.shape[-2], logits.shape[-2], warp_factor) / logits.shape[-2] * 2 - 1
            grid = torch.stack(torch.meshgrid(warped_x, warped_y, indexing="xy"), dim=-1)[None]
            sampled = F.grid_sample(logits[None].float(), grid, mode="bilinear", align_corners=False)
            labels[start : start + len(rows)] = parsing_labels(sampled)[0].to(torch.uint8)
        return labels

    @staticmethod
    def post_process_parsing(
        logits: torch.Tensor,
        crops: torch.Tensor,
        image_sizes: torch.Tensor | Sequence[Sequence[int]],
        warp_factor: float = 0.0,
    ) -> list[np.ndarray]:
        """Raw parsing logits `(F, C, h, w)`, crops `(F, 3)` and each face's image size `(F, 2)` (height,
        width) -> per face an `(height, width)` uint8 label map of the original image; outside the crop the
        label is 0 (background). With a `warp_factor`, the crops were tanh-warped and the warp is undone.
        Labels are decoded by `parsing_labels` at the crop's resolution (at most `MAX_PARSING_SIDE`)."""
        if warp_factor > 0:
            return [
                FaceptorImageProcessor.unwarp_parsing(face_logits, crop, int(height), int(width), warp_factor).numpy()
                for face_logits, crop, (height, width) in zip(logits, crops.tolist(), image_sizes, strict=True)
            ]
        label_maps = []
        for face_logits, crop, (height, width) in zip(logits.float(), crops.tolist(), image_sizes, strict=True):
            left, top, side = (int(round(value)) for value in crop)
            resolution = min(side, MAX_PARSING_SIDE)
            labels = parsing_labels(face_logits[None], (resolution, resolution))[0].to(torch.uint8)
            if resolution != side:
                labels = F.interpolate(labels[None, None].float(), (side, side), mode="nearest")[0, 0].to(torch.uint8)
            canvas = torch.zeros(int(height), int(width), dtype=torch.uint8)
            x0, y0 = max(left, 0), max(top, 0)
            x1, y1 = min(left + side, int(width)), min(top + side, int(height))
            if x1 > x0 and y1 > y0:
                canvas[y0:y1, x0:x1] = labels[y0 - top : y1 - top, x0 - left : x1 - left]
            label_maps.append(canvas.numpy())
        return label_maps

    @staticmethod
    def post_process_age(logits: torch.Tensor) -> np.ndarray:
        """`(F, 101)` age logits -> `(F,)` ages by `expected_age`: the expectation over ages 0..100 of the
        sigmoid outputs normalised to sum to one, as the official DLDL-v2 age loss and evaluator."""
        return expected_age(logits).cpu().numpy()

    @staticmethod
    def post_process_classification(logits: torch.Tensor, labels: Sequence[str]) -> list[dict[str, float]]:
        """`(F, C)` logits -> per face {label: softmax probability} (`class_probabilities`)."""
        probabilities = class_probabilities(logits).cpu().tolist()
        return [dict(zip(labels, row, strict=True)) for row in probabilities]

    @staticmethod
    def post_process_multilabel(logits: torch.Tensor, labels: Sequence[str]) -> list[dict[str, float]]:
        """`(F, C)` logits -> per face {attribute: sigmoid probability} (`attribute_probabilities`)."""
        probabilities = attribute_probabilities(logits).cpu().tolist()
        return [dict(zip(labels, row, strict=True)) for row in probabilities]

    @staticmethod
    def post_process_embedding(features: torch.Tensor) -> np.ndarray:
        """`(F, D)` identity features -> L2-normalised `(F, D)` embeddings (`normalized_embeddings`; compare
        by dot product)."""
        return normalized_embeddings(features).cpu().numpy()


FaceptorImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["FaceptorImageProcessor"]
