"""The writing end of `faceptor predict`, behind the streaming engine (`faceptor.processing.streaming`): results
written on a writer thread and pictures drawn on threads, through bounded buffers and in input order, so memory
stays flat however many images; and the decoder that keeps JPEGs on the GPU (nvJPEG)."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..processing.image_loading import MIN_IMAGE_SIDE, load_image

JPEG_SUFFIXES = {".jpg", ".jpeg"}


def decode_on_device(path: str, device: str) -> np.ndarray | torch.Tensor:
    """A JPEG decoded by nvJPEG on `device` (EXIF turned, any mode to RGB), as a (3, H, W) uint8 tensor that stays
    there (the detector and the crops read it in place; no pixel crosses to the host before the results).
    Anything else, or anything nvJPEG refuses, goes through `load_image`, whose typed errors name the file."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    if os.path.splitext(path)[1].lower() not in JPEG_SUFFIXES:
        return load_image(path)
    try:
        with Image.open(path) as header:  # header only: format and size, for the decompression-bomb limit
            if header.format != "JPEG" or header.width * header.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
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


class OrderedWriter:
    """Runs `write(item)` on a thread of its own for items put in input order, through a queue of at most
    `capacity` items; an error in the writer is raised again in the caller's `put` or `close`."""

    _DONE = object()

    def __init__(self, write: Callable[[Any], None], capacity: int):
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

    def put(self, item: Any) -> None:
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
