"""`pipeline("face-perception")`: every task of a Faceptor model on photos, as plain JSON-ready dicts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

from .image_loading import ImageLoadError, describe_source, load_image
from .image_processing_faceptor import FaceptorImageProcessor
from .mask_encoding import encode_label_map

logger = logging.getLogger(__name__)

# The result key of each task kind; the first requested task of a kind fills it, later ones go to "more".
KIND_RESULT_KEY = {
    "landmarks": "landmarks",
    "parsing": "parsing",
    "age": "age",
    "classification": "expression",
    "multilabel": "attributes",
    "embedding": "embedding",
}


def _round(values: Any, digits: int = 4) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


class FacePerceptionPipeline(Pipeline):
    """Runs a Faceptor model on images: finds the faces (or takes given boxes, or the whole image),
    crops them per task category, decodes every requested task in one encoder pass per crop size, and
    returns per image `{"source", "image_size", "faces": [...]}` with, per face, `box`, `score`,
    `box_source` and one entry per task kind: `landmarks` [[x, y], ...] in image pixels, `parsing`
    (`labels` and a run-length `mask` of the image's size; decode with `decode_label_map`), `age` (years),
    `expression` {label: probability}, `attributes` {name: probability}, `embedding` (L2-normalised).

    Arguments per call: `boxes` (per image a list of [x0, y0, x1, y1], or None for "whole image is a
    face"), `tasks` (names; all by default), `detector` ("auto": the bundled detector when
    `faceptor[detect]` is installed, else the whole image; `None`: the whole image; or a callable taking
    an (H, W, 3) uint8 RGB array and returning boxes or objects with `.box`/`.score`), `batch_size`
    (faces per forward pass). A bad input in a list gives `{"source", "error"}` in its place; a single bad
    input raises `ImageLoadError`.
    """

    _load_processor = False
    _load_image_processor = None  # loaded when the folder has one; the defaults otherwise
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, detector: str | Callable | None = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if self.image_processor is None:
            self.image_processor = FaceptorImageProcessor()
        self.default_detector = detector
        self._detector_cache: dict[str, Callable | None] = {}

    def _sanitize_parameters(self, boxes=None, tasks=None, detector="unset", **kwargs):
        preprocess = {}
        if boxes is not None:
            preprocess["boxes"] = boxes
        if detector != "unset":
            preprocess["detector"] = detector
        forward = {"tasks": tasks} if tasks is not None else {}
        return preprocess, forward, {}

    # ------------------------------------------------------------------------------------------ tasks

    def task_specs(self, tasks: Sequence[str] | str | None) -> list[dict]:
        specs = {spec["name"]: spec for spec in self.model.config.tasks}
        if tasks is None:
            return list(specs.values())
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [name for name in names if name not in specs]
        if unknown or not names:
            raise ValueError(f"The model has no task {unknown}; its tasks are {list(specs)}.")
        return [specs[name] for name in dict.fromkeys(names)]

    # --------------------------------------------------------------------------------------- detection

    def resolve_detector(self, detector: str | Callable | None) -> tuple[Callable | None, str]:
        if detector is None or detector is False:
            return None, "whole_image"
        if callable(detector):
            return detector, "custom_detector"
        if detector != "auto":
            raise ValueError(f"detector must be 'auto', None or a callable, got {detector!r}")
        if "auto" not in self._detector_cache:
            try:
                from .detection import DetectorUnavailable, load_default_detector

                self._detector_cache["auto"] = load_default_detector()
            except (ImportError, DetectorUnavailable) as error:
                logger.warning("No face detector (%s); each image is taken as one face.", error)
                self._detector_cache["auto"] = None
        found = self._detector_cache["auto"]
        return found, "detector" if found is not None else "whole_image"

    @staticmethod
    def _detections(detector: Callable, image: np.ndarray) -> list[tuple[list[float], float | None]]:
        found = []
        for face in detector(image):
            box = getattr(face, "box", face)
            score = getattr(face, "score", None)
            found.append(([float(value) for value in box], None if score is None else float(score)))
        return found

    # ------------------------------------------------------------------------------------- the stages

    def preprocess(self, image, boxes=None, detector="unset") -> dict:
        array = load_image(image)
        height, width = array.shape[:2]
        if boxes is not None:
            if len(boxes) and all(isinstance(value, (int, float)) for value in boxes):
                boxes = [boxes]  # one flat [x0, y0, x1, y1] box
            faces, box_source = [([float(v) for v in box], None) for box in boxes], "given"
        else:
            found, box_source = self.resolve_detector(self.default_detector if detector == "unset" else detector)
            faces = self._detections(found, array) if found is not None else [([0.0, 0.0, width, height], None)]
        groups = ("dense", "face", "parsing") if self.image_processor.parsing_warp_factor > 0 else ("dense", "face")
        crops = self.image_processor(
            [array],
            boxes=[None if box_source == "whole_image" else [box for box, _ in faces]],
            groups=groups,
            return_tensors="pt",
        )
        return {
            "source": describe_source(image),
            "image_size": [width, height],
            "faces": faces if faces else [],
            "box_source": box_source,
            "crops": crops,
        }

    def _forward(self, model_inputs: dict, tasks: Sequence[str] | None = None) -> dict:
        crops = model_inputs["crops"]
        specs = self.task_specs(tasks)
        outputs = {}
        for group in ("dense", "face", "parsing"):
            group_tasks = [
                spec["name"]
                for spec in specs
                if self.image_processor.group_for(spec["kind"], spec["category"]) == group
            ]
            pixels = crops.get(f"pixel_values_{group}", [])
            if group_tasks and len(pixels):
                dtype = next(self.model.parameters()).dtype
                with torch.no_grad():
                    result = self.model(pixels.to(self.device, dtype), tasks=group_tasks)
                outputs.update(result.task_outputs)
        return {**model_inputs, "outputs": outputs, "specs": specs}

    def postprocess(self, model_outputs: dict) -> dict:
        processor, crops, outputs = self.image_processor, model_outputs["crops"], model_outputs["outputs"]
        count = len(crops["face_boxes"])
        faces = [
            {"box": _round(box, 2), "score": None if score is None else round(score, 4)}
            for box, score in model_outputs["faces"][:count]
        ]
        for face in faces:
            face["box_source"] = model_outputs["box_source"]
        for spec in model_outputs["specs"] if faces else []:
            raw, kind, labels = outputs[spec["name"]], spec["kind"], spec.get("labels")
            if kind == "landmarks":
                values = [_round(points, 2) for points in processor.post_process_landmarks(raw, crops["crops_dense"])]
            elif kind == "parsing":
                sizes = crops["image_sizes"][crops["image_index"]]
                names = labels or [f"class_{index}" for index in range(raw.shape[1])]
                group = processor.group_for(kind, spec["category"])
                label_maps = processor.post_process_parsing(
                    raw, crops[f"crops_{group}"], sizes, processor.parsing_warp_factor if group == "parsing" else 0.0
                )
                values = [{"labels": list(names), "mask": encode_label_map(label_map)} for label_map in label_maps]
            elif kind == "age":
                values = [round(float(age), 2) for age in processor.post_process_age(raw)]
            elif kind == "classification":
                names = labels or [f"class_{index}" for index in range(raw.shape[1])]
                values = [
                    {k: round(v, 4) for k, v in row.items()}
                    for row in processor.post_process_classification(raw, names)
                ]
            elif kind == "multilabel":
                names = labels or [f"attribute_{index}" for index in range(raw.shape[1])]
                values = [
                    {k: round(v, 4) for k, v in row.items()} for row in processor.post_process_multilabel(raw, names)
                ]
            else:
                values = [_round(vector, 5) for vector in processor.post_process_embedding(raw)]
            key = KIND_RESULT_KEY[kind]
            for face, value in zip(faces, values, strict=True):
                if key not in face:
                    face[key] = value
                    face.setdefault("task_of", {})[key] = spec["name"]
                else:
                    face.setdefault("more", {})[spec["name"]] = value
        result = {"source": model_outputs["source"], "image_size": model_outputs["image_size"], "faces": faces}
        if not faces:
            result["warning"] = "no face found"
        return result

    # ------------------------------------------------------------------------------------------ calls

    def __call__(self, inputs, boxes=None, tasks=None, detector="unset", batch_size: int | None = None, **kwargs):
        """One input -> its result dict; a list -> a list of result dicts in the same order, where a bad
        input gives `{"source", "error"}` and the others are unaffected."""
        if kwargs:
            raise TypeError(f"Unexpected arguments {sorted(kwargs)}.")
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        per_image_boxes = [boxes] if single else (list(boxes) if boxes is not None else [None] * len(items))
        if len(per_image_boxes) != len(items):
            raise ValueError(f"Got boxes for {len(per_image_boxes)} images but {len(items)} images.")
        self.task_specs(tasks)  # a wrong task name is the caller's error, not one input's
        results = []
        for item, item_boxes in zip(items, per_image_boxes, strict=True):
            try:
                model_inputs = self.preprocess(item, boxes=item_boxes, detector=detector)
            except ImageLoadError as error:
                if single:
                    raise
                results.append({"source": describe_source(item), "error": str(error)})
                continue
            results.append(model_inputs)
        self._forward_in_batches([r for r in results if "crops" in r], tasks, batch_size or 8)
        results = [self.postprocess(r) if "crops" in r else r for r in results]
        return results[0] if single else results

    def _forward_in_batches(self, prepared: list[dict], tasks, batch_size: int) -> None:
        """Runs the faces of all prepared images through the model `batch_size` faces at a time and stores
        each image's raw outputs in its dict."""
        if not prepared:
            return
        keys = [key for key in prepared[0]["crops"] if key.startswith("pixel_values_")]
        counts = [len(item["crops"]["face_boxes"]) for item in prepared]
        merged = {key: torch.cat([item["crops"][key] for item in prepared]) for key in keys}
        chunks = []
        for start in range(0, sum(counts), batch_size):
            chunk = {"crops": {key: value[start : start + batch_size] for key, value in merged.items()}}
            chunks.append(self._forward(chunk, tasks=tasks))
        names = list(chunks[0]["outputs"]) if chunks else []
        joined = {name: torch.cat([chunk["outputs"][name] for chunk in chunks]) for name in names}
        offset = 0
        for item, count in zip(prepared, counts, strict=True):
            item["outputs"] = {name: value[offset : offset + count] for name, value in joined.items()}
            item["specs"] = self.task_specs(tasks)
            offset += count


__all__ = ["FacePerceptionPipeline"]
