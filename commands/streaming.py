"""Streaming stages of `faceptor predict`: images decoded ahead on worker threads, results written behind on a
writer thread, both through bounded buffers and in input order, so memory stays flat however many images."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..processing.image_loading import MAX_DECODED_PIXELS, MIN_IMAGE_SIDE, ImageLoadError, load_image

JPEG_SUFFIXES = {".jpg", ".jpeg"}


@dataclass
class Item:
    """One input on its way through the stages: its place in the input, its path, its decoded pixels (None
    once they are no longer needed) and, after decoding failed or the model ran, its result dict."""

    index: int
    path: str
    image: np.ndarray | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)
    detections: list | None = field(default=None, repr=False)  # found on the decoding thread, when asked


def decode_on_device(path: str, device: str) -> np.ndarray:
    """A JPEG decoded by nvJPEG on `device` (EXIF turned, any mode to RGB), as an (H, W, 3) uint8 host array.
    Anything else, or anything nvJPEG refuses, goes through `load_image`, whose typed errors name the file."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    if os.path.splitext(path)[1].lower() not in JPEG_SUFFIXES:
        return load_image(path)
    try:
        with Image.open(path) as header:  # header only: format and size, for the decompression-bomb limit
            if header.format != "JPEG" or header.width * header.height > MAX_DECODED_PIXELS:
                return load_image(path)
        pixels = decode_jpeg(read_file(path), mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except (OSError, RuntimeError, ValueError, SyntaxError):
        return load_image(path)  # the PIL path says why, in the same words as for any other input
    array = pixels.permute(1, 2, 0).contiguous().cpu().numpy()
    if min(array.shape[:2]) < MIN_IMAGE_SIDE:
        return load_image(path)
    return array


def make_decoder(decode: str, device: str | None) -> Callable[[str], np.ndarray]:
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


def _decode_item(
    index: int, path: str, decoder: Callable[[str], np.ndarray], detect: Callable[[np.ndarray], list] | None
) -> Item:
    try:
        item = Item(index, path, image=decoder(path))
    except ImageLoadError as error:
        return Item(index, path, result={"source": path, "error": str(error)})
    except Exception as error:  # anything else on this file's bytes (out of memory, a decoder's bug) is its error
        message = f"{path}: cannot decode ({type(error).__name__}: {str(error).strip()[:200]})"
        return Item(index, path, result={"source": path, "error": message})
    if detect is not None:
        try:
            item.detections = detect(item.image)
        except Exception:  # the pipeline detects again and reports the failure as this image's error
            item.detections = None
    return item


def decode_ahead(
    inputs: Sequence[tuple[int, str]],
    decoder: Callable[[str], np.ndarray],
    workers: int,
    in_flight: int,
    detect: Callable[[np.ndarray], list] | None = None,
) -> Iterator[Item]:
    """`Item`s of `inputs` ((index, path) pairs) in their order, decoded (and, with `detect`, their faces found)
    by `workers` threads at most `in_flight` images ahead of the consumer (decoding and the detector release the
    GIL: the threads overlap with inference)."""
    pending: deque[Future] = deque()
    upcoming = iter(inputs)

    def submit_next() -> None:
        if (following := next(upcoming, None)) is not None:
            pending.append(pool.submit(_decode_item, *following, decoder, detect))

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="faceptor-decode") as pool:
        try:
            for _ in range(max(1, in_flight)):
                submit_next()
            while pending:
                item = pending.popleft().result()
                submit_next()  # keep the window full while the consumer works on this item
                yield item
        finally:
            for future in pending:  # the consumer stopped early (error, interrupt): drop the queued decodes
                future.cancel()


class OrderedWriter:
    """Runs `write(item)` on a thread of its own for items put in input order, through a queue of at most
    `capacity` items; an error in the writer is raised again in the caller's `put` or `close`."""

    _DONE = object()

    def __init__(self, write: Callable[[Item], None], capacity: int):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, capacity))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="faceptor-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._DONE:
            if self._error is None:  # after an error, keep draining so that `put` never blocks for ever
                try:
                    self._write(item)
                except BaseException as error:  # handed to the main thread, which reports it
                    self._error = error

    def put(self, item: Item) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)  # wakes up to notice a failed writer instead of blocking
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Waits until everything put is written; raises the writer's error if it had one."""
        self._queue.put(self._DONE)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


class BoundedPictureSaver:
    """Draws and saves pictures on `workers` threads, at most `capacity` waiting; each task's return value is
    handed to `done` (on the thread calling `submit` or `close`, in submission order); `close` waits for them all
    and raises the first error."""

    def __init__(self, workers: int, capacity: int, done: Callable[[Any], None] | None = None):
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="faceptor-picture")
        self._pending: deque[Future] = deque()
        self._capacity = max(1, capacity)
        self._done = done or (lambda value: None)

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        while len(self._pending) >= self._capacity:
            self._done(self._pending.popleft().result())  # back-pressure, and an error surfaces here
        self._pending.append(self._pool.submit(function, *args))

    def close(self) -> None:
        try:
            while self._pending:
                self._done(self._pending.popleft().result())
        finally:
            self._pool.shutdown(cancel_futures=True)


class Throughput:
    """Images and faces done since the start, for the progress bar's postfix."""

    def __init__(self):
        self.start, self.images, self.faces = time.perf_counter(), 0, 0

    def add(self, result: dict[str, Any]) -> None:
        self.images += 1
        self.faces += len(result.get("faces", ()))

    def faces_per_second(self) -> float:
        return self.faces / max(time.perf_counter() - self.start, 1e-9)
