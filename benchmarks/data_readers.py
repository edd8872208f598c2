"""Build time and peak memory of the dataset readers on a 10,000-row list-file dataset, showing that rows are
not decoded at build time.

A CelebA layout (`list_attr_celeba.txt`, `list_eval_partition.txt`, `img_align_celeba/`) of `--rows` images is
written to a temporary folder; every image is a symlink to one 178 x 218 JPEG (CelebA's size). The `trainval`
split (2/3 of the rows) is then built and measured: wall time (best of 3), Python peak (tracemalloc, in a
separate build), Arrow memory, growth of the process's peak RSS, and whether any image bytes ended up in the
table. For contrast, decoding 200 rows on access
is timed. A RecordIO pack of `--rows` JPEG records (MS1MV3's format) is measured the same way.

    python benchmarks/data_readers.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from faceptor.task_presets import CELEBA_ATTRIBUTES
from faceptor.train.data import load_face_dataset
from faceptor.train.data.recordio import frame_record


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def jpeg_bytes(width: int = 178, height: int = 218) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_celeba(root: Path, rows: int) -> None:
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    source = root / "source.jpg"
    source.write_bytes(jpeg_bytes())
    rng = np.random.default_rng(1)
    values = rng.choice(["-1", " 1"], size=(rows, len(CELEBA_ATTRIBUTES)))
    with open(root / "list_attr_celeba.txt", "w") as attrs, open(root / "list_eval_partition.txt", "w") as part:
        attrs.write(f"{rows}\n{' '.join(CELEBA_ATTRIBUTES)}\n")
        for index in range(rows):
            name = f"{index + 1:06d}.jpg"
            os.symlink(source, images / name)
            attrs.write(f"{name} {' '.join(values[index])}\n")
            part.write(f"{name} {index % 3}\n")


def write_recordio(root: Path, rows: int) -> None:
    root.mkdir(parents=True)
    payload = jpeg_bytes(112, 112)
    offset = 0
    with open(root / "train.rec", "wb") as rec, open(root / "train.idx", "w") as idx:
        for key in range(rows):
            framed = frame_record(struct.pack("<IfQQ", 0, float(key % 1000), 0, 0) + payload)
            rec.write(framed)
            idx.write(f"{key}\t{offset}\n")
            offset += len(framed)


def measure(name: str, root: Path, split: str, image_column: str | None) -> dict:
    rss_before = peak_rss_mib()
    timings = []
    for _ in range(3):  # timed without tracemalloc, which slows allocation-heavy code several times over
        start = time.perf_counter()
        load_face_dataset(name, root, split)
        timings.append(time.perf_counter() - start)
    build_s = min(timings)
    tracemalloc.start()
    arrow_before = pa.total_allocated_bytes()
    dataset = load_face_dataset(name, root, split)
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result = {
        "rows": len(dataset),
        "build_s": build_s,
        "python_peak_mib": python_peak / 2**20,
        "arrow_mib": (pa.total_allocated_bytes() - arrow_before) / 2**20,
        "table_mib": dataset.data.nbytes / 2**20,
        "peak_rss_growth_mib": peak_rss_mib() - rss_before,
    }
    if image_column is not None:
        column = dataset.data.column(image_column).combine_chunks()
        result["rows_with_image_bytes"] = len(column) - column.field("bytes").null_count
    start = time.perf_counter()
    count = min(200, len(dataset))
    for index in range(count):
        row = dataset[index]
        image = row["image"]
        image.load()
    result["decode_ms_per_row"] = (time.perf_counter() - start) / count * 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        write_celeba(root / "celeba", args.rows)
        write_recordio(root / "ms1m", args.rows)
        print(f"wrote both layouts of {args.rows} rows in {time.perf_counter() - start:.1f} s")
        load_face_dataset("biattr_celeba", root / "celeba", "test")  # warm imports and the page cache
        for label, name, path, split, column in (
            ("CelebA list files, split trainval", "biattr_celeba", root / "celeba", "trainval", "image"),
            ("MS1MV3 RecordIO (.idx)", "recog_ms1mv3", root / "ms1m", "train", None),
        ):
            result = measure(name, path, split, column)
            print(
                f"{label}: " + ", ".join(f"{key}={value:.3f}".rstrip("0").rstrip(".") for key, value in result.items())
            )
    print(f"process peak RSS {peak_rss_mib():.0f} MiB (importing torch/transformers/datasets dominates it)")


if __name__ == "__main__":
    main()
