"""`faceptor predict`: every task of a model on images, JSON lines out, pictures on request."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import torch

from ..demo_model import announce_demo_model, demo_model_path
from ..processing.image_loading import load_image
from ..processing.visualization import draw_result
from .errors import CommandError

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


def command_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    images = expand_inputs(args.images)
    model = args.model
    if model is None:
        try:
            model = demo_model_path()
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        announce_demo_model()
    face_pipeline = load_pipeline(model, args.device, args.dtype)
    if args.compile:
        # In place (Module.compile), so the weights keep their names; each new crop size compiles once.
        face_pipeline.model.encoder.compile()
    if args.tasks:
        try:
            face_pipeline.task_specs(args.tasks)
        except ValueError as error:
            raise CommandError(str(error)) from None
    detector = None if args.no_detector else "auto"
    output = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    if args.visualize:
        os.makedirs(args.visualize, exist_ok=True)
    bad = 0
    try:
        with tqdm(total=len(images), unit="image", desc="faceptor", disable=args.quiet) as progress:
            for start in range(0, len(images), args.batch_size):
                chunk = images[start : start + args.batch_size]
                results = face_pipeline(chunk, tasks=args.tasks, detector=detector, batch_size=args.batch_size)
                for path, result in zip(chunk, results, strict=True):
                    if "error" in result or "warning" in result:
                        bad += 1
                        message = result.get("error") or f"{path}: {result['warning']}"
                        progress.write(f"faceptor: error: {message}", file=sys.stderr)
                    if "error" not in result:
                        output.write(json.dumps(result) + "\n")
                        if args.visualize:
                            stem = os.path.splitext(os.path.basename(path))[0]
                            draw_result(load_image(path), result).save(os.path.join(args.visualize, f"{stem}.jpg"))
                progress.update(len(chunk))
    finally:
        if output is not sys.stdout:
            output.close()
    return 1 if bad else 0


def add_predict_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor predict IMAGE ... [--model DIR]` to the CLI's subcommands."""
    predict = subparsers.add_parser("predict", help="run every task on images; JSON lines out")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--model", help="Faceptor model folder (default: the bundled demo model)")
    predict.add_argument("--tasks", nargs="+", help="task names (default: all the model's tasks)")
    predict.add_argument("--output", help="write JSON lines here instead of standard output")
    predict.add_argument("--visualize", metavar="OUT_DIR", help="write a picture of each result here")
    predict.add_argument("--no-detector", action="store_true", help="take each image as one face crop")
    predict.add_argument("--batch-size", type=int, default=8, help="images (and faces) per batch")
    predict.add_argument("--device", help="torch device, e.g. cuda:0 (default: CPU)")
    predict.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                         help="weights and activations; bfloat16 is faster on recent CPUs and GPUs")  # fmt: skip
    predict.add_argument("--compile", action="store_true",
                         help="torch.compile the encoder: slow first batch, then faster")  # fmt: skip
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=command_predict)
    return predict
