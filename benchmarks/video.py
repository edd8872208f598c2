"""Frames per second of `faceptor predict` on a video (`faceptor.video.perception.perceive_video`: frames decoded
on a background thread, the bundled detector on worker threads beside the model, the faces of many frames batched
through the `face-perception` pipeline, then tracked), on a clip this script makes, and decoding alone.

    python benchmarks/video.py [--models demo base] [--devices cpu cuda] [--frames 96] [--base-frames 8]
                               [--width 640] [--height 360] [--batch-size 8] [--dtype float32] [--threads N]

The clip: the bundled astronaut photo (one face) and its mirror image (a second face) sliding across a grey
`--width` x `--height` frame at 30 frames a second, H.264. Models: the bundled demo model, and Faceptor-Base
(ViT-B/16, random weights: speed does not depend on them; `--dtype bfloat16` on a GPU). The first frames of each
run (one batch) warm up and are not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from faceptor import FaceptorConfig, FaceptorImageProcessor, FaceptorModel  # noqa: E402
from faceptor.commands.predict import load_pipeline  # noqa: E402
from faceptor.demo_model import DEMO_MODEL_DIR  # noqa: E402
from faceptor.video import read_frames  # noqa: E402
from faceptor.video.perception import perceive_video  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
CLIP_FPS = 30


def write_clip(path: Path, frames: int, width: int, height: int) -> None:
    """Two faces (the photo and its mirror image) sliding towards each other across a grey frame."""
    photo = Image.open(ASSET).convert("RGB")
    side = height * 2 // 3
    face = photo.crop((0, 0, photo.width, photo.width)).resize((side, side))
    mirrored = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        travel = max(1, width // 2 - side)
        for index in range(frames):
            canvas = Image.new("RGB", (width, height), (128, 128, 128))
            shift = round(travel * index / max(1, frames - 1))
            canvas.paste(face, (shift, height // 6))
            canvas.paste(mirrored, (width - side - shift, height // 6))
            frame = av.VideoFrame.from_ndarray(np.asarray(canvas), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_frames_per_second(clip: Path) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in read_frames(clip))
    return count / (time.perf_counter() - start)


def measure(model_dir: str, device: str, dtype: str, clip: Path, frames: int, batch_size: int) -> dict:
    face_pipeline = load_pipeline(model_dir, device, dtype)
    # The first batch warms up (kernels, the detector's sessions) and is not timed.
    warm_up = iter(perceive_video(face_pipeline, clip, batch_size=batch_size))
    for _ in range(batch_size):
        next(warm_up)
    warm_up.close()
    start, counted, faces, tracks = time.perf_counter(), 0, 0, set()
    for _, result in perceive_video(face_pipeline, clip, batch_size=batch_size):
        counted += 1
        faces += len(result["faces"])
        tracks.update(face["track_id"] for face in result["faces"])
        if counted == frames:
            break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "frames": counted,
        "faces": faces,
        "tracks": len(tracks),
        "frames/s": counted / seconds,
        "faces/s": faces / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["demo", "base"], default=["demo"])
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    parser.add_argument("--frames", type=int, default=96, help="frames timed per run (demo model; and on a GPU)")
    parser.add_argument("--base-frames", type=int, default=8, help="frames timed for Faceptor-Base on the CPU")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--batch-size", type=int, default=8, help="faces per forward pass (and frames per call)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__} threads "
        f"{torch.get_num_threads()}, PyAV {av.__version__}, dtype {args.dtype}"
    )
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.mp4"
        longest = max(args.frames, args.base_frames) + args.batch_size
        write_clip(clip, longest, args.width, args.height)
        print(
            f"clip: {longest} frames, {args.width}x{args.height}, {CLIP_FPS} fps; decoding alone "
            f"{decode_frames_per_second(clip):.1f} frames/s"
        )
        models = {}
        if "demo" in args.models:
            models["demo model"] = str(DEMO_MODEL_DIR)
        if "base" in args.models:
            base = os.path.join(folder, "faceptor-base")
            FaceptorModel(FaceptorConfig.from_preset("faceptor-base")).eval().save_pretrained(base)
            FaceptorImageProcessor().save_pretrained(base)
            models["Faceptor-Base"] = base
        print("| model | device | dtype | frames | faces | tracks | frames/s | faces/s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, model_dir in models.items():
            for device in args.devices:
                on_cpu = device == "cpu"
                frames = args.base_frames if name == "Faceptor-Base" and on_cpu else args.frames
                row = measure(model_dir, device, args.dtype, clip, frames, args.batch_size)
                print(
                    f"| {name} | {device} | {args.dtype} | {row['frames']} | {row['faces']} | {row['tracks']} | "
                    f"{row['frames/s']:.2f} | {row['faces/s']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
