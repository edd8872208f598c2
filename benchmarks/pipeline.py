"""Images per second of `pipeline("face-perception")` with a ViT-B Faceptor-Base (random weights: speed does
not depend on the values), and where the time goes: preprocessing (decode, crops), encoder, decoder with
output modules, post-processing.

    python benchmarks/pipeline.py [--batch-sizes 1 16] [--images 16] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402
from transformers import pipeline  # noqa: E402

from faceptor import FaceptorConfig, FaceptorModel  # noqa: E402

FACE_BOX = [165, 30, 260, 150]


def timed(method, bucket: str, totals: dict):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[bucket] += time.perf_counter() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--images", type=int, default=16, help="images per measured run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        FaceptorModel(FaceptorConfig.from_preset("faceptor-base")).eval().save_pretrained(folder)
        image_path = os.path.join(folder, "astronaut.jpg")
        Image.fromarray(data.astronaut()).save(image_path)
        face_pipeline = pipeline("face-perception", model=folder, detector=None)

        totals: dict[str, float] = defaultdict(float)
        face_pipeline.preprocess = timed(face_pipeline.preprocess, "preprocess", totals)
        face_pipeline.postprocess = timed(face_pipeline.postprocess, "postprocess", totals)
        face_pipeline.model.forward = timed(face_pipeline.model.forward, "model", totals)
        face_pipeline.model.encoder.forward = timed(face_pipeline.model.encoder.forward, "encoder", totals)

        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"
        print(f"machine: {machine}, fp32, Faceptor-Base (ViT-B/16), 7 tasks")
        print("| batch | images/s | preprocess | encoder | decoder + heads | postprocess |")
        print("| --- | --- | --- | --- | --- | --- |")
        face_pipeline([image_path], boxes=[[FACE_BOX]])  # warm-up
        for batch_size in args.batch_sizes:
            totals.clear()
            count = max(args.images, batch_size)
            start = time.perf_counter()
            for first in range(0, count, batch_size):
                chunk = min(batch_size, count - first)
                face_pipeline([image_path] * chunk, boxes=[[FACE_BOX]] * chunk, batch_size=batch_size)
            elapsed = time.perf_counter() - start
            decoder = totals["model"] - totals["encoder"]
            shares = [totals["preprocess"], totals["encoder"], decoder, totals["postprocess"]]
            cells = " | ".join(f"{value / count * 1000:.0f} ms ({value / elapsed:.0%})" for value in shares)
            print(f"| {batch_size} | {count / elapsed:.2f} | {cells} |")


if __name__ == "__main__":
    main()
