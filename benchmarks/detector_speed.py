"""Milliseconds per photo of the MTCNN detector (processing/detection.py) by backend: one photo at a time and a
batch of 8 (`detect_batch`). Each backend runs in its own process (onnxruntime's spinning threads would slow torch).

    python benchmarks/detector_speed.py [--device cuda] [--repeats 3]

Photos: the bundled astronaut and scikit-image's astronaut, camera, coffee, chelsea, rocket,
immunohistochemistry and grass (300 to 640 px). Best of `--repeats` timed runs after a warm-up.

Measured on this project's 2-core CPU, shared with other jobs (load average 2-5): the same configuration varied up
to 20x between runs, so two runs are shown (torch 2.14 CPU, onnxruntime 1.32, Pillow 12.3; ms per photo):

| backend | resampler | one photo, run 1 | batch of 8, run 1 | one photo, run 2 | batch of 8, run 2 |
|---|---|---|---|---|---|
| onnxruntime | pillow | 601 | 291 | 257 | 85 |
| torch | pillow | 1743 | 466 | 84 | 107 |
| torch | torch (Pillow's arithmetic in torch) | 425 | 440 | 452 | 452 |

Before the port (numpy + Pillow + onnxruntime, one photo at a time, same photos): 279-625 ms per photo.
onnxruntime was the faster network runner batched in both runs, so it stays the CPU default when installed
(`backend="auto"`); torch runs the networks, the crops and the NMS on accelerators. The torch resampler is for
accelerators: on the CPU Pillow's C code is faster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def photos() -> list:
    import importlib.resources

    import numpy as np
    from PIL import Image
    from skimage import data

    def rgb(gray):
        return np.repeat(gray[:, :, None], 3, axis=2)

    with importlib.resources.as_file(importlib.resources.files("faceptor.assets") / "astronaut.jpg") as path:
        asset = np.asarray(Image.open(path).convert("RGB"))
    return [
        asset,
        data.astronaut(),
        rgb(data.camera()),
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        data.immunohistochemistry(),
        rgb(data.grass()),
    ]


def measure(backend: str, device: str, resampler: str, repeats: int) -> dict:
    """ms per photo, one at a time and batched, for one detector configuration (run in a fresh process)."""
    import torch

    from faceptor.processing.detection import MTCNNDetector

    detector = MTCNNDetector(backend=backend, device=device, resampler=resampler)
    images = photos()

    def timed(run) -> float:
        run()  # warm-up: first-call allocations and kernel choices
        best = float("inf")
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best * 1000 / len(images)

    return {
        "single": timed(lambda: [detector(image) for image in images]),
        "batch": timed(lambda: detector.detect_batch(images)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration, print JSON
    args = parser.parse_args()
    if args.one:
        backend, device, resampler = args.one.split(",")
        print(json.dumps(measure(backend, device, resampler, args.repeats)))
        return
    configurations = [("torch", args.device, "auto")]
    if args.device == "cpu":
        configurations = [("onnxruntime", "cpu", "pillow"), ("torch", "cpu", "pillow"), ("torch", "cpu", "torch")]
    print("| backend | device | resampler | one photo (ms) | batch of 8 (ms per photo) |\n|---|---|---|---|---|")
    for backend, device, resampler in configurations:
        command = [sys.executable, __file__, "--one", f"{backend},{device},{resampler}", "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"| {backend} | {device} | {resampler} | failed: {done.stderr.strip().splitlines()[-1]} | |")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {backend} | {device} | {resampler} | {result['single']:.0f} | {result['batch']:.0f} |")


if __name__ == "__main__":
    main()
