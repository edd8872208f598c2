"""Reading videos with PyAV: frames decoded on a background thread through a bounded queue, subsampled by frame
count or rate, with typed errors for files that hold no frames and for files that break part-way."""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from ..processing.image_loading import MAX_DECODED_PIXELS

# The containers PyAV (FFmpeg) commonly opens; `faceptor predict` treats files with these suffixes as videos.
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
DEFAULT_FRAMES_AHEAD = 8  # decoded frames held ahead of the consumer
_FALLBACK_FPS = Fraction(25)  # for a stream that states no rate


class VideoError(ValueError):
    """A video that cannot be used; the message names the file and the reason."""


class NoVideoFramesError(VideoError):
    """A file with no video stream (e.g. audio only) or whose video stream holds no frame."""


class VideoDecodeError(VideoError):
    """A video that breaks part-way (truncated or corrupt): raised after the frames that decoded were yielded;
    `frames_decoded` says how many."""

    def __init__(self, message: str, frames_decoded: int = 0):
        super().__init__(message)
        self.frames_decoded = frames_decoded


class Frame(NamedTuple):
    """One decoded frame: its index among all the video's frames, its time from the stream's start, its pixels."""

    index: int
    time_s: float
    image: np.ndarray  # (H, W, 3) uint8 RGB, turned upright as the file's display matrix says


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says: frame rate, upright frame size and frame count (0 when not stated)."""

    fps: Fraction
    width: int
    height: int
    frames: int
    duration_s: float | None


def is_video_path(path: str | os.PathLike) -> bool:
    return os.path.splitext(str(path))[1].lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("reading videos needs PyAV: pip install 'faceptor[video]'") from None
    return av


def _open(path: str | os.PathLike):
    """The opened container and its first video stream; typed errors for a missing, unreadable or frameless file."""
    av = _av()
    name = str(path)
    if not os.path.exists(name):
        raise VideoError(f"{name}: no such file")
    if os.path.isdir(name) or os.path.getsize(name) == 0:
        raise NoVideoFramesError(f"{name}: {'is a folder' if os.path.isdir(name) else 'empty file'}, not a video")
    try:
        container = av.open(name)
    except av.error.FFmpegError as error:
        reason = _reason(error)
        raise VideoDecodeError(f"{name}: cannot open as a video, truncated or not a video file ({reason})") from None
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["no"]
        container.close()
        raise NoVideoFramesError(f"{name}: no video stream (the file holds {' and '.join(kinds)} streams)")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > MAX_DECODED_PIXELS:  # the photos' budget: a frame is refused from the header, undecoded
        container.close()
        raise VideoError(
            f"{name}: refused, frames of {width}x{height} decode to {width * height / 1e6:.0f} "
            f"megapixels each, over the limit of {MAX_DECODED_PIXELS / 1e6:.0f}"
        )
    return container, stream


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)  # FFmpeg's words, without its errno and call name


def _fps(stream) -> Fraction:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    return Fraction(rate) if rate else _FALLBACK_FPS


def _upright(rotation: int, width: int, height: int) -> tuple[int, int]:
    return (height, width) if round(rotation / 90) % 2 else (width, height)


def video_info(path: str | os.PathLike) -> VideoInfo:
    """The header of `path`'s first video stream (no frame decoded but the first, for its rotation)."""
    container, stream = _open(path)
    with container:
        rotation = 0
        try:
            rotation = next(container.decode(stream)).rotation
        except (StopIteration, _av().error.FFmpegError):
            pass  # read_frames reports a frameless or broken file when it is read
        width, height = _upright(rotation, stream.codec_context.width, stream.codec_context.height)
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        return VideoInfo(_fps(stream), width, height, stream.frames or 0, duration)


def _kept(every: int | None, fps: float | None) -> Callable[[int, float], bool]:
    """The subsampling rule: keep every `every`-th frame from frame 0, or the first frame of each 1/`fps` second
    interval; all frames when neither is given."""
    if every is not None and fps is not None:
        raise ValueError("give `every` or `fps`, not both")
    if every is not None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        return lambda index, time_s: index % every == 0
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        last_interval = [-1]

        def first_of_its_interval(index: int, time_s: float) -> bool:
            interval = math.floor(time_s * fps + 1e-6)  # the tolerance keeps a frame at exactly k/fps in interval k
            if interval <= last_interval[0]:
                return False
            last_interval[0] = interval
            return True

        return first_of_its_interval
    return lambda index, time_s: True


