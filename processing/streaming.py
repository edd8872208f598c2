"""The one streaming engine behind `pipeline("face-perception")(list or generator)`, `faceptor predict` (photos,
folders, sharded), videos and the browser demo.

Inputs are decoded ahead on worker threads, in order and at most `images_in_flight` at a time (memory stays flat
over any number of images); their faces are found by the detector where it is fastest (on the decoding threads
beside the model for a CPU detector, which releases the GIL; in one batched call per chunk of images for a
detector on an accelerator, fed by pixels already there); then the faces of a chunk of images go through the
pipeline together (`batch_size` faces per forward pass, from any images), and the items come out in input order
with their result set. A bad input is its own error record, never the end of the run.

This file travels to the Hub with the pipeline, so it imports only the standard library, numpy and torch at module
level (PIL and torchvision inside the nvJPEG decoder).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .image_loading import MAX_DECODED_PIXELS, MIN_IMAGE_SIDE, ImageLoadError, describe_source, load_image

JPEG_SUFFIXES = {".jpg", ".jpeg"}
DEFAULT_IMAGES_IN_FLIGHT = 16  # decoded images held ahead of the model (bounds memory)
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # decoding (and CPU detection) threads


@dataclass
class StreamItem:
    """One input on its way through the engine: its place in the input, what was given, the name results use,
    its decoded pixels ((3, H, W) uint8, on the CPU or already on the device; None once no longer needed), its
    given boxes, the faces the detector found beforehand and, once done (or once decoding failed), its result."""

    index: int
    input: Any
    source: str = ""
    pixels: torch.Tensor | None = field(default=None, repr=False)
    boxes: Any = field(default=None, repr=False)
    detections: list | None = field(default=None, repr=False)
    result: dict[str, Any] | None = field(default=None, repr=False)

    def image_array(self) -> np.ndarray:
        """The pixels as an (H, W, 3) uint8 array on the host (for pictures, after the results)."""
        return self.pixels.permute(1, 2, 0).cpu().numpy()


def as_pixels(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A decoder's output, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor on any device -> the tensor
    (a view of the array, no copy)."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.asarray(image)).permute(2, 0, 1)


def decode_on_device(path: str | os.PathLike | Any, device: str) -> np.ndarray | torch.Tensor:
    """A JPEG decoded by nvJPEG on `device` (EXIF turned, any mode to RGB), as a (3, H, W) uint8 tensor that stays
    there (the detector and the crops read it in place; no pixel crosses to the host before the results).
    Anything else, or anything nvJPEG refuses, goes through `load_image`, whose typed errors name the file."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    if not isinstance(path, (str, os.PathLike)) or os.path.splitext(path)[1].lower() not in JPEG_SUFFIXES:
        return load_image(path)  # a PIL image, an array, another format: decoded as everywhere else
    try:
        with Image.open(path) as header:  # header only: format and size, for the decompression-bomb limit
            if header.format != "JPEG" or header.width * header.height > MAX_DECODED_PIXELS:
                return load_image(path)
        pixels = decode_jpeg(read_file(path), mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except (OSError, RuntimeError, ValueError, SyntaxError):
        return load_image(path)  # the PIL path says why, in the same words as for any other input
    if min(pixels.shape[-2:]) < MIN_IMAGE_SIDE:
        return load_image(path)
    return pixels


def make_decoder(decode: str, device: str | None) -> Callable[[str], np.ndarray | torch.Tensor]:
    """`decode` "pil": Pillow on the CPU (the reference); "device": nvJPEG on the CUDA `device` for JPEGs;
    "auto": "device" when `device` is CUDA and torchvision is installed, else "pil"."""
    on_cuda = device is not None and str(device).startswith("cuda")
    if decode == "device" and not on_cuda:
        raise ValueError("--decode device needs a CUDA --device")
    if decode == "auto":
        import importlib.util

        decode = "device" if on_cuda and importlib.util.find_spec("torchvision") is not None else "pil"
    if decode == "device":
        return lambda path: decode_on_device(path, str(device))
    return load_image


def _unpack(given: Any) -> tuple[Any, Any, str | None]:
    """A pipeline input -> (the image, its boxes, its name): a dict `{"image", "boxes"?, "source"?}` or the image."""
    if isinstance(given, dict) and "image" in given:
        return given["image"], given.get("boxes"), given.get("source")
    return given, None, None


def _decode(index: int, given: Any, decoder: Callable[[Any], Any] | None, detect: Callable | None) -> StreamItem:
    image, boxes, source = _unpack(given)
    item = StreamItem(index, given, source or describe_source(image), boxes=boxes)
    try:
        item.pixels = as_pixels((decoder or load_image)(image))
    except ImageLoadError as error:
        item.result = {"source": item.source, "error": str(error)}
        return item
    except Exception as error:  # anything else on this input's bytes (out of memory, a decoder's bug) is its error
        message = f"{item.source}: cannot decode ({type(error).__name__}: {str(error).strip()[:200]})"
        item.result = {"source": item.source, "error": message}
        return item
    if detect is not None and boxes is None:
        try:
            item.detections = detect([item.pixels])[0]
        except Exception:  # the pipeline detects again and reports the failure as this image's error
            item.detections = None
    return item


def decode_ahead(
    inputs: Iterable[Any],
    decoder: Callable[[Any], Any] | None = None,
    workers: int = DEFAULT_WORKERS,
    in_flight: int = DEFAULT_IMAGES_IN_FLIGHT,
    detect: Callable | None = None,
) -> Iterator[StreamItem]:
    """`StreamItem`s of `inputs` in their order, decoded (`decoder`, default `load_image`; it returns an (H, W, 3)
    uint8 array or a (3, H, W) uint8 tensor) and, with `detect` (images -> per image its faces), their faces found,
    by `workers` threads at most `in_flight` inputs ahead of the consumer."""
    pending: deque[Future] = deque()
    upcoming = enumerate(inputs)

    def submit_next(pool: ThreadPoolExecutor) -> None:
        following = next(upcoming, None)
        if following is not None:
            pending.append(pool.submit(_decode, *following, decoder, detect))

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="faceptor-decode") as pool:
        try:
            for _ in range(max(1, in_flight)):
                submit_next(pool)
            while pending:
                item = pending.popleft().result()
                submit_next(pool)  # keep the window full while the consumer works on this item
                yield item
        finally:
            for future in pending:  # the consumer stopped early (error, interrupt): drop the queued decodes
                future.cancel()


