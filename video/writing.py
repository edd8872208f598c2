"""Annotated videos: each frame drawn with `faceptor.visualization.drawing` plus its faces' track ids, encoded
with PyAV at the source's frame rate and size (H.264 where FFmpeg has it, else MPEG-4 Part 2), written under a
temporary name and renamed when complete. Audio is dropped."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
from PIL import ImageDraw

from ..commands.output_files import partial_path, rename_target
from ..visualization.drawing import _font, draw_result
from .reading import VideoError, _av

# Encoders tried in order per container; the first that this FFmpeg build has is used.
ENCODERS = {
    ".mp4": ("libx264", "h264", "mpeg4"),
    ".m4v": ("libx264", "h264", "mpeg4"),
    ".mov": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "mpeg4"),
    ".avi": ("mpeg4",),
    ".webm": ("libvpx-vp9", "libvpx"),
}
TRACK_LABEL_COLOUR = (255, 255, 0)  # the box's colour in draw_result


def pick_encoder(path: str | os.PathLike) -> str:
    """The encoder for `path`'s container (by suffix); a typed error for a suffix or FFmpeg build with none."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in ENCODERS:
        raise VideoError(f"{path}: an annotated video must end in one of {', '.join(sorted(ENCODERS))}")
    available = _av().codecs_available
    for name in ENCODERS[suffix]:
        if name in available:
            return name
    raise VideoError(f"{path}: this FFmpeg build has none of the encoders {', '.join(ENCODERS[suffix])}")


def annotate_frame(image: np.ndarray, result: dict) -> np.ndarray:
    """An (H, W, 3) uint8 frame and its result -> the (H, W, 3) picture of `draw_result` (its parsing legend inside
    the frame; a frame too small for one loses the strip below, to keep the video's size), with `#track_id` in each
    box's top-left corner."""
    height, width = image.shape[:2]
    picture = draw_result(image, result)
    if picture.size != (width, height):
        picture = picture.crop((0, 0, width, height))
    draw = ImageDraw.Draw(picture)
    font = _font(max(11, round(14 * max(height, width) / 512)))
    for face in result.get("faces", []):
        if face.get("track_id") is None:
            continue
        x0, y0 = face["box"][:2]
        text = f"#{face['track_id']}"
        anchor = (max(0, x0) + 3, max(0, y0) + 3)  # inside the box's corner: captions are placed outside boxes
        frame = draw.textbbox(anchor, text, font=font)
        draw.rectangle([frame[0] - 2, frame[1] - 2, frame[2] + 2, frame[3] + 2], fill=TRACK_LABEL_COLOUR)
        draw.text(anchor, text, fill=(0, 0, 0), font=font)
    return np.asarray(picture)


class AnnotatedVideoWriter:
    """Writes frames (H, W, 3 uint8 RGB) to `path` at `fps`; the file appears under its name only when `close`d
    after every frame was written (a unique `.partial` name beside it meanwhile, removed if the writing fails).
    Odd sizes are padded by one black row or column, as the yuv420p encoders need even sizes."""

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, width: int, height: int):
        av = _av()
        self.path = rename_target(str(path))  # a link keeps its link; its target is replaced
        self.temporary = partial_path(self.path)  # never a file that exists; a later run removes it if we are killed
        self.width, self.height = width, height
        codec = pick_encoder(self.path)
        self._container = av.open(self.temporary, "w")
        try:
            self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001 * 1000))
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._stream.pix_fmt = "yuv420p"
        except BaseException:
            self._abandon()
            raise
        self.frames = 0

    def write(self, picture: np.ndarray) -> None:
        av = _av()
        if picture.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame of {picture.shape[1]}x{picture.shape[0]}, expected {self.width}x{self.height}")
        if self.width % 2 or self.height % 2:
            picture = np.pad(picture, ((0, self.height % 2), (0, self.width % 2), (0, 0)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except BaseException:
            self._abandon()
            raise
        self.frames += 1

    def close(self) -> None:
        """Flushes the encoder and renames the file into place."""
        if not self.frames:
            self._abandon()
            raise VideoError(f"{self.path}: no frame was written, so no video")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException:
            self._abandon()
            raise
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        """Stops writing and removes the partial file; `path` is left as it was."""
        self._abandon()

    def _abandon(self) -> None:
        try:
            self._container.close()
        except Exception:  # the file is removed next anyway
            pass
        if os.path.exists(self.temporary):
            os.remove(self.temporary)

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