def _decode(path: str, keep, put) -> None:
    """Decodes `path` on the calling thread, handing each kept `Frame` to `put`; raises a typed error at the end
    when the file broke part-way, after every frame that decoded was handed over."""
    av = _av()
    container, stream = _open(path)
    # Slice threads only: with frame threads a corrupt packet makes the decoder drop the frames it holds.
    stream.thread_type = "SLICE"
    start = stream.start_time or 0
    fallback_period = 1 / _fps(stream)
    decoded, first_error = 0, None
    with container:
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as error:  # the container itself is broken here: keep what decoded
                first_error = first_error or error
                packet = None
            try:
                frames = packet.decode() if packet is not None else stream.codec_context.decode(None)
            except av.error.FFmpegError as error:  # one corrupt packet: skip it, keep decoding
                first_error = first_error or error
                frames = []
            for frame in frames:
                time_s = float((frame.pts - start) * stream.time_base) if frame.pts is not None else None
                time_s = round(time_s if time_s is not None else float(decoded * fallback_period), 6)
                if frame.width * frame.height > MAX_DECODED_PIXELS:  # a stream that grows past its header's size
                    raise VideoDecodeError(
                        f"{path}: refused, frame {decoded} is {frame.width}x{frame.height}, over "
                        f"the limit of {MAX_DECODED_PIXELS / 1e6:.0f} megapixels",
                        decoded,
                    )
                if keep(decoded, time_s):
                    image = frame.to_ndarray(format="rgb24")
                    if frame.rotation:
                        image = np.ascontiguousarray(np.rot90(image, k=round(frame.rotation / 90) % 4))
                    put(Frame(decoded, time_s, image))
                decoded += 1
            if packet is None:
                break
    stated = stream.frames or 0
    if decoded == 0:
        if first_error is not None:
            raise VideoDecodeError(f"{path}: no frame could be decoded, corrupt video ({_reason(first_error)})", 0)
        raise NoVideoFramesError(f"{path}: the video stream holds no frames")
    if first_error is not None:
        raise VideoDecodeError(
            f"{path}: corrupt or truncated video, stopped after {decoded} decoded frames ({_reason(first_error)})",
            decoded,
        )
    if stated and decoded < stated:
        raise VideoDecodeError(f"{path}: truncated video, {decoded} of its {stated} frames decoded", decoded)


def read_frames(
    path: str | os.PathLike,
    every: int | None = None,
    fps: float | None = None,
    frames_ahead: int = DEFAULT_FRAMES_AHEAD,
) -> Iterator[Frame]:
    """The frames of `path`'s first video stream as `Frame(index, time_s, image)`, decoded on a background thread at
    most `frames_ahead` ahead. `every=N` keeps frames 0, N, 2N...; `fps=F` keeps about F frames a second (never more
    than the video has). A truncated or corrupt file yields the frames that decoded, then raises `VideoDecodeError`;
    an audio-only or frameless file raises `NoVideoFramesError`; anything else unreadable `VideoError`."""
    keep = _kept(every, fps)
    path = str(path)
    _open(path)[0].close()  # a missing, audio-only or unreadable file fails here, in the caller's thread
    frames: queue.Queue = queue.Queue(maxsize=max(1, frames_ahead))
    stop = threading.Event()
    done = object()

    def put(item) -> None:
        while not stop.is_set():
            try:
                frames.put(item, timeout=0.1)  # wakes up to notice a consumer that went away
                return
            except queue.Full:
                continue

    def run() -> None:
        try:
            _decode(path, keep, put)
        except BaseException as error:  # handed to the consumer, which raises it after the frames before it
            put(error)
        put(done)

    thread = threading.Thread(target=run, name="faceptor-video-decode", daemon=True)
    thread.start()
    try:
        while (item := frames.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer stopped early (or the video ended): let the thread finish and drop its frames
        thread.join()
