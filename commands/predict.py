"""`faceptor predict`: every task of a model on images, JSON lines out, pictures on request. Streams: images are
decoded ahead on threads and results written behind on a thread (`streaming.py`), so memory stays flat over any
number of images; under `accelerate launch` the inputs are sharded over the processes (`sharding.py`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import torch

from ..demo_model import announce_demo_model, demo_model_path
from ..processing.image_loading import image_suffixes
from ..processing.streaming import StreamItem, make_decoder, stream_faces
from ..video.reading import VIDEO_SUFFIXES
from ..visualization.drawing import draw_result, save_picture
from .arguments import add_predict_command
from .compiled_inference import default_compile_mode, install_fixed_shape_forward
from .errors import CommandError, error_summary, run_handler
from .model_loading import load_image_processor, load_model_folder
from .output_files import OutputFile, is_special
from .parquet_output import check_output_format, open_records_output, write_record
from .predict_outputs import (
    InputFiles,
    OutputLock,
    check_frame_folders,
    check_output,
    check_outputs_apart,
    check_pictures,
    finish_output,
    frame_folders,
    make_picture_folder,
    needs_lock,
    picture_paths,
    temporary_path,
)
from .predict_video import check_video_outputs, predict_videos, split_videos, wants_annotated_video
from .result_json import json_line
from .sharding import (
    ERROR,
    NO_FACE,
    close_process_group,
    distributed_state,
    merge_parts,
    part_path,
    result_status,
    shard,
    share_from_main,
    write_part_line,
)
from .streaming import BoundedPictureSaver, OrderedWriter, Throughput
from .terminal_output import closing_line, describe_result, is_terminal


def expand_inputs(paths: Sequence[str]) -> list[tuple[str, str]]:
    """Files as given, folders expanded to their image files (sorted; every extension Pillow can decode), each with
    its name relative to what was given (a file's own name; a folder's file's path inside it); missing paths are
    kept so that they are reported as bad inputs, not skipped."""
    expanded, suffixes = [], image_suffixes() | VIDEO_SUFFIXES  # a folder may mix photos and videos
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if os.path.splitext(name)[1].lower() in suffixes
            )
            if not found:
                raise CommandError(f"{path}: folder has no image or video files")
            expanded += [(found_path, os.path.relpath(found_path, path)) for found_path in found]
        else:
            expanded.append((path, os.path.basename(path)))
    return expanded


def load_pipeline(model: str, device: str | None, dtype: str = "float32", detector_device: str | None = None):
    """The `face-perception` pipeline of a model folder on `device`; its detector on the same device unless
    `detector_device` names another."""
    from transformers import pipeline

    if not os.path.isdir(model):
        raise CommandError(f"{model}: no such model folder")
    try:
        loaded = load_model_folder(model, dtype=getattr(torch, dtype))  # one line for a broken folder
        processor = load_image_processor(model)  # validated: no silent defaults for a missing or broken file
        return pipeline(
            "face-perception", model=loaded, image_processor=processor, device=device, detector_device=detector_device
        )
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"{model}: cannot load a Faceptor model ({str(error).splitlines()[0]})") from None


class ResultSink:
    """The writing end, run on the writer thread in input order: one JSON line per usable result (or an indexed
    part-file line when sharded; `human`: a few readable lines per image instead, for a terminal), one stderr line
    per unusable input, a picture on request (`pictures`: its path per input index), the progress bar (counting
    inputs that exist); it counts what the closing summary reports."""

    def __init__(
        self,
        output: IO[str],
        progress,
        pictures: Sequence[str] | None = None,
        sharded: bool = False,
        picture_workers: int = 2,
        pictures_pending: int = 8,
        human: bool = False,
    ):
        self.output, self.progress, self.pictures, self.sharded = output, progress, pictures, sharded
        self.human = human and not sharded
        self.saver = None
        if pictures is not None:
            self.saver = BoundedPictureSaver(picture_workers, pictures_pending, done=self._picture_saved)
        self.throughput = Throughput()
        self.errors = self.no_face = self.non_finite = self.failed_pictures = 0

    def __call__(self, item: StreamItem) -> None:
        result = item.result
        status = result_status(result)
        if status == ERROR:
            self.errors += 1
            self._report(result["error"])
        self.no_face += status == NO_FACE  # a result, not an error: counted for the summary line
        line, flagged = json_line(result)
        self.non_finite += flagged
        try:
            if self.sharded:
                write_part_line(self.output, item.index, result, line)  # errors too: the merge counts them
            elif status != ERROR and self.human:
                self.progress.write("\n".join(describe_result(result)), file=self.output)  # above the bar
            elif status != ERROR:
                write_record(self.output, result, line)
        except OSError as error:
            raise CommandError(f"cannot write the output ({error.strerror or error})") from None
        if self.saver is not None and status != ERROR:
            self.saver.submit(_save_picture, item.image_array(), result, self.pictures[item.index])
        if status != ERROR:
            self.throughput.add(result)  # usable results: the bar's rate and the closing line
        if status == ERROR and not os.path.exists(item.input):
            return  # the bar counts the inputs that exist: a missing one is only its error line
        self.progress.set_postfix_str(f"{self.throughput.faces_per_second():.2f} faces/s", refresh=False)
        self.progress.update(1)

    def _report(self, message: str) -> None:
        self.progress.write(f"faceptor: error: {message}", file=sys.stderr)

    def _picture_saved(self, problem: str | None) -> None:
        if problem is not None:
            self.errors += 1
            self.failed_pictures += 1
            self._report(problem)

    def close(self) -> None:
        if self.saver is not None:
            self.saver.close()


def _save_picture(image, result: dict[str, Any], path: str) -> str | None:
    """Draws and saves one picture; None, or the line that says why it could not be."""
    try:
        save_picture(draw_result(image, result), path)
    except Exception as error:  # disk full, a result that cannot be drawn: this picture's failure, not the run's
        return f"{result['source']}: cannot write the picture {path} ({type(error).__name__}: {error})"
    return None


def predict_stream(
    face_pipeline,
    inputs: Sequence[tuple[int, str]],
    sink,
    *,
    tasks: Sequence[str] | None = None,
    detector: Any = "auto",
    batch_size: int = 8,
    images_in_flight: int = 16,
    workers: int = 2,
    decoder=None,
    keep_images: bool = False,
) -> None:
    """Runs `face_pipeline` over `inputs` ((index, path) pairs) through the streaming engine
    (`faceptor.processing.streaming`: decoding on `workers` threads at most `images_in_flight` ahead, detection
    where the detector is fastest, `batch_size` faces per forward pass) and hands every `StreamItem`, result set
    and `index` the input's, to `sink(item)` on a writer thread, in input order; `keep_images` keeps the pixels
    for the sink's pictures."""
    writer = OrderedWriter(sink, capacity=images_in_flight)
    indices = [index for index, _ in inputs]
    try:
        items = stream_faces(
            face_pipeline,
            [path for _, path in inputs],
            tasks=tasks,
            detector=detector,
            batch_size=batch_size,
            images_in_flight=images_in_flight,
            workers=workers,
            decoder=decoder,
        )
        for item in items:
            item.index = indices[item.index]
            if not keep_images:
                item.pixels = None  # only pictures need the pixels; free them before the writer's queue
            writer.put(item)
    finally:
        writer.close()


def check_device(device: str | None) -> None:
    """Refuses, in one line, a `--device` that this machine does not have (e.g. cuda without a GPU)."""
    if device is None:
        return
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as error:  # torch's words for "no such device here"
        raise CommandError(f"--device {device}: not usable here ({error_summary(error)})") from None


def claim_outputs(
    args: argparse.Namespace, images: Sequence[str], pictures: Sequence[str] | None, folders: Sequence[str] = ()
) -> OutputLock | None:
    """Checks, before any work, that nothing written would replace an input or another output and that the output
    is writable, and takes the output's lock (held until the run ends); a `CommandError` says what is wrong."""
    files = InputFiles(images)
    check_outputs_apart({"--output": args.output, "--visualize": args.visualize})
    if args.output:
        check_output(args.output, files)
    if pictures is not None:
        check_pictures(args.visualize, pictures, files, args.output)
        check_frame_folders(args.visualize, folders)
    lock = OutputLock(args.output) if needs_lock(args.output) else None
    if lock is not None:
        lock.acquire()
    if pictures is not None:
        try:
            make_picture_folder(args.visualize)
        except CommandError:
            if lock is not None:
                lock.release()
            raise
    return lock


def _warm_up(face_pipeline, tasks: Sequence[str] | None) -> None:
    """One forward pass on a blank crop, timed as its own step: the first pass's one-time costs (kernel selection,
    allocations, a compile under --compile) stay out of the progress bar's rate."""
    import numpy as np

    started = time.perf_counter()
    print("faceptor: warming up ...", end="", file=sys.stderr, flush=True)
    try:
        face_pipeline(np.zeros((64, 64, 3), np.uint8), tasks=tasks, detector=None)
    except Exception as error:  # the images' own runs report what fails, one line each, as without a warm-up
        print(f" skipped ({error_summary(error)})", file=sys.stderr, flush=True)
        return
    print(f" {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def _report_error(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"faceptor: error: {message}", file=sys.stderr)  # above any progress bar


def _summarise(no_face: int, total: int, non_finite: int, closing: str | None = None, to=None) -> None:
    """The closing lines on standard error: how many images had no face, how many faces had non-finite values;
    for a person (`closing`, printed on `to`), one line of images, faces, errors, no-face images, paths and rate in
    place of the no-face line."""
    if no_face and closing is None:
        print(f"faceptor: {no_face} of {total} image{'s' * (total != 1)} had no face", file=sys.stderr)
    if non_finite:
        faces = "1 face" if non_finite == 1 else f"{non_finite} faces"
        print(f'faceptor: {faces} had NaN or infinite values, written as null (see "non_finite")', file=sys.stderr)
    if closing is not None:
        print(closing, file=to or sys.stderr)


def command_predict(args: argparse.Namespace) -> int:
    check_output_format(args.output_format, args.output)
    named, videos = split_videos(expand_inputs(args.images))
    images = [path for path, _ in named]
    state = distributed_state()  # None unless launched as several processes
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    is_main = state is None or state.is_main_process
    if world > 1 and (not args.output or is_special(args.output)):
        raise CommandError("--output FILE is needed when running as several processes (each writes a part of it)")
    if videos and world > 1:
        raise CommandError("videos are not sharded over processes; run them without accelerate launch")
    check_video_outputs(args.visualize, images, [path for path, _ in videos])
    annotated_video = wants_annotated_video(args.visualize)
    pictures = picture_paths(named, args.visualize) if args.visualize and not annotated_video else None
    folders = frame_folders(videos, args.visualize, pictures) if pictures is not None else None
    # Checked by the main process alone, which holds the output's lock for the whole run; the others follow it.
    lock, problem = None, None
    if is_main:
        try:
            lock = claim_outputs(args, images + [path for path, _ in videos], pictures, folders or ())
        except CommandError as error:
            problem = str(error)
    if world > 1:
        problem = share_from_main(state, problem)
    if problem is not None:
        if world > 1:
            close_process_group()
        if is_main:
            raise CommandError(problem)
        return 2
    try:
        return _predict(args, images, pictures, state, videos, folders)
    finally:
        if lock is not None:
            lock.release()


def _predict(
    args: argparse.Namespace,
    images: list[str],
    pictures: list[str] | None,
    state: Any,
    videos: Sequence[tuple[str, str]] = (),
    folders: Sequence[str] | None = None,
) -> int:
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    is_main = state is None or state.is_main_process
    if not is_main:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one set of bars, the main process's
    face_pipeline, decoder = _prepare_pipeline(args, state, is_main, bool(images))
    run = _run_inputs(args, face_pipeline, decoder, shard(images, rank, world), pictures, videos, folders, state)
    return _report_run(args, run, len(images), state)


def _prepare_pipeline(args: argparse.Namespace, state: Any, is_main: bool, has_images: bool):
    """The model's pipeline on its device (compiled when asked), the tasks checked, and the JPEG decoder; loading
    and warm-up shown as steps of their own to a person at a terminal."""
    device = args.device
    if device is None and state is not None and state.device.type != "cpu":
        device = str(state.device)  # one accelerator per process, as accelerate assigned it
    check_device(device)
    model = args.model
    if model is None:
        try:
            model = demo_model_path()
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        if is_main:
            announce_demo_model()
    # For a person (a terminal, no --quiet): loading and warm-up are steps of their own, so that the bar that
    # follows times only images and its rate and ETA are the steady state's.
    steps = is_main and not args.quiet and is_terminal(sys.stderr)
    started = time.perf_counter()
    if steps:
        print("faceptor: loading the model ...", end="", file=sys.stderr, flush=True)
    check_device(args.detector_device)
    face_pipeline = load_pipeline(model, device, args.dtype, args.detector_device)
    if steps:
        print(f" {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    if args.compile if args.compile is not None else face_pipeline.device.type == "cuda":
        # Batches padded to --batch-size faces: one compiled graph per crop size (with CUDA graphs on CUDA).
        install_fixed_shape_forward(
            face_pipeline.model,
            args.batch_size,
            default_compile_mode(face_pipeline.device),
            announce=None if args.quiet else lambda line: print(f"faceptor: {line}", file=sys.stderr),
        )
    if args.tasks:
        try:
            face_pipeline([], tasks=args.tasks)  # an unknown task name fails here, before any image is read
        except ValueError as error:
            raise CommandError(str(error)) from None
    try:
        decoder = make_decoder(args.decode, device)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if steps and has_images:
        _warm_up(face_pipeline, args.tasks)
    return face_pipeline, decoder


@dataclass
class _Run:
    """What a run wrote, for its closing lines: the sink's counts, the videos', the output's final path."""

    sink: ResultSink
    video_errors: int
    video_non_finite: int
    final: str | None
    human: bool


def _open_output(args: argparse.Namespace, rank: int, world: int) -> tuple[str | None, OutputFile | None, IO[str]]:
    """Where this process's records go: (the final path, its `OutputFile`, the open stream), or standard output.
    Written under a temporary name and renamed when complete, so a run that dies leaves any earlier output whole; a
    FIFO or /dev/null is written into, never renamed over. Part files are always indexed JSON lines (the merge
    writes them in --output-format)."""
    if not args.output:
        return None, None, sys.stdout
    final = part_path(args.output, rank, world) if world > 1 else args.output
    written = OutputFile(final)
    output_format = "jsonl" if world > 1 else args.output_format
    return final, written, open_records_output(written.path, output_format, new=not written.special)


def _run_inputs(
    args: argparse.Namespace,
    face_pipeline,
    decoder,
    mine: list[tuple[int, str]],
    pictures: list[str] | None,
    videos: Sequence[tuple[str, str]],
    folders: Sequence[str] | None,
    state: Any,
) -> _Run:
    """This process's photos through the streaming engine into the output (or this process's part of it), then the
    videos; the output is renamed into place only when complete."""
    from tqdm.auto import tqdm

    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    is_main = state is None or state.is_main_process
    final, written, output = _open_output(args, rank, world)
    human = output is sys.stdout and is_terminal(sys.stdout)  # a person reads the results: a summary, not JSON
    description = "faceptor" if world == 1 else f"faceptor (process 0 of {world})"
    existing = sum(os.path.exists(path) for _, path in mine)  # a missing input is an error line, not a step
    try:
        # smoothing=0: the rate is the mean since the bar began, not the last gap's (results come in batches).
        with tqdm(
            total=existing,
            unit="image",
            desc=description,
            smoothing=0,
            disable=args.quiet or not is_main or not existing,
        ) as progress:
            sink = ResultSink(output, progress, pictures, sharded=world > 1, picture_workers=args.workers, human=human)
            try:
                predict_stream(
                    face_pipeline,
                    mine,
                    sink,
                    tasks=args.tasks,
                    detector=None if args.no_detector else "auto",
                    batch_size=args.batch_size,
                    images_in_flight=args.images_in_flight,
                    workers=args.workers,
                    decoder=decoder,
                    keep_images=pictures is not None,
                )
            finally:
                sink.close()
        video_errors, video_non_finite = predict_videos(
            face_pipeline,
            videos,
            output,
            args,
            report=_report_error,
            detector=None if args.no_detector else "auto",
            folders=folders,
            human=human,
        )
        if output is not sys.stdout:
            finish_output(output, written)
    finally:
        if output is not sys.stdout:
            try:
                output.close()
            except OSError:
                pass  # already reported by finish_output, or the run is failing for another reason
            written.discard()  # an interrupted run: its partial output goes, any earlier output stays
    return _Run(sink, video_errors, video_non_finite, final, human)


def _report_run(args: argparse.Namespace, run: _Run, total: int, state: Any) -> int:
    """The closing lines and the exit status; with several processes the main one merges the parts first."""
    sink = run.sink
    world = state.num_processes if state else 1
    is_main = state is None or state.is_main_process
    if world == 1:
        closing = None
        if run.human or (not args.quiet and is_terminal(sys.stderr)):
            done = sink.throughput
            seconds = time.perf_counter() - done.start
            rate = done.images / seconds if done.images and seconds > 0 else None
            errors = sink.errors + run.video_errors
            closing = closing_line(total, done.faces, errors, sink.no_face, rate, run.final, args.visualize)
        to = sys.stdout if run.human else sys.stderr
        _summarise(sink.no_face, total, sink.non_finite + run.video_non_finite, closing, to)
        return 1 if sink.errors or run.video_errors else 0
    state.wait_for_everyone()
    try:
        if not is_main:
            _summarise(0, 0, sink.non_finite)
            return 1 if sink.failed_pictures else 0  # the main process reports the status of all inputs
        try:
            statuses = merge_parts(
                args.output,
                world,
                temporary_path(args.output),
                open_merged=lambda path: open_records_output(path, args.output_format),
            )
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        _summarise(statuses[NO_FACE], total, sink.non_finite)
        return 1 if statuses[ERROR] or sink.failed_pictures else 0
    finally:
        close_process_group()  # also keeps the others alive until the merge is done


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m faceptor.commands.predict ...` = `faceptor predict ...`, e.g. under `accelerate launch -m`."""
    parser = argparse.ArgumentParser(prog="faceptor")
    add_predict_command(parser.add_subparsers(dest="command", required=True))
    return run_handler(parser.parse_args(["predict", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
