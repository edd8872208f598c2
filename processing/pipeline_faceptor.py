"""`pipeline("face-perception")`: every task of a Faceptor model on photos, as plain JSON-ready dicts.

A `ChunkPipeline`, as transformers' mask-generation and zero-shot object detection pipelines: `preprocess` loads
one image, finds its faces and yields one item per face; the base class batches `batch_size` faces of many images
into one `_forward`, which crops them on the model's device, runs the model once per crop size and decodes there
(`FaceptorImageProcessor.post_process`), so only per-face results cross to the CPU; `postprocess` gathers an
image's faces into its result dict.
"""

from __future__ import annotations

import importlib
import logging
import os
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

from .image_loading import ImageLoadError, describe_source, load_image
from .image_processing_faceptor import FaceptorImageProcessor
from .mask_encoding import runs_to_json
from .streaming import DEFAULT_IMAGES_IN_FLIGHT, DEFAULT_WORKERS, make_decoder, stream_faces

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8  # faces per forward pass
_UNSET = "unset"


def _video_results(face_pipeline: Any, path: Any, options: dict) -> Any:
    """The per-frame results of a video path through the installed package's `faceptor.video`, found when first
    used; None when `path` is no video, or as remote code without the package (which reads no videos)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    package = (__package__ or "").rpartition(".")[0]  # "faceptor" when installed
    try:  # by name: this file travels as remote code, the video tools do not
        reading = importlib.import_module(f"{package}.video.reading")
    except ImportError:
        return None
    if not reading.is_video_path(path):
        return None
    return importlib.import_module(f"{package}.video.perception").iterate_video_results(face_pipeline, path, **options)


def _image_error(source: str, stage: str, error: BaseException) -> str:
    """One line for a failure on one image: where it failed and the error's first line."""
    lines = str(error).strip().splitlines()
    return f"{source}: {stage} ({type(error).__name__}: {lines[0][:200] if lines else 'no message'})"


def _round(values: Any, digits: int = 4) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _names(spec: Any, count: int) -> list[str]:
    # a task's label names, else `<prefix>_<index>` with its kind's prefix
    return list(spec.labels or [f"{spec.kind_info.label_prefix}_{index}" for index in range(count)])


def _label_map_json(spec: Any, value: Any) -> dict:
    runs, size = value
    return {"labels": _names(spec, spec.num_queries), "mask": runs_to_json(runs, size)}


def _named_values_json(spec: Any, value: Any) -> dict:
    return {name: round(number, 4) for name, number in zip(_names(spec, len(value)), value, strict=True)}


# One face's decoded CPU value -> its JSON-ready value, per JSON form of a task kind (`TaskKind.json_form`).
JSON_FORMATTERS: dict[str, Callable[[Any, Any], Any]] = {
    "points": lambda spec, value: _round(value, 2),
    "label_map": _label_map_json,
    "number": lambda spec, value: round(float(value), 2),
    "named_values": _named_values_json,
    "vector": lambda spec, value: _round(value, 5),
}


@dataclass(eq=False)
class _Image:
    """An image shared by the items of its faces. Not a tensor on purpose: the base class moves tensors to the
    device per item, which would copy the image once per face; `_forward` moves each image once."""

    pixels: torch.Tensor  # (3, H, W) uint8


