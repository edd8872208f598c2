"""`faceptor predict` on videos: one JSON line per frame that has faces (`source`, `frame`, `time_s`, `faces` with a
`track_id` each), `--every N` / `--fps F` to subsample, `--smooth`, and `--visualize` as an annotated video (a
video file name) or a picture per frame (a folder); a progress bar in frames per second per video."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import IO, Any

from PIL import Image

from ..video.perception import perceive_video
from ..video.reading import VIDEO_SUFFIXES, VideoError, is_video_path, video_info
from ..video.writing import AnnotatedVideoWriter, annotate_frame, pick_encoder
from ..visualization.drawing import is_saved_picture, save_picture
from .arguments import positive_rate
from .errors import CommandError
from .output_files import is_special, remove_stale_temporaries, rename_target
from .parquet_output import write_record
from .predict_outputs import InputFiles, frame_folders
from .result_json import json_line
from .terminal_output import describe_result


def split_videos(named: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(photos, videos) of `predict`'s (path, name) inputs, by file name suffix (`VIDEO_SUFFIXES`)."""
    videos = [pair for pair in named if is_video_path(pair[0])]
    return [pair for pair in named if not is_video_path(pair[0])], videos


def wants_annotated_video(visualize: str | None) -> bool:
    return bool(visualize) and is_video_path(visualize)


def check_video_outputs(visualize: str | None, photos: Sequence[str], videos: Sequence[str]) -> None:
    """Refuses, in one line, a `--visualize VIDEO` with other than exactly one video input, over an input, or in a
    container this FFmpeg cannot write."""
    if not wants_annotated_video(visualize):
        return
    if len(videos) != 1 or photos:
        raise CommandError(
            f"--visualize {visualize}: an annotated video takes exactly one video input (given "
            f"{len(videos)} videos and {len(photos)} photos); give a folder for pictures"
        )
    if (same := InputFiles(videos).find(visualize)) is not None:
        raise CommandError(f"--visualize {visualize}: is the input {same}; refusing to overwrite an input")
    if is_special(visualize) or os.path.isdir(visualize):
        raise CommandError(f"--visualize {visualize}: is not a regular file; an annotated video is written to a file")
    remove_stale_temporaries(rename_target(visualize))  # the .partial of a killed run
    if not os.path.isdir(os.path.dirname(visualize) or "."):
        raise CommandError(f"--visualize {visualize}: folder {os.path.dirname(visualize)} does not exist")
    try:
        pick_encoder(visualize)
    except VideoError as error:
        raise CommandError(f"--visualize {error}") from None


def predict_videos(
    face_pipeline,
    videos: Sequence[tuple[str, str]],
    output: IO[str],
    args: argparse.Namespace,
    *,
    detector: Any,
    report,
    folders: Sequence[str] | None = None,
    human: bool = False,
) -> tuple[int, int]:
    """Runs every video of `videos` ((path, name) pairs) through `face_pipeline`, writing their records to `output`;
    `report(line)` prints a video's one error line; `human`: a few readable lines per frame instead of its record
    (standard output is a terminal). Returns (videos that failed or broke part-way, faces with
    non-finite values)."""
    from tqdm.auto import tqdm

    if folders is None and args.visualize and not wants_annotated_video(args.visualize):
        folders = frame_folders(videos, args.visualize, [])
    errors = non_finite = 0
    for number, (path, _) in enumerate(videos):
        writer = None
        try:
            info = video_info(path)
            expected = _expected_frames(info, args.every, args.fps)
            with tqdm(
                total=expected or None, unit="frame", desc=os.path.basename(path), disable=args.quiet, file=sys.stderr
            ) as progress:
                results = perceive_video(
                    face_pipeline,
                    path,
                    every=args.every,
                    fps=args.fps,
                    tasks=args.tasks,
                    detector=detector,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    frames_in_flight=args.images_in_flight,
                    smooth=args.smooth,
                )
                try:
                    for frame, result in results:
                        if result["faces"]:
                            line, flagged = json_line(result)
                            non_finite += flagged
                            if human:  # a person at a terminal: readable lines, above the progress bar
                                progress.write("\n".join(describe_result(result)), file=output)
                            else:
                                write_record(output, result, line)
                        if wants_annotated_video(args.visualize):
                            if writer is None:
                                height, width = frame.image.shape[:2]
                                rate = _written_rate(info.fps, args.every, args.fps)
                                writer = AnnotatedVideoWriter(args.visualize, rate, width, height)
                            writer.write(annotate_frame(frame.image, result))
                        elif folders is not None:
                            _save_frame_picture(frame, result, folders[number], report)
                        progress.update(1)
                except VideoError:
                    if writer is not None:
                        writer.close()  # a video that broke part-way: the frames that decoded are kept
                    raise
                except BaseException:
                    if writer is not None:
                        writer.abort()  # interrupted or failed: no half-written video under the name
                    raise
                if writer is not None:
                    writer.close()
        except VideoError as error:
            errors += 1
            report(str(error))
        except OSError as error:
            raise CommandError(f"cannot write the output ({error.strerror or error})") from None
    return errors, non_finite


def _expected_frames(info, every: int | None, fps: float | None) -> int:
    """The frames a run will keep, as the header states them (0 when it does not): for the progress bar."""
    if not info.frames:
        return 0
    if every:
        return -(-info.frames // every)
    if fps and info.duration_s:
        return min(info.frames, max(1, round(info.duration_s * fps)))
    return info.frames


def _written_rate(source_fps: Fraction, every: int | None, fps: float | None) -> Fraction:
    """The annotated video's frame rate: the source's, or the subsampled one, so that it plays in real time."""
    if every:
        return source_fps / every
    if fps:
        return min(source_fps, Fraction(fps).limit_denominator(1001))
    return source_fps


def _save_frame_picture(frame, result: dict[str, Any], folder: str, report) -> None:
    """`folder`/frame_NNNNNN.jpg for a frame; a file there that is not a faceptor picture is left alone and reported."""
    path = os.path.join(folder, f"frame_{frame.index:06d}.jpg")
    if os.path.lexists(path) and not is_saved_picture(path):
        report(f"{result['source']}: frame {frame.index}: {path} is not a faceptor picture; left as it is")
        return
    save_picture(Image.fromarray(annotate_frame(frame.image, result)), path)


__all__ = ["VIDEO_SUFFIXES", "check_video_outputs", "positive_rate", "predict_videos", "split_videos"]
