"""`faceptor predict`: every task of a model on images, JSON lines out, pictures on request. Streams: images are
decoded ahead on threads and results written behind on a thread (`streaming.py`), so memory stays flat over any
number of images; under `accelerate launch` the inputs are sharded over the processes (`sharding.py`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

import torch

from ..demo_model import announce_demo_model, demo_model_path
from ..processing.visualization import draw_result
from .errors import CommandError, run_handler
from .sharding import (
    close_process_group,
    distributed_state,
    merge_parts,
    part_path,
    result_status,
    shard,
    write_part_line,
)
from .streaming import BoundedPictureSaver, Item, OrderedWriter, Throughput, decode_ahead, make_decoder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}


def expand_inputs(paths: Sequence[str]) -> list[str]:
    """Files as given, folders expanded to their image files (sorted); missing paths are kept so that they
    are reported as bad inputs, not skipped."""
    expanded = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise CommandError(f"{path}: folder has no image files")
            expanded += found
        else:
            expanded.append(path)
    return expanded


def load_pipeline(model: str, device: str | None, dtype: str = "float32"):
    from transformers import pipeline

    if not os.path.isdir(model):
        raise CommandError(f"{model}: no such model folder")
    try:
        return pipeline("face-perception", model=model, device=device, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"{model}: cannot load a Faceptor model ({str(error).splitlines()[0]})") from None


class ResultSink:
    """The writing end, run on the writer thread in input order: one JSON line per usable result (or an indexed
    part-file line when sharded), one stderr line per bad input, a picture on request, the progress bar."""

    def __init__(self, output: IO[str], progress, visualize: str | None = None, sharded: bool = False,
                 picture_workers: int = 2, pictures_pending: int = 8):  # fmt: skip
        self.output, self.progress, self.visualize, self.sharded = output, progress, visualize, sharded
        self.pictures = BoundedPictureSaver(picture_workers, pictures_pending) if visualize else None
        self.throughput, self.bad = Throughput(), 0

    def __call__(self, item: Item) -> None:
        result = item.result
        status = result_status(result)
        if status != "ok":
            self.bad += 1
            message = result.get("error") or f"{item.path}: {result['warning']}"
            self.progress.write(f"faceptor: error: {message}", file=sys.stderr)
        line = json.dumps(result) + "\n"
        if self.sharded:
            write_part_line(self.output, item.index, result, line)  # errors too: the merge counts them
        elif status != "error":
            self.output.write(line)
        if self.pictures is not None and status != "error":
            stem = os.path.splitext(os.path.basename(item.path))[0]
            self.pictures.submit(_save_picture, item.image, result, os.path.join(self.visualize, f"{stem}.jpg"))
        self.throughput.add(result)
        self.progress.set_postfix_str(f"{self.throughput.faces_per_second():.2f} faces/s", refresh=False)
        self.progress.update(1)

    def close(self) -> None:
        if self.pictures is not None:
            self.pictures.close()


def _save_picture(image, result: dict[str, Any], path: str) -> None:
    draw_result(image, result).save(path)


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
    """Runs `face_pipeline` over `inputs` ((index, path) pairs) and hands every `Item`, result set, to
    `sink(item)` on a writer thread, in input order. Decoding (`decoder`, default `load_image`, on `workers`
    threads, at most `images_in_flight` ahead), the pipeline (on this thread, `batch_size` faces per forward
    pass, as many images per call) and the sink overlap; `keep_images` keeps the pixels for the sink."""
    from ..processing.image_loading import load_image

    decoder = decoder or load_image
    per_call = max(1, min(batch_size, images_in_flight))
    writer = OrderedWriter(sink, capacity=images_in_flight)
    # The detector runs on the decoding threads, beside the model, and hands its faces to the pipeline.
    resolve = getattr(face_pipeline, "resolve_detector", None)
    found = resolve(detector)[0] if resolve is not None and detector is not None else None
    detect = (lambda image: face_pipeline.detect(found, [image])[0]) if found is not None else None

    def run(chunk: list[Item]) -> None:
        good = [item for item in chunk if item.result is None]
        if good:
            images = [
                item.image if item.detections is None else {"image": item.image, "detections": item.detections}
                for item in good
            ]
            results = face_pipeline(images, tasks=tasks, detector=detector, batch_size=batch_size)
            for item, result in zip(good, results, strict=True):
                item.result = {**result, "source": item.path}  # the path, not "array (H, W, 3)"
        for item in chunk:
            if not keep_images:
                item.image = None  # only pictures need the pixels; free them before the writer's queue
            writer.put(item)

    try:
        chunk: list[Item] = []
        for item in decode_ahead(inputs, decoder, workers, images_in_flight, detect):
            chunk.append(item)
            if len(chunk) == per_call:
                run(chunk)
                chunk = []
        if chunk:
            run(chunk)
    finally:
        writer.close()


def command_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    images = expand_inputs(args.images)
    state = distributed_state()  # None unless launched as several processes
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    is_main = state is None or state.is_main_process
    if world > 1 and not args.output:
        raise CommandError("--output is needed when running as several processes (each writes a part of it)")
    if not is_main:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one set of bars, the main process's
    device = args.device
    if device is None and state is not None and state.device.type != "cpu":
        device = str(state.device)  # one accelerator per process, as accelerate assigned it
    model = args.model
    if model is None:
        try:
            model = demo_model_path()
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        if is_main:
            announce_demo_model()
    face_pipeline = load_pipeline(model, device, args.dtype)
    if args.compile:
        # In place (Module.compile), so the weights keep their names; each new crop size compiles once.
        face_pipeline.model.encoder.compile()
    if args.tasks:
        try:
            face_pipeline([], tasks=args.tasks)  # an unknown task name fails here, before any image is read
        except ValueError as error:
            raise CommandError(str(error)) from None
    try:
        decoder = make_decoder(args.decode, device)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.visualize:
        os.makedirs(args.visualize, exist_ok=True)
    mine = shard(images, rank, world)
    # Written under a temporary name and renamed when complete: a run that dies leaves any earlier output whole.
    final = (part_path(args.output, rank, world) if world > 1 else args.output) if args.output else None
    target = f"{final}.tmp" if final else None
    output = open(target, "w", encoding="utf-8") if target else sys.stdout
    description = "faceptor" if world == 1 else f"faceptor (process 0 of {world})"
    try:
        with tqdm(total=len(mine), unit="image", desc=description, disable=args.quiet or not is_main) as progress:
            sink = ResultSink(output, progress, args.visualize, sharded=world > 1, picture_workers=args.workers)
            try:
                predict_stream(face_pipeline, mine, sink, tasks=args.tasks, detector=None if args.no_detector
                               else "auto", batch_size=args.batch_size, images_in_flight=args.images_in_flight,
                               workers=args.workers, decoder=decoder, keep_images=bool(args.visualize))  # fmt: skip
            finally:
                sink.close()
    finally:
        if output is not sys.stdout:
            output.close()
    if final:
        os.replace(target, final)
    if world == 1:
        return 1 if sink.bad else 0
    state.wait_for_everyone()
    try:
        if not is_main:
            return 0  # the main process reports the status of all inputs
        try:
            return 1 if merge_parts(args.output, world) else 0
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
    finally:
        close_process_group()  # also keeps the others alive until the merge is done


def add_predict_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor predict IMAGE ... [--model DIR]` to the CLI's subcommands."""
    predict = subparsers.add_parser("predict", help="run every task on images; JSON lines out")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--model", help="Faceptor model folder (default: the bundled demo model)")
    predict.add_argument("--tasks", nargs="+", help="task names (default: all the model's tasks)")
    predict.add_argument("--output", help="write JSON lines here instead of standard output")
    predict.add_argument("--visualize", metavar="OUT_DIR", help="write a picture of each result here")
    predict.add_argument("--no-detector", action="store_true", help="take each image as one face crop")
    predict.add_argument("--batch-size", type=int, default=8, help="faces per forward pass of the model")
    predict.add_argument("--images-in-flight", type=_positive, default=16, metavar="N",
                         help="decoded images held ahead of the model (bounds memory; default 16)")  # fmt: skip
    predict.add_argument("--workers", type=_positive, default=min(4, os.cpu_count() or 1),
                         help="threads decoding images (and drawing pictures)")  # fmt: skip
    predict.add_argument("--decode", choices=["auto", "pil", "device"], default="auto",
                         help="JPEGs decoded by Pillow, or by nvJPEG on the CUDA --device (auto: on CUDA)")  # fmt: skip
    predict.add_argument("--device", help="torch device, e.g. cuda:0 (default: CPU)")
    predict.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                         help="weights and activations; bfloat16 is faster on recent CPUs and GPUs")  # fmt: skip
    predict.add_argument("--compile", action="store_true",
                         help="torch.compile the encoder: slow first batch, then faster")  # fmt: skip
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=command_predict)
    return predict


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m faceptor.commands.predict ...` = `faceptor predict ...`, e.g. under `accelerate launch -m`."""
    parser = argparse.ArgumentParser(prog="faceptor")
    add_predict_command(parser.add_subparsers(dest="command", required=True))
    return run_handler(parser.parse_args(["predict", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
