"""Every task of a face-perception pipeline on a video: frames decoded on a background thread and fed to the
streaming engine (`faceptor.processing.streaming`, as photos are: faces found where the detector is fastest, the
faces of many frames batched through the model), then tracked (and optionally smoothed) in frame order. A
generator: memory stays flat however long the video."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from ..processing.streaming import stream_faces
from .reading import DEFAULT_FRAMES_AHEAD, Frame, VideoError, read_frames
from .smoothing import FaceSmoother
from .tracking import FaceTracker

DEFAULT_FRAMES_IN_FLIGHT = 16  # decoded frames held ahead of the model (bounds memory)


def _frame_pixels(frame: Frame) -> Any:
    return frame.image


def perceive_video(
    face_pipeline,
    path: str | os.PathLike,
    *,
    every: int | None = None,
    fps: float | None = None,
    tasks: Sequence[str] | None = None,
    detector: Any = "auto",
    batch_size: int = 8,
    frames_in_flight: int = DEFAULT_FRAMES_IN_FLIGHT,
    workers: int = 2,
    smooth: bool = False,
    tracker: FaceTracker | None = None,
    smoother: FaceSmoother | None = None,
) -> Iterator[tuple[Frame, dict[str, Any]]]:
    """`(frame, result)` for each kept frame of `path` (every frame, every `every`-th, or about `fps` a second), in
    order; `result` is `{"source", "frame", "time_s", "image_size", "faces"}`, each face the pipeline's fields plus
    `track_id` (identity embeddings, when the results hold them, help the tracker tell faces apart). `smooth` runs a
    One-Euro filter over each track's box and landmarks (`smoother` to tune it). A video that breaks part-way
    yields the frames that decoded, then raises `VideoDecodeError`."""
    source = str(path)
    tracker = tracker or FaceTracker()
    smoother = (smoother or FaceSmoother()) if smooth else None
    broken: list[VideoError] = []

    ahead = min(DEFAULT_FRAMES_AHEAD, frames_in_flight)  # a small buffer: decode_ahead holds the rest in flight

    def frames_until_broken() -> Iterator[Frame]:
        try:
            yield from read_frames(source, every=every, fps=fps, frames_ahead=ahead)
        except VideoError as error:  # raised once every frame that decoded has been through the model
            broken.append(error)

    items = stream_faces(
        face_pipeline,
        frames_until_broken(),
        tasks=tasks,
        detector=detector,
        batch_size=batch_size,
        images_in_flight=frames_in_flight,
        workers=workers,
        decoder=_frame_pixels,
    )
    for item in items:
        frame: Frame = item.input
        result = item.result
        if "error" in result:
            raise VideoError(f"{source}: frame {frame.index}: {result['error']}")
        faces = result["faces"]
        embeddings = [face["embedding"] for face in faces] if all("embedding" in f for f in faces) else None
        ids = tracker.update([face["box"] for face in faces], frame.time_s, embeddings)
        faces = [{"track_id": track_id, **face} for track_id, face in zip(ids, faces, strict=True)]
        if smoother is not None:
            smoother.smooth(faces, frame.time_s)
        record = {"source": source, "frame": frame.index, "time_s": frame.time_s}
        yield frame, {**record, "image_size": result["image_size"], "faces": faces}
    if broken:
        raise broken[0]


def iterate_video_results(face_pipeline, path: str | os.PathLike, **options: Any) -> Iterator[dict[str, Any]]:
    """The per-frame result dicts of [`perceive_video`], for `pipeline("face-perception")(video_path)`: the
    pipeline's own batch size and detector unless `options` name others."""
    options.setdefault("batch_size", getattr(face_pipeline, "_batch_size", None) or 8)
    options.setdefault("detector", getattr(face_pipeline, "default_detector", "auto"))
    for _, result in perceive_video(face_pipeline, path, **options):
        yield result
