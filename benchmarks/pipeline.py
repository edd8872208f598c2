"""Images and faces per second of streaming `faceptor predict` (`predict_stream`: the streaming engine's decoding
threads, the `face-perception` pipeline with the bundled detector ON, a writer thread) and of `pipeline(paths)`
(the same engine) on a folder of real photos, where the time goes (load / detect / crop / model / post-process /
write), the time outside `model.forward`, and the model alone at the same batch.

    python benchmarks/pipeline.py [--models demo base] [--devices cpu cuda] [--images 48] [--base-images 6]
                                  [--batch-size 8] [--threads N] [--recipe-cache outputs/demo_model_cache]
                                  [--sequential]

Photos: the bundled astronaut, scikit-image's photos (camera, coffee, chelsea, rocket, astronaut) and ten of its
LFW face crops, plus the demo-model recipe's cached photos when that cache exists; cycled to `--images` inputs.
Models: the bundled demo model, and Faceptor-Base (ViT-B/16, random weights: speed does not depend on them).
Stage times are busy time per stage over the wall time; load and write run on their own threads, overlapped
with the rest, so the shares can add up to more than 100 %. "model only": the same forward calls (crop sizes
and tasks as the pipeline made them) on random pixels, `--batch-size` faces each, back to back; "share": the
pipeline's faces/s over that. `--sequential` also times the loop `faceptor predict` ran before it streamed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

from faceptor import FaceptorConfig, FaceptorModel  # noqa: E402
from faceptor.commands.predict import load_pipeline, predict_stream  # noqa: E402
from faceptor.demo_model import DEMO_MODEL_DIR  # noqa: E402
from faceptor.processing.image_loading import load_image  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
STAGES = ("load", "detect", "crop", "model", "post-process", "write")


class StageClock:
    """Busy seconds per stage; `wrap` times a callable (synchronising CUDA first, so that time is not counted
    in whichever stage happens to wait for the device next)."""

    def __init__(self, cuda: bool):
        self.totals: dict[str, float] = defaultdict(float)
        self.cuda = cuda

    def wrap(self, function, stage: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                result = function(*args, **kwargs)
                if self.cuda:
                    torch.cuda.synchronize()
                return result
            finally:
                self.totals[stage] += time.perf_counter() - start

        for attribute in ("detect_batch",):  # keep a batching detector batching
            if hasattr(function, attribute):
                setattr(timed, attribute, self.wrap(getattr(function, attribute), stage))
        return timed


def gather_photos(folder: Path, recipe_cache: str | None, recipe_photos: int) -> list[str]:
    """Real photos written to `folder`; their paths."""
    paths = [str(shutil.copy(ASSET, folder / "asset_astronaut.jpg"))]
    for name in ("camera", "coffee", "chelsea", "rocket", "astronaut"):
        path = folder / f"skimage_{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(path, quality=95)
        paths.append(str(path))
    for index, crop in enumerate(data.lfw_subset()[:10]):  # the first 100 of its 200 crops are faces
        path = folder / f"skimage_lfw_{index}.png"
        Image.fromarray((crop * 255).round().astype(np.uint8)).save(path)
        paths.append(str(path))
    if recipe_cache and os.path.isdir(recipe_cache):
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # recipes/ is not installed
            from recipes.demo_model.sources import iter_source_images

            for index, source in enumerate(itertools.islice(iter_source_images(recipe_cache, 1000, 1), recipe_photos)):
                path = folder / f"recipe_{index:03d}.jpg"
                Image.fromarray(source.image).save(path, quality=95)
                paths.append(str(path))
        except Exception as error:  # a partial cache: use what is there, say why the rest is missing
            print(f"recipe photos: stopped ({type(error).__name__}: {error})", file=sys.stderr)
    return paths


def instrument(face_pipeline, clock: StageClock, signatures: set) -> None:
    """Times the stages by wrapping what the pipeline calls (only what exists: its internals may change)."""
    model = face_pipeline.model
    forward = model.forward

    def recorded_forward(pixel_values, *args, **kwargs):
        signatures.add((tuple(pixel_values.shape[1:]), tuple(kwargs.get("tasks") or ())))
        return forward(pixel_values, *args, **kwargs)

    model.forward = clock.wrap(recorded_forward, "model")
    processor = face_pipeline.image_processor
    for name in ("crop_boxes", "crop_faces", "preprocess"):
        if hasattr(processor, name):
            setattr(processor, name, clock.wrap(getattr(processor, name), "crop"))
    if hasattr(processor, "post_process"):
        processor.post_process = clock.wrap(processor.post_process, "post-process")
    face_pipeline.postprocess = clock.wrap(face_pipeline.postprocess, "post-process")


def model_only_faces_per_second(model, signatures: set, batch_size: int, device: str, repeats: int = 2) -> float:
    """Faces per second of the forward calls in `signatures`, each at `batch_size` faces, on random pixels."""
    dtype = next(model.parameters()).dtype
    inputs = [(torch.randn(batch_size, *shape, device=device, dtype=dtype), list(tasks)) for shape, tasks in signatures]
    with torch.no_grad():
        for pixels, tasks in inputs:  # warm-up
            model(pixels, tasks=tasks or None)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            for pixels, tasks in inputs:
                model(pixels, tasks=tasks or None)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return batch_size * repeats / (time.perf_counter() - start)


def measure(model_dir: str, device: str, images: list[str], args) -> dict:
    face_pipeline = load_pipeline(model_dir, None if device == "cpu" else device)
    from faceptor.processing.detection import load_default_detector

    clock = StageClock(cuda=device.startswith("cuda"))
    detector = clock.wrap(load_default_detector(), "detect")
    signatures: set = set()
    instrument(face_pipeline, clock, signatures)
    decoder = clock.wrap(load_image, "load")
    with tempfile.TemporaryDirectory() as folder, open(os.path.join(folder, "out.jsonl"), "w") as output:
        faces = [0]

        def write(item):
            output.write(json.dumps(item.result) + "\n")
            faces[0] += len(item.result.get("faces", ()))

        sink = clock.wrap(write, "write")
        options = dict(
            detector=detector,
            batch_size=args.batch_size,
            images_in_flight=args.images_in_flight,
            workers=args.workers,
            decoder=decoder,
        )
        predict_stream(face_pipeline, list(enumerate(images[:2])), sink, **options)  # warm-up
        clock.totals.clear()
        faces[0] = 0
        start = time.perf_counter()
        predict_stream(face_pipeline, list(enumerate(images)), sink, **options)
        wall = time.perf_counter() - start
        shares = {stage: clock.totals[stage] / wall for stage in STAGES}  # before the runs below add to them
        # The same photos through `pipeline(paths)`, the same engine without the writer.
        clock.totals.clear()
        start = time.perf_counter()
        face_pipeline(images, detector=detector, batch_size=args.batch_size, num_workers=args.workers)
        pipeline_wall = time.perf_counter() - start
        pipeline_outside = 1 - clock.totals["model"] / pipeline_wall
    sequential = None
    if args.sequential:  # the loop `faceptor predict` ran before streaming: decode, infer, write, in turn
        faces[0] = 0
        start = time.perf_counter()
        with open(os.devnull, "w") as output:
            for first in range(0, len(images), args.batch_size):
                chunk = images[first : first + args.batch_size]
                for result in face_pipeline(chunk, detector=detector, batch_size=args.batch_size):
                    output.write(json.dumps(result) + "\n")
                    faces[0] += len(result.get("faces", ()))
        sequential = len(images) / (time.perf_counter() - start)
    model_only = model_only_faces_per_second(face_pipeline.model, signatures, args.batch_size, device)
    return {
        "images/s": len(images) / wall,
        "faces/s": faces[0] / wall,
        "faces": faces[0],
        "shares": shares,
        "model-only faces/s": model_only,
        "sequential images/s": sequential,
        "pipeline images/s": len(images) / pipeline_wall,
        "outside forward": (1 - shares["model"], pipeline_outside),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["demo", "base"], default=["demo", "base"])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cuda is skipped without a GPU")
    parser.add_argument("--images", type=int, default=48, help="inputs per measured run (photos cycled)")
    parser.add_argument("--base-images", type=int, default=6, help="inputs for Faceptor-Base on the CPU")
    parser.add_argument("--batch-size", type=int, default=8, help="faces per forward pass")
    parser.add_argument("--images-in-flight", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--recipe-cache", default=os.path.join("outputs", "demo_model_cache"))
    parser.add_argument("--recipe-photos", type=int, default=40)
    parser.add_argument("--sequential", action="store_true", help="also time the loop without streaming")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [device for device in args.devices if device == "cpu" or torch.cuda.is_available()]
    with tempfile.TemporaryDirectory() as folder:
        photos = gather_photos(Path(folder), args.recipe_cache, args.recipe_photos)
        models = {}
        if "demo" in args.models:
            models["demo model"] = str(DEMO_MODEL_DIR)
        if "base" in args.models:
            base = os.path.join(folder, "faceptor-base")
            FaceptorModel(FaceptorConfig.from_preset("faceptor-base")).eval().save_pretrained(base)
            models["Faceptor-Base"] = base
        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"
        print(f"machine: {machine}; {len(photos)} photos; fp32; batch {args.batch_size} faces; detector on")
        header = " | ".join(STAGES)
        print(f"| model | device | images | faces | images/s | faces/s | {header} | model only faces/s | share |")
        print("|" + " --- |" * (8 + len(STAGES)))
        for (name, model_dir), device in itertools.product(models.items(), devices):
            count = args.base_images if name == "Faceptor-Base" and device == "cpu" else args.images
            images = list(itertools.islice(itertools.cycle(photos), count))
            row = measure(model_dir, device, images, args)
            shares = " | ".join(f"{row['shares'][stage]:.0%}" for stage in STAGES)
            ratio = row["faces/s"] / row["model-only faces/s"]
            print(
                f"| {name} | {device} | {count} | {row['faces']} | {row['images/s']:.2f} | {row['faces/s']:.2f} | "
                f"{shares} | {row['model-only faces/s']:.2f} | {ratio:.0%} |",
                flush=True,
            )
            outside = row["outside forward"]
            print(
                f"  pipeline(paths): {row['pipeline images/s']:.2f} images/s; time outside model.forward: "
                f"predict stream {outside[0]:.0%}, pipeline(paths) {outside[1]:.0%}",
                flush=True,
            )
            if row["sequential images/s"] is not None:
                print(f"  (before streaming: {row['sequential images/s']:.2f} images/s)", flush=True)


if __name__ == "__main__":
    main()
