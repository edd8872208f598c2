"""Image processor of Faceptor: face crops per task category in, decoded results in image coordinates out.

Preprocessing follows the official test transforms: dense tasks (landmarks, parsing) read a 512-px crop
normalised with CLIP's mean/std; attribute and identity tasks read a 112-px crop normalised with mean/std
0.5. A crop is the square around a face box, enlarged by a per-group factor (the official landmark test
zooms the 300W box out by 1/0.8), or the whole image, padded to a square, when the image is already a
face crop. Crops are cut on the images' device, all faces of a call together (`resampling.sample_crops`): the
training crops' antialiased resize of the zero-padded square, or bilinear sampling through the tanh-warp for
parsing crops, reading only the pixels inside each image, so memory follows the crops, not the images.
`post_process` decodes the model's raw outputs with the shared `decoding` functions (those the training
metrics use) on the outputs' device and maps them back to the original images.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension
from transformers.processing_utils import ImagesKwargs, Unpack

from .decoding import (
    find_decoding,
    parsing_labels,
)
from .geometry import normalized_to_pixels, square_crops, tanh_unwarp, tanh_warp
from .image_loading import ImageLoadError, load_image
from .mask_encoding import label_map_runs
from .resampling import antialiased_taps, bilinear_taps, sample_crops

# Lists, not tuples: the attributes must equal themselves after a JSON round trip (save_pretrained / to_dict).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
GROUPS = ("dense", "face", "parsing")
# A face box at most this many times the image's longer side: a crop's resize weights grow with its window.
MAX_BOX_TO_IMAGE = 8
# Elements of one band of upsampled parsing logits: bounds the memory of a huge face's label map.
PARSING_BAND_ELEMENTS = 2**24


class FaceptorImageProcessorKwargs(ImagesKwargs, total=False):
    dense_size: int
    dense_mean: list[float]
    dense_std: list[float]
    dense_box_scale: float
    face_size: int
    face_mean: list[float]
    face_std: list[float]
    face_box_scale: float
    parsing_warp_factor: float


# The group settings a call may override; transformers' common `size`, `image_mean` and `image_std` set every group's.
GROUP_KEYS = tuple(
    key for key in FaceptorImageProcessorKwargs.__annotations__ if key not in ImagesKwargs.__annotations__
)
NORMALIZATION_KEYS = ("dense_mean", "dense_std", "face_mean", "face_std")
# What a call accepts besides the group settings; the other common kwargs (resize, rescale, pad...) have no
# meaning for face crops and are refused rather than silently ignored.
CALL_KEYS = frozenset(
    {*GROUP_KEYS, "size", "image_mean", "image_std", "do_convert_rgb", "input_data_format", "data_format"}
)


def _square_side(size: Any) -> int:
    # transformers' `size` (an int, {"height", "width"} or {"shortest_edge"}) -> the side of a square crop.
    if isinstance(size, int):
        return size
    size = {key: value for key, value in dict(size).items() if value is not None}
    if "height" in size and "width" in size and size["height"] == size["width"]:
        return int(size["height"])
    if set(size) == {"shortest_edge"}:
        return int(size["shortest_edge"])
    raise ValueError(f"Face crops are square: size must be an int or {{'height': s, 'width': s}}, got {size}.")


def _per_channel(value: float | Sequence[float]) -> list[float]:
    return [float(value)] * 3 if isinstance(value, (int, float)) else [float(item) for item in value]


def common_to_group_settings(
    size: Any = None,
    image_mean: float | Sequence[float] | None = None,
    image_std: float | Sequence[float] | None = None,
) -> dict[str, Any]:
    """transformers' common `size`, `image_mean` and `image_std` as the settings of every crop group."""
    values: dict[str, Any] = {}
    if size is not None:
        values["dense_size"] = values["face_size"] = _square_side(size)
    if image_mean is not None:
        values["dense_mean"] = values["face_mean"] = _per_channel(image_mean)
    if image_std is not None:
        values["dense_std"] = values["face_std"] = _per_channel(image_std)
    return values