def detects_on_device(detector: Any) -> bool:
    """Whether `detector` runs batched on an accelerator (then the engine calls it once per chunk of images, on
    pixels already there); otherwise it runs per image on the decoding threads."""
    device = getattr(detector, "device", None)
    return hasattr(detector, "detect_batch") and device is not None and torch.device(device).type != "cpu"


def stream_faces(
    face_pipeline: Any,
    inputs: Iterable[Any],
    *,
    tasks: Any = None,
    detector: Any = "auto",
    batch_size: int = 8,
    images_in_flight: int = DEFAULT_IMAGES_IN_FLIGHT,
    workers: int = DEFAULT_WORKERS,
    decoder: Callable[[Any], Any] | None = None,
) -> Iterator[StreamItem]:
    """Every input of `inputs` (paths, PIL images, arrays, `{"image", "boxes"}` dicts, or whatever `decoder`
    takes) through `face_pipeline`, as `StreamItem`s in input order with `result` set. `batch_size` faces per
    forward pass, as many images per pipeline call; `detector` as the pipeline's (None: the whole image)."""
    found, box_source = face_pipeline.resolve_detector(detector) if detector is not None else (None, "whole_image")
    on_device = found is not None and detects_on_device(found)
    on_threads = None if found is None or on_device else (lambda pixels: face_pipeline.detect(found, pixels))
    per_call = max(1, min(batch_size, images_in_flight))

    def run(chunk: list[StreamItem]) -> list[StreamItem]:
        good = [item for item in chunk if item.result is None]
        unplaced = [item for item in good if item.boxes is None and item.detections is None]
        if on_device and unplaced:
            try:  # the whole chunk in one pass of the cascade, on the pixels where they already are
                found_faces = face_pipeline.detect(found, [item.pixels for item in unplaced])
                for item, faces in zip(unplaced, found_faces, strict=True):
                    item.detections = faces
            except Exception:  # out of memory, say: the pipeline detects image by image and records who failed
                pass
        if good:
            prepared = [
                {
                    "pixels": item.pixels,
                    "boxes": item.boxes,
                    "detections": item.detections,
                    "box_source": box_source,
                    "source": item.source,
                }
                for item in good
            ]
            results = face_pipeline.run_images(prepared, tasks=tasks, detector=detector, batch_size=batch_size)
            for item, result in zip(good, results, strict=True):
                item.result = result
        return chunk

    chunk: list[StreamItem] = []
    for item in decode_ahead(inputs, decoder, workers, images_in_flight, on_threads):
        chunk.append(item)
        if len(chunk) == per_call:
            yield from run(chunk)
            chunk = []
    if chunk:
        yield from run(chunk)


__all__ = [
    "StreamItem",
    "as_pixels",
    "decode_ahead",
    "decode_on_device",
    "detects_on_device",
    "make_decoder",
    "stream_faces",
]
