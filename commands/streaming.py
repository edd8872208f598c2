"""The writing end of `faceptor predict`, behind the streaming engine (`faceptor.processing.streaming`): results
written on a writer thread and pictures drawn on threads, through bounded buffers and in input order, so memory
stays flat however many images."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


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
    """Usable images and their faces since the start: the progress bar's rate and the closing line's counts."""

    def __init__(self):
        self.start, self.images, self.faces = time.perf_counter(), 0, 0

    def add(self, result: dict[str, Any]) -> None:
        self.images += 1
        self.faces += len(result.get("faces", ()))

    def faces_per_second(self) -> float:
        return self.faces / max(time.perf_counter() - self.start, 1e-9)