class FacePerceptionPipeline(ChunkPipeline):
    """Runs a Faceptor model on images: finds the faces (or takes given boxes, or the whole image),
    crops them per task category, decodes every requested task in one encoder pass per crop size, and
    returns per image `{"source", "image_size", "faces": [...]}` with, per face, `box`, `score`,
    `box_source` and one entry per task kind: `landmarks` [[x, y], ...] in image pixels, `parsing`
    (`labels` and a run-length `mask` of the image's size; decode with `decode_label_map`), `age` (years),
    `expression` {label: probability}, `attributes` {name: probability}, `embedding` (L2-normalised).

    Arguments per call: `boxes` (per image a list of [x0, y0, x1, y1], or None for "whole image is a
    face"), `tasks` (names; all by default), `detector` ("auto": the bundled MTCNN when `faceptor[detect]`
    is installed, else the whole image; `None`: the whole image; or a callable taking an (H, W, 3) uint8 RGB
    array and returning boxes or objects with `.box`/`.score`), `batch_size` (faces per forward pass, from any
    images; 8 by default), `num_workers` (threads decoding a list's or generator's images, and detecting on the
    CPU). A bad input in a list (or a generator, streamed) gives `{"source", "error"}` in its place; a single bad
    input raises `ImageLoadError`.

    Where "auto" detects: on the model's device. With the model on a GPU (any non-CPU device) the cascade runs
    there in torch, batched over the images in flight and fed by their pixels already on the device; on the CPU
    it runs through onnxruntime (faster there) on the decoding threads, beside the model. `detector_device`
    (at construction) puts it elsewhere. Lists and generators go through the streaming engine
    (`processing/streaming.py`), the same as `faceptor predict`, videos and the demo; with the model on a GPU
    their JPEG files are decoded there (nvJPEG) and stay there.
    """

    _load_processor = False
    _load_image_processor = None  # loaded when the folder has one; the defaults otherwise
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(
        self,
        *args,
        detector: str | Callable | None = "auto",
        detector_device: str | torch.device | None = None,
        allow_missing_weights: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # A pipeline gives answers: a model not wholly loaded (or with NaN/inf weights) would give wrong ones silently.
        refuse = getattr(self.model, "refuse_if_incomplete", None)
        if refuse is not None:
            refuse(allow_missing_weights)
        if self.image_processor is None:
            self.image_processor = FaceptorImageProcessor()
        if self._batch_size is None:
            self._batch_size = DEFAULT_BATCH_SIZE
        self.default_detector = detector
        self.detector_device = None if detector_device is None else torch.device(detector_device)
        self._detector_cache: dict[str, Callable | None] = {}

    def _sanitize_parameters(self, tasks=None, detector=_UNSET, boxes=None, on_error=None, **unexpected):
        if unexpected:
            raise TypeError(f"Unexpected arguments {sorted(unexpected)}.")
        # Resolved once per call, by the model: a wrong name is the caller's error, raised before any image is read.
        specs = self.model.resolve_tasks(tasks)
        preprocess = {}
        if detector != _UNSET:
            preprocess["detector"] = detector
        if boxes is not None:
            preprocess["boxes"] = boxes
        forward = {"specs": specs}
        if on_error is not None:
            preprocess["on_error"] = forward["on_error"] = on_error
        return preprocess, forward, {"specs": specs}

    def __call__(self, inputs, boxes=None, **kwargs):
        """One input -> its result dict; a list -> a list of result dicts in the same order, where a bad input
        gives `{"source", "error"}` and the others are unaffected; a generator -> an iterator of result dicts; a video
        path -> a generator of per-frame result dicts (`faceptor.video.perception.perceive_video`: `every`, `fps`,
        `smooth`; each face with a `track_id`)."""
        frames = _video_results(self, inputs, kwargs)
        if frames is not None:
            if boxes is not None:
                raise ValueError("boxes are per image; a video's faces are found in each frame")
            return frames
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, torch.utils.data.Dataset):
            inputs = (inputs[index] for index in range(len(inputs)))
        streamed = isinstance(inputs, types.GeneratorType)
        if not isinstance(inputs, list) and not streamed:
            if boxes is not None:
                inputs = {"image": inputs, "boxes": boxes}
            return super().__call__(inputs, **kwargs)
        # Several images: the streaming engine (decoding ahead, detection where it is fastest, faces of many images
        # per forward pass), each image travelling with its own boxes, a bad one recorded in its place.
        if boxes is not None:
            if not streamed and len(boxes) != len(inputs):
                raise ValueError(f"Got boxes for {len(boxes)} images but {len(inputs)} images.")
            inputs = ({"image": item, "boxes": item_boxes} for item, item_boxes in zip(inputs, boxes, strict=True))
        workers = kwargs.pop("num_workers", None) or DEFAULT_WORKERS
        batch_size = kwargs.pop("batch_size", None) or self._batch_size
        detector = kwargs.pop("detector", self.default_detector)
        self._sanitize_parameters(detector=detector, **kwargs)  # the caller's errors, before any image is read
        items = stream_faces(
            self,
            inputs,
            tasks=kwargs.get("tasks"),
            detector=detector,
            batch_size=batch_size,
            workers=workers,
            images_in_flight=max(DEFAULT_IMAGES_IN_FLIGHT, batch_size),
            decoder=make_decoder("auto", str(self.device)),  # JPEG files by nvJPEG when the model is on a GPU
        )
        results = (item.result for item in items)
        return results if streamed else list(results)

    def run_images(self, images: list[dict], **kwargs: Any) -> list[dict]:
        """The engine's chunk through the base class: decoded images (`{"pixels", "boxes", "detections",
        "source"}`) -> their result dicts in order, a failure recorded in its image's place."""
        if not images:
            return []
        return super().__call__(images, on_error="record", **kwargs)

    @classmethod
    def portable_registration(cls) -> dict:
        """The pipeline's registration as a saved config carries it: without `default`, which is this machine's
        path of the bundled demo model."""
        return {
            task: {key: value for key, value in info.items() if key != "default"}
            for task, info in cls._registered_impl.items()
        }

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """As `Pipeline.save_pretrained`, with the config's `custom_pipelines` entry from
        [`portable_registration`]."""
        self._registered_impl = self.portable_registration()
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            del self._registered_impl

    # --------------------------------------------------------------------------------------- detection

    def resolve_detector(self, detector: str | Callable | None) -> tuple[Callable | None, str]:
        if detector is None or detector is False:
            return None, "whole_image"
        if callable(detector):
            return detector, "custom_detector"
        if detector != "auto":
            raise ValueError(f"detector must be 'auto', None or a callable, got {detector!r}")
        device = self.detector_device or self.device
        key = f"auto:{device}"
        if key not in self._detector_cache:
            try:
                from .detection import DetectorUnavailable, load_default_detector

                # On the model's device: no pixel leaves it before the results (onnxruntime where that is the CPU).
                self._detector_cache[key] = load_default_detector(device=device)
            except (ImportError, DetectorUnavailable) as error:
                logger.warning("No face detector (%s); each image is taken as one face.", error)
                self._detector_cache[key] = None
        found = self._detector_cache[key]
        return found, "detector" if found is not None else "whole_image"

    @staticmethod
    def detect(
        detector: Callable, images: Sequence[np.ndarray | torch.Tensor]
    ) -> list[list[tuple[list[float], float | None]]]:
        """Per image its faces as (box, score): through the detector's `detect_batch(images)` when it has one
        (many images in one call, on its device, as (H, W, 3) views of the pixels where they are), else one
        `detector(image)` call per image on an (H, W, 3) uint8 array. `images`: (H, W, 3) uint8 arrays or
        (3, H, W) uint8 tensors (the engine's decoded pixels, on any device)."""
        batch = getattr(detector, "detect_batch", None)
        if batch is not None:
            found = batch([image.permute(1, 2, 0) if isinstance(image, torch.Tensor) else image for image in images])
        else:
            found = [
                detector(image.permute(1, 2, 0).cpu().numpy() if isinstance(image, torch.Tensor) else image)
                for image in images
            ]
        return [
            [
                (
                    [float(value) for value in getattr(face, "box", face)],
                    None if getattr(face, "score", None) is None else float(face.score),
                )
                for face in faces
            ]
            for faces in found
        ]

    # ------------------------------------------------------------------------------------- the stages

    def preprocess(self, inputs, boxes=None, detector=_UNSET, on_error: str = "raise"):
        """One image -> one item per face (the last marked `is_last`), or a single face-less item carrying the
        image's warning or error."""
        image, detections, source, pixels = inputs, None, None, None
        if isinstance(inputs, dict) and ("image" in inputs or "pixels" in inputs):
            # From the engine: `pixels` already decoded ((3, H, W) uint8, on any device); `detections`, the faces
            # `detect` found beforehand (by a detector of `box_source`'s kind); `source`, the name of the input,
            # for the result and its error lines.
            image, boxes, detections = inputs.get("image"), inputs.get("boxes", boxes), inputs.get("detections")
            source, pixels = inputs.get("source"), inputs.get("pixels")
        info = {"source": source or describe_source(image)}
        if pixels is None:
            try:
                pixels = torch.from_numpy(np.ascontiguousarray(load_image(image))).permute(2, 0, 1)
            except ImageLoadError as error:
                if on_error == "raise":
                    raise
                yield self._faceless_item({**info, "error": str(error)})
                return
        height, width = pixels.shape[-2:]
        info["image_size"] = [width, height]
        try:
            if boxes is not None:
                if len(boxes) and all(isinstance(value, (int, float)) for value in boxes):
                    boxes = [boxes]  # one flat [x0, y0, x1, y1] box
                faces, box_source = [([float(v) for v in box], None) for box in boxes], "given"
            elif detections is not None:
                faces, box_source = detections, inputs.get("box_source", "detector")
            else:
                found, box_source = self.resolve_detector(self.default_detector if detector == _UNSET else detector)
                faces = self.detect(found, [pixels])[0] if found is not None else [([0.0, 0.0, width, height], None)]
            whole = box_source == "whole_image"
            if faces:
                # Validated here, where a bad box is still this image's error.
                self.image_processor.face_geometry([(height, width)], [None if whole else [box for box, _ in faces]])
        except Exception as error:  # a detector failing on this image, or a box no crop can be made of
            if on_error == "raise":
                raise
            yield self._faceless_item({**info, "error": _image_error(info["source"], "cannot place its faces", error)})
            return
        info["box_source"] = box_source
        if not faces:
            yield self._faceless_item(info)
            return
        shared = _Image(pixels)
        for index, (box, score) in enumerate(faces):
            yield {
                "face_box": torch.tensor([box], dtype=torch.float64),
                "whole_image": torch.tensor([whole]),
                "image": shared,
                "score": score,
                "info": info,
                "is_last": index == len(faces) - 1,
            }

    @staticmethod
    def _faceless_item(info: dict) -> dict:
        # Every item has the same keys: the base class's collation refuses a batch whose items differ.
        return {
            "face_box": torch.zeros(1, 4, dtype=torch.float64),
            "whole_image": torch.zeros(1, dtype=torch.bool),
            "image": None,
            "score": None,
            "info": info,
            "is_last": True,
        }

    def _forward(self, model_inputs: dict, specs: Sequence[Any] = (), on_error: str = "raise") -> dict:
        # With batch_size 1 the base class hands over one item as yielded, otherwise lists of the items' values.
        single = not isinstance(model_inputs["is_last"], list)
        batch = {
            key: [value] if single and not isinstance(value, torch.Tensor) else value
            for key, value in model_inputs.items()
        }
        decoded = {spec.name: [None] * len(batch["is_last"]) for spec in specs}
        errors: list[str | None] = [None] * len(batch["is_last"])
        rows = [row for row, image in enumerate(batch["image"]) if image is not None]
        if rows:
            try:
                self._run_faces(batch, rows, specs, decoded)
            except Exception as error:  # out of memory, a crop that cannot be made: find the image, keep the others
                if on_error == "raise":
                    raise
                self._run_faces_image_by_image(batch, rows, specs, decoded, errors, error)
        outputs = {
            "is_last": batch["is_last"],
            "error": errors,
            "has_face": [image is not None for image in batch["image"]],
            "info": batch["info"],
            "score": batch["score"],
            "face_box": batch["face_box"].reshape(-1, 4).tolist(),
            **{f"task:{name}": values for name, values in decoded.items()},
        }
        return {key: value[0] for key, value in outputs.items()} if single else outputs

    def _run_faces_image_by_image(
        self,
        batch: dict,
        rows: list[int],
        specs: Sequence[Any],
        decoded: dict,
        errors: list[str | None],
        batch_error: Exception,
    ) -> None:
        """After the faces of `rows` failed together with `batch_error`: again one image at a time (unless they
        are one image's); the rows of an image that fails get its error."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # what the failed batch held, before the smaller tries
        by_image: dict[int, list[int]] = {}
        for row in rows:
            by_image.setdefault(id(batch["image"][row]), []).append(row)
        for image_rows in by_image.values():
            try:
                if len(by_image) == 1:
                    raise batch_error
                self._run_faces(batch, image_rows, specs, decoded)
            except Exception as error:
                message = _image_error(batch["info"][image_rows[0]]["source"], "cannot crop or run the model", error)
                for row in image_rows:
                    errors[row] = message

    def _run_faces(self, batch: dict, rows: list[int], specs: Sequence[Any], decoded: dict) -> None:
        """Crops, runs and decodes the faces of `rows` on the model's device; stores per face CPU results."""
        processor = self.image_processor
        images: dict[int, int] = {}  # id of a shared image -> its position in `pixels`
        pixels: list[torch.Tensor] = []
        image_index = []
        for row in rows:
            shared = batch["image"][row]
            if id(shared) not in images:
                images[id(shared)] = len(pixels)
                pixels.append(shared.pixels.to(self.device, non_blocking=True))  # each image crosses once
            image_index.append(images[id(shared)])
        image_index = torch.tensor(image_index)
        row_index = torch.tensor(rows)
        face_boxes = batch["face_box"][row_index].to(torch.float64)
        whole_image = batch["whole_image"][row_index]
        dtype = next(self.model.parameters()).dtype
        task_outputs = {}
        for group, group_specs in processor.groups_of(specs).items():
            crops = processor.crop_boxes(face_boxes, whole_image, group)
            crop_pixels = processor.crop_faces(pixels, crops, image_index, group)
            result = self.model(crop_pixels.to(dtype), tasks=[spec.name for spec in group_specs])
            task_outputs.update(result.task_outputs)
        # Each face as its own one-face "image" of post_process: the faces of a batch come from many images.
        sizes = [tuple(pixels[index].shape[-2:]) for index in image_index.tolist()]
        face_rows = [
            None if whole else [box] for box, whole in zip(face_boxes.tolist(), whole_image.tolist(), strict=True)
        ]
        results = processor.post_process(task_outputs, specs, sizes, face_rows, parsing_format="runs")
        for spec in specs:
            values = results[spec.name]
            if spec.kind_info.json_form == "label_map":
                # One transfer for all faces' runs, split on the CPU.
                lengths = [len(runs) for runs in values]
                per_face = torch.cat(values).cpu().split(lengths) if values else []
                per_face = [(runs, size) for runs, size in zip(per_face, sizes, strict=True)]
            else:
                # Plain lists, not tensors: the base class would add a batch dimension to each face's tensor.
                per_face = values.cpu().tolist()
            for row, value in zip(rows, per_face, strict=True):
                decoded[spec.name][row] = value

    def postprocess(self, model_outputs: list[dict], specs: Sequence[Any] = ()) -> dict:
        info = model_outputs[0]["info"]
        if "error" in info:
            return {"source": info["source"], "error": info["error"]}
        failed = next((output["error"] for output in model_outputs if output.get("error")), None)
        if failed is not None:
            return {"source": info["source"], "error": failed}
        faces = []
        for output in (output for output in model_outputs if output["has_face"]):
            score = output["score"]
            face = {
                "box": _round(output["face_box"], 2),
                "score": None if score is None else round(score, 4),
                "box_source": info["box_source"],
            }
            for spec in specs:
                value = self._format(spec, output["task:" + spec.name])
                key = spec.kind_info.result_key
                if key not in face:
                    face[key] = value
                    face.setdefault("task_of", {})[key] = spec.name
                else:
                    face.setdefault("more", {})[spec.name] = value
            faces.append(face)
        result = {"source": info["source"], "image_size": info["image_size"], "faces": faces}
        if not faces:
            result["warning"] = "no face found"
        return result

    @staticmethod
    def _format(spec: Any, value: Any) -> Any:
        """One face's decoded CPU value -> its JSON-ready value, in the JSON form of the task's kind."""
        return JSON_FORMATTERS[spec.kind_info.json_form](spec, value)


__all__ = ["FacePerceptionPipeline"]