def _channels_last(shape: Sequence[int], input_data_format: Any) -> bool:
    # Where the channels of a 3-D array are: as given, else numpy inputs' rule (`image_loading._array_to_rgb`).
    if input_data_format is not None:
        return ChannelDimension(input_data_format) == ChannelDimension.LAST
    return not (shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4))


def image_tensor(image: Any, do_convert_rgb: bool = True, input_data_format: Any = None) -> torch.Tensor:
    """An input image (path, PIL image, numpy array or tensor, channels first or last, 1 to 4 channels) -> a
    `(C, H, W)` tensor: RGB (`load_image`'s conversion) with `do_convert_rgb`, else its own channels. A `(3, H, W)`
    tensor is used as it is, on its device."""
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and not _channels_last(image.shape, input_data_format):
            if image.shape[0] == 3 or not do_convert_rgb:
                return image
            image = image.permute(1, 2, 0)
        elif image.ndim == 3 and (image.shape[-1] == 3 or not do_convert_rgb):
            return image.permute(2, 0, 1)  # a view: the pixels stay where they are
        if image.ndim not in (2, 3):
            raise ImageLoadError(f"expected a 2-D or 3-D image tensor, got shape {tuple(image.shape)}")
        # Other channel counts are rare: converted as numpy arrays are, so all inputs give the same pixels.
        return torch.from_numpy(load_image(image.cpu().numpy())).permute(2, 0, 1).to(image.device)
    if do_convert_rgb:
        if isinstance(image, np.ndarray) and image.ndim == 3 and input_data_format is not None:
            image = image if _channels_last(image.shape, input_data_format) else np.moveaxis(image, 0, -1)
        return torch.from_numpy(np.ascontiguousarray(load_image(image))).permute(2, 0, 1)
    array = np.asarray(load_image(image) if isinstance(image, (str, os.PathLike)) else image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ImageLoadError(f"expected a 2-D or 3-D image, got shape {array.shape}")
    if not _channels_last(array.shape, input_data_format):
        array = np.moveaxis(array, 0, -1)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


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
            `post_process` undoes the warp.

    Size groups: one model call reads crops of one size, so the processor makes the crops of one group at a time
    for the model: `processor(images, boxes=..., tasks=model.resolve_tasks([...]))` returns `pixel_values` of the
    group of those tasks (all of one group) and their names as `tasks`, so `model(**inputs)` decodes exactly
    them; `group="dense" | "face" | "parsing"` picks a group directly. `post_process(outputs, tasks,
    image_sizes, boxes)` turns the raw outputs back into image coordinates. Called with `groups=(...)` instead,
    the processor returns every listed group's crops and their geometry under group-suffixed keys.

    Called with the images alone, it returns the crops of every group the model's tasks read, as `model(**inputs)`
    takes them: `pixel_values` (dense crops), `pixel_values_face` and, with a warp factor, `pixel_values_parsing`;
    the model then runs one encoder pass per group and returns all its tasks.

    Any attribute can be overridden per call (`processor(image, face_size=64)`), as can transformers' common
    `size`, `image_mean` and `image_std` (every group's), `do_convert_rgb` (default True: 1-, 2- and 4-channel
    images become RGB; False keeps their channels) and `input_data_format` (channels first or last; inferred).
    """

    valid_kwargs = FaceptorImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_values_face", "pixel_values_parsing"]
    do_convert_rgb = True
    dense_size = 512
    dense_mean = CLIP_MEAN
    dense_std = CLIP_STD
    dense_box_scale = 1.25
    face_size = 112
    face_mean = HALF
    face_std = HALF
    face_box_scale = 1.3
    parsing_warp_factor = 0.0

    def __init__(self, **kwargs: Unpack[FaceptorImageProcessorKwargs]) -> None:
        # transformers' common size / image_mean / image_std set every group's, unless a group's own is given.
        common = {key: kwargs.pop(key) for key in ("size", "image_mean", "image_std") if kwargs.get(key) is not None}
        for key, value in common_to_group_settings(**common).items():
            kwargs.setdefault(key, value)
        super().__init__(**kwargs)
        for key in NORMALIZATION_KEYS:
            setattr(self, key, _per_channel(getattr(self, key)))

    def with_overrides(self, **overrides: Any) -> FaceptorImageProcessor:
        """This processor with per-call settings: its group settings (`face_size=64`) and transformers' common
        `size`, `image_mean`, `image_std`, which set every group's (a group's own setting wins). A copy, so
        concurrent calls never see each other's overrides; `self` when nothing changes."""
        values = common_to_group_settings(*(overrides.get(key) for key in ("size", "image_mean", "image_std")))
        values.update({key: overrides[key] for key in GROUP_KEYS if overrides.get(key) is not None})
        if not values:
            return self
        processor = copy.copy(self)
        for key, value in values.items():
            setattr(processor, key, _per_channel(value) if key in NORMALIZATION_KEYS else value)
        return processor

    def default_groups(self) -> tuple[str, ...]:
        """The crop groups of a call with no tasks or group: all a model's tasks read."""
        return ("dense", "face", "parsing") if self.parsing_warp_factor > 0 else ("dense", "face")

    def group_for(self, spec: Any) -> str:
        """The crop group a task (its `TaskSpec`) reads, as its kind's entry says: "dense", "face", or "parsing"
        (warped dense crops, when this processor has a warp factor; the plain dense crops otherwise)."""
        group = _kind_of(spec).crop_group
        return "dense" if group == "parsing" and not self.parsing_warp_factor > 0 else group

    def groups_of(self, tasks: Sequence[Any]) -> dict[str, list[Any]]:
        """Task specs (`TaskSpec`s, e.g. from `model.resolve_tasks`) by the crop group they read, in the order of
        `GROUPS`."""
        found = {group: [] for group in GROUPS}
        for spec in tasks:
            found[self.group_for(spec)].append(spec)
        return {group: specs for group, specs in found.items() if specs}

    def group_settings(self, group: str) -> tuple[int, tuple, tuple, float]:
        if group not in ("dense", "face", "parsing"):
            raise ValueError(f"Unknown crop group {group!r}; expected 'dense', 'face' or 'parsing'.")
        prefix = "dense" if group == "parsing" else group
        return tuple(getattr(self, f"{prefix}_{name}") for name in ("size", "mean", "std", "box_scale"))

    # ------------------------------------------------------------------------------------------- geometry

    def face_geometry(
        self,
        image_sizes: Sequence[Sequence[int]],
        boxes: Sequence[Sequence[Sequence[float]] | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per image `(height, width)` and its face boxes (`None`: the image is one face crop) -> per face, on the
        CPU: `face_boxes` `(F, 4)` float64, `whole_image` `(F,)`, `image_index` `(F,)` and `image_sizes` `(F, 2)`
        (height, width). Float64 so the crops round exactly as `square_crop` does."""
        if boxes is None:
            boxes = [None] * len(image_sizes)
        if len(boxes) != len(image_sizes):
            raise ValueError(f"Got boxes for {len(boxes)} images but {len(image_sizes)} images.")
        face_boxes, whole_image, image_index, sizes = [], [], [], []
        for index, ((height, width), image_boxes) in enumerate(zip(image_sizes, boxes, strict=True)):
            whole = image_boxes is None
            for box in [[0, 0, width, height]] if whole else image_boxes:
                box = [float(value) for value in box]
                if len(box) != 4 or not box[2] > box[0] or not box[3] > box[1]:
                    raise ValueError(f"Face box {box} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0.")
                if box[0] >= width or box[1] >= height or box[2] <= 0 or box[3] <= 0:
                    raise ValueError(
                        f"Face box {box} of image {index} lies wholly outside the image ({width}x{height} px)."
                    )
                if max(box[2] - box[0], box[3] - box[1]) > MAX_BOX_TO_IMAGE * max(width, height):
                    raise ValueError(
                        f"Face box {box} of image {index} is more than {MAX_BOX_TO_IMAGE} times the image's size "
                        f"({width}x{height} px): not a face in it."
                    )
                face_boxes.append(box)
                whole_image.append(whole)
                image_index.append(index)
                sizes.append([int(height), int(width)])
        return {
            "face_boxes": torch.tensor(face_boxes, dtype=torch.float64).reshape(-1, 4),
            "whole_image": torch.tensor(whole_image, dtype=torch.bool),
            "image_index": torch.tensor(image_index, dtype=torch.long),
            "image_sizes": torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
        }

    def crop_boxes(self, face_boxes: torch.Tensor, whole_image: torch.Tensor, group: str) -> torch.Tensor:
        """Faces' boxes `(F, 4)` and whole-image flags `(F,)` -> their `group` crops `(F, 3)` float32 as (left,
        top, side): the group's box scale around a detected or given box, 1 for a whole image (already a face
        crop, only padded to a square)."""
        scale = self.group_settings(group)[3]
        scales = torch.where(whole_image.to(face_boxes.device), 1.0, scale).to(torch.float64)
        return square_crops(face_boxes.to(torch.float64), scales).float()

    # ---------------------------------------------------------------------------------------------- crops

    def crop_faces(
        self, images: Sequence[torch.Tensor], crops: torch.Tensor, image_index: torch.Tensor, group: str
    ) -> torch.Tensor:
        """`(C, H, W)` images on one device, `(F, 3)` crops (left, top, side) and each crop's image index ->
        normalised `(F, C, size, size)` float crops on that device, the parts outside an image black (as the
        official warps leave them). Plain crops are the training transforms' crop and antialiased resize
        (`antialiased_taps`: the values of `tvF.resize(tvF.crop(...), antialias=True)` of uint8 images on the CPU),
        without padding the square; "parsing" crops with a warp factor are tanh-warped (`warped_crops`). All faces
        go through `sample_crops` together."""
        size, mean, std, _ = self.group_settings(group)
        device = images[0].device if images else crops.device
        crops, image_index = crops.to(device, torch.float64), image_index.to(device)
        if not len(crops):
            return torch.zeros(0, 3, size, size, device=device)
        if group == "parsing" and self.parsing_warp_factor > 0:
            pixels = self.warped_crops(images, crops, image_index, size)
        else:
            heights, widths = _image_extents(images, image_index)
            left, top, side = crops.round().unbind(1)
            rows = antialiased_taps(top, side, heights, size)
            columns = antialiased_taps(left, side, widths, size)
            pixels = sample_crops(images, image_index, rows, columns)  # 0..255 integers, as uint8 crops
        if len(mean) != pixels.shape[1] or len(std) != pixels.shape[1]:
            raise ValueError(
                f"The images have {pixels.shape[1]} channels but the {group} mean and std have {len(mean)} and "
                f"{len(std)} values: pass do_convert_rgb=True, or image_mean / image_std of one value per channel."
            )
        mean = torch.tensor(mean, device=device)[:, None, None]
        std = torch.tensor(std, device=device)[:, None, None]
        return pixels.div_(255.0).sub_(mean).div_(std)

    def warped_crops(
        self, images: Sequence[torch.Tensor], crops: torch.Tensor, image_index: torch.Tensor, size: int
    ) -> torch.Tensor:
        """Tanh-warped parsing crops `(F, 3, size, size)`, unnormalised 0-255: each output pixel samples
        (bilinear, black outside the image, as `grid_sample`) its image where `tanh_unwarp` puts it, so the face
        fills the centre and the rest of the image is squeezed into the border. The warp is separable, so each
        crop reads only its at most 2 `size` rows and columns of the image (`bilinear_taps`), never the whole
        image at once."""
        crops = crops.to(torch.float64)
        centres = torch.arange(size, dtype=torch.float64, device=crops.device) + 0.5
        source = tanh_unwarp(centres, size, self.parsing_warp_factor)  # (size,) in crop pixels of a `size` crop
        left, top, side = crops.unbind(1)
        # Crop pixels -> image pixels, pixel centres at integers.
        xs = left[:, None] + source * (side[:, None] / size) - 0.5
        ys = top[:, None] + source * (side[:, None] / size) - 0.5
        heights, widths = _image_extents(images, image_index)
        return sample_crops(images, image_index, bilinear_taps(ys, heights), bilinear_taps(xs, widths))

    def preprocess(
        self,
        images: Any,
        boxes: Sequence[Sequence[Sequence[float]] | None] | None = None,
        tasks: Sequence[Any] | None = None,
        group: str | None = None,
        groups: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Unpack[FaceptorImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        images: an image or a list (paths, PIL images, numpy arrays or tensors, channels first or last).
        boxes: per image, a list of face boxes `[x0, y0, x1, y1]` in pixels, or `None` when the image is
            already one face crop (then the whole image is used, padded to a square).
        tasks: the task specs to prepare for (`model.resolve_tasks(names)`), all reading
            one size group; the output is what `model(**inputs)` takes: `pixel_values` `(F, 3, S, S)` for the F
            faces over all images and `tasks`, the names.
        group: `"dense"` (512 px), `"face"` (112 px) or `"parsing"` (warped dense crops): `pixel_values` of that
            group (with `tasks` when given).
        groups: every listed group's crops and their geometry:
            `pixel_values_<group>` `(F, 3, S, S)`, `crops_<group>` `(F, 3)` (left, top, side in original pixels),
            `face_boxes` `(F, 4)`, `image_index` `(F,)` and `image_sizes` `(N, 2)` as (height, width).
        None of them (the default): the crops of every group the model reads (`default_groups`), as
            `model(**inputs)` takes them for all its tasks: `pixel_values` (dense crops), `pixel_values_face` and,
            with a parsing warp factor, `pixel_values_parsing`.
        device: where to crop (the images travel there once as uint8); the CPU by default.
        kwargs: per-call overrides of the attributes and transformers' common image kwargs (`size`,
            `image_mean`, `image_std`, `do_convert_rgb`, `input_data_format`; see the class docstring).
        """
        unknown = sorted(set(kwargs) - CALL_KEYS)
        if unknown:
            raise TypeError(f"FaceptorImageProcessor got arguments it does not use: {unknown}.")
        data_format = kwargs.get("data_format")
        if data_format is not None and ChannelDimension(data_format) != ChannelDimension.FIRST:
            raise ValueError("The crops are channels first (the model's layout); data_format must be 'channels_first'.")
        processor = self.with_overrides(**kwargs)
        do_convert_rgb = kwargs.get("do_convert_rgb")
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        if not isinstance(images, (list, tuple)):
            images = [images]
            boxes = None if boxes is None else [boxes]
        tensors = [image_tensor(image, do_convert_rgb, kwargs.get("input_data_format")) for image in images]
        tensors = [tensor.to(device) for tensor in tensors] if device is not None else tensors
        geometry = processor.face_geometry([tuple(tensor.shape[-2:]) for tensor in tensors], boxes)
        if groups is None and tasks is None and group is None:
            return processor._every_group(tensors, geometry, return_tensors)
        if groups is None:
            return processor._one_group(tensors, geometry, tasks, group)
        return processor._groups_with_geometry(tensors, geometry, groups, return_tensors)

    def _every_group(self, tensors: list[torch.Tensor], geometry: dict, return_tensors: str | None) -> BatchFeature:
        # Every group a model reads, under the names its forward takes (the dense crops as `pixel_values`).
        data = {}
        for name in self.default_groups():
            crops = self.crop_boxes(geometry["face_boxes"], geometry["whole_image"], name)
            key = "pixel_values" if name == "dense" else f"pixel_values_{name}"
            data[key] = self.crop_faces(tensors, crops, geometry["image_index"], name)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _one_group(
        self, tensors: list[torch.Tensor], geometry: dict, tasks: Sequence[Any] | None, group: str | None
    ) -> BatchFeature:
        # One group's crops as `pixel_values`, with the names of `tasks` (which must all read that group).
        task_names = None
        if tasks is not None:
            by_group = self.groups_of(tasks)
            if len(by_group) != 1 or (group is not None and group not in by_group):
                raise ValueError(
                    f"Tasks {[_field(spec, 'name') for spec in tasks]} read the crop groups {list(by_group)}: "
                    "one model call takes crops of one group, so prepare each group's tasks separately "
                    "(or call the processor without tasks for the crops of every group)."
                )
            group = next(iter(by_group))
            task_names = [_field(spec, "name") for spec in tasks]
        crops = self.crop_boxes(geometry["face_boxes"], geometry["whole_image"], group)
        data = {"pixel_values": self.crop_faces(tensors, crops, geometry["image_index"], group)}
        if task_names is not None:
            data["tasks"] = task_names
        # The names are not tensors: build the feature without conversion, its tensors are torch already.
        return BatchFeature(data=data)

    def _groups_with_geometry(
        self, tensors: list[torch.Tensor], geometry: dict, groups: Sequence[str], return_tensors: str | None
    ) -> BatchFeature:
        # Every listed group's crops with where they came from (for training and post-processing by hand).
        data = {}
        for name in groups:
            crops = self.crop_boxes(geometry["face_boxes"], geometry["whole_image"], name)
            data[f"pixel_values_{name}"] = self.crop_faces(tensors, crops, geometry["image_index"], name)
            data[f"crops_{name}"] = crops
        data["face_boxes"] = geometry["face_boxes"].float()
        data["image_index"] = geometry["image_index"]
        data["image_sizes"] = torch.tensor([list(tensor.shape[-2:]) for tensor in tensors], dtype=torch.long)
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------------------------- post-processing

    def post_process(
        self,
        outputs: Any,
        tasks: Sequence[Any],
        image_sizes: Sequence[Sequence[int]],
        boxes: Sequence[Sequence[Sequence[float]] | None] | None = None,
        parsing_format: str = "label_map",
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The model's raw outputs (a `FaceptorOutput` or its `task_outputs`, rows in the order of the
        processor's `pixel_values`), the task specs, and the images' `(height, width)` and face boxes as given to
        the processor -> per task, decoded on the outputs' device: `landmarks` `(F, N, 2)` (x, y) in image
        pixels; `parsing` a list of F `(height, width)` uint8 label maps of each face's image (background outside
        its crop), or with `parsing_format="runs"` their run-length encodings `(R, 2)` (`label_map_runs`);
        `age` `(F,)` years; `classification` `(F, C)` and `multilabel` `(F, A)` probabilities; `embedding`
        `(F, D)` L2-normalised."""
        raw = outputs.task_outputs if hasattr(outputs, "task_outputs") else outputs
        if parsing_format not in ("label_map", "runs"):
            raise ValueError(f"parsing_format must be 'label_map' or 'runs', got {parsing_format!r}")
        geometry = self.face_geometry(image_sizes, boxes)
        crops: dict[str, torch.Tensor] = {}
        decoded = {}
        for spec in tasks:
            name, kind = _field(spec, "name"), _kind_of(spec)
            values = raw[name]
            group = self.group_for(spec)
            if group not in crops:
                crops[group] = self.crop_boxes(geometry["face_boxes"], geometry["whole_image"], group)
            group_crops = crops[group].to(values.device)
            decode = find_decoding(kind.decoding)
            if kind.json_form == "label_map":
                warp = self.parsing_warp_factor if group == "parsing" else 0.0
                maps = self.parsing_label_maps(values, group_crops, geometry["image_sizes"], warp, decode)
                decoded[name] = label_map_runs(maps) if parsing_format == "runs" else maps
            elif kind.json_form == "points":  # decoded in crop coordinates normalised to [0, 1]
                decoded[name] = self.to_image_pixels(decode(values), group_crops)
            else:
                decoded[name] = decode(values)
        return decoded

    @staticmethod
    def to_image_pixels(points: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """Points `(F, N, 2)` in crop coordinates normalised to [0, 1] (as `landmark_points` decodes them) and their
        crops `(F, 3)` (left, top, side) -> (x, y) in original-image pixels, pixel centres at integer coordinates."""
        crops = crops.to(points)
        return normalized_to_pixels(points, crops[:, None, 2:], crops[:, None, :2])

    @staticmethod
    def parsing_label_maps(
        logits: torch.Tensor,
        crops: torch.Tensor,
        image_sizes: torch.Tensor | Sequence[Sequence[int]],
        warp_factor: float = 0.0,
        decode: Callable[[torch.Tensor], torch.Tensor] = parsing_labels,
    ) -> list[torch.Tensor]:
        """Raw parsing logits `(F, C, h, w)`, crops `(F, 3)` and each face's image size `(F, 2)` (height, width)
        -> per face an `(height, width)` uint8 label map of its image, on the logits' device. Each image pixel
        reads the logits bilinearly where its crop saw it (through `tanh_warp` with a `warp_factor`), then
        `decode` (`parsing_labels`) takes the arg-max; without a warp only the crop's part of the image is computed, the
        rest is background. The same sampling as upsampling the logits to the crop's side with `F.interpolate`
        (clamped at the border), without materialising the crop beyond the image; rows in bands to bound memory."""
        device, count = logits.device, len(logits)
        crops = torch.as_tensor(crops, dtype=torch.float32).to(device)
        sizes = torch.as_tensor(image_sizes).tolist()
        # Each face's region of its image that reads its logits: the crop's part of the image, or all of it.
        regions = []
        for (left, top, side), (height, width) in zip(crops.tolist(), sizes, strict=True):
            if warp_factor > 0:
                regions.append((0, 0, int(width), int(height)))
            else:
                x0, y0 = max(int(left), 0), max(int(top), 0)
                x1, y1 = min(int(left + side), int(width)), min(int(top + side), int(height))
                regions.append((x0, y0, max(x0, x1), max(y0, y1)))
        label_maps = [torch.zeros(int(h), int(w), dtype=torch.uint8, device=device) for h, w in sizes]
        if not count:
            return label_maps
        for group in _similar_regions(regions):  # faces at once, on regions padded to the group's largest
            index = torch.tensor(group, device=device)
            labels = _sample_labels(logits[index], crops[index], [regions[i] for i in group], warp_factor, decode)
            for face, face_labels in zip(group, labels, strict=True):
                x0, y0, x1, y1 = regions[face]
                label_maps[face][y0:y1, x0:x1] = face_labels[: y1 - y0, : x1 - x0]
        return label_maps


def _similar_regions(regions: Sequence[tuple[int, int, int, int]]) -> list[list[int]]:
    """Faces with a non-empty region, in groups whose padding to the group's largest region costs at most twice
    their own pixels: the largest first, then the next while that holds."""
    areas = {index: (x1 - x0) * (y1 - y0) for index, (x0, y0, x1, y1) in enumerate(regions)}
    order = sorted((index for index, area in areas.items() if area > 0), key=lambda index: -areas[index])
    groups: list[list[int]] = []
    for index in order:
        if groups:
            group = groups[-1]
            width = max(regions[i][2] - regions[i][0] for i in (*group, index))
            height = max(regions[i][3] - regions[i][1] for i in (*group, index))
            if (len(group) + 1) * width * height <= 2 * sum(areas[i] for i in (*group, index)):
                group.append(index)
                continue
        groups.append([index])
    return groups


def _sample_labels(
    logits: torch.Tensor,
    crops: torch.Tensor,
    regions: Sequence[tuple[int, int, int, int]],
    warp_factor: float,
    decode: Callable[[torch.Tensor], torch.Tensor] = parsing_labels,
) -> torch.Tensor:
    """Faces' logits `(F, C, h, w)`, crops `(F, 3)` and image regions (x0, y0, x1, y1) -> `(F, Rh, Rw)` uint8
    labels of each region from its top-left corner (Rh, Rw: the largest region's), in bands of rows. Each pixel
    reads the logits bilinearly where its crop saw it (through `tanh_warp` with a `warp_factor`); `decode` labels
    the sampled logits (the arg-max over classes)."""
    device, count = logits.device, len(logits)
    region_width = max(x1 - x0 for x0, _, x1, _ in regions)
    region_height = max(y1 - y0 for _, y0, _, y1 in regions)
    origins = torch.tensor([region[:2] for region in regions], dtype=torch.float32, device=device)
    map_height, map_width = logits.shape[-2:]
    left, top, side = (crops[:, index : index + 1] for index in range(3))
    offsets_x = torch.arange(region_width, dtype=torch.float32, device=device)
    columns = _crop_grid(origins[:, :1] + offsets_x, left, side, map_width, warp_factor)  # (F, Rw)
    # "border" reproduces `F.interpolate`'s clamping at the crop's edge; beyond a warped crop's border the logits
    # are zero, as the official unwarping leaves them.
    padding = "zeros" if warp_factor > 0 else "border"
    floating = logits.float()
    band = max(1, PARSING_BAND_ELEMENTS // max(1, region_width * logits.shape[1] * count))
    labels = torch.empty(count, region_height, region_width, dtype=torch.uint8, device=device)
    for start in range(0, region_height, band):
        stop = min(start + band, region_height)
        offsets_y = torch.arange(start, stop, dtype=torch.float32, device=device)
        rows = _crop_grid(origins[:, 1:] + offsets_y, top, side, map_height, warp_factor)  # (F, band)
        grid = torch.stack(torch.broadcast_tensors(columns[:, None, :], rows[:, :, None]), dim=-1)
        sampled = F.grid_sample(floating, grid, mode="bilinear", padding_mode=padding, align_corners=False)
        labels[:, start:stop] = decode(sampled).to(torch.uint8)
    return labels


def _crop_grid(pixels: torch.Tensor, origin: float, side: float, extent: int, warp_factor: float) -> torch.Tensor:
    # image pixel centres -> crop coordinates in pixels of an `extent`-wide map -> tanh-warped -> grid_sample's [-1, 1]
    inside = (pixels + 0.5 - origin) / side * extent
    return tanh_warp(inside, extent, warp_factor) / extent * 2 - 1


def _image_extents(images: Sequence[torch.Tensor], image_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Each face's image height and width `(F,)`, on the faces' device.
    sizes = torch.tensor([list(image.shape[-2:]) for image in images], device=image_index.device)
    return sizes[image_index, 0], sizes[image_index, 1]


def _kind_of(spec: Any) -> Any:
    """A task's entry in the model's table of task kinds (`task_kinds.TASK_KINDS`), read through its `TaskSpec`:
    this folder travels apart from the model's, so the spec carries the table here."""
    kind = getattr(spec, "kind_info", None)
    if kind is None:
        raise TypeError(f"Task specs must be the model's TaskSpecs (model.resolve_tasks(names)), got {spec!r}.")
    return kind


def _field(spec: Any, name: str) -> Any:
    # Task specs arrive as `TaskSpec`s (`model.resolve_tasks`) or as their dicts (`model.config.tasks`).
    return spec[name] if isinstance(spec, Mapping) else getattr(spec, name)


FaceptorImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["FaceptorImageProcessor"]
