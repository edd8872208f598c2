"""Age estimation datasets: MORPH II and UTKFace. Columns: image (Image(), path), age (float32, years),
file_name (path relative to the image folder)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import datasets

from .common import (
    DatasetFormatError,
    FileIndex,
    build_dataset,
    expect_fields,
    first_existing,
    image_feature,
    parse_float,
    read_lines,
    require_dir,
    require_file,
    resolve_split,
)

AGE_FEATURES = datasets.Features(
    {"image": image_feature(), "age": datasets.Value("float32"), "file_name": datasets.Value("string")}
)

# ------------------------------------------------------------------------------------------------ MORPH II

MORPH2_SPLITS = ("train", "test")
MORPH2_PROTOCOL = "RANDOM_80_20"


def read_morph2(root: str | os.PathLike, split: str, *, protocol: str = MORPH2_PROTOCOL):
    """MORPH II (Album 2) with the random 80/20 protocol of the official reader.

    Layout (as the official reader expects it)::

        root/data/<relative image path>
        root/label/RANDOM_80_20/train.txt     lines `<relative image path> <age>`
        root/label/RANDOM_80_20/test.txt

    Splits: `train` (80 %, ~44,194 faces) and `test` (20 %). `protocol` names another folder under `label/`.
    """
    root = require_dir(root, "MORPH II root folder")
    split = resolve_split("age_morph2", split, MORPH2_SPLITS)
    list_path = require_file(root / "label" / protocol / f"{split}.txt")
    image_root = require_dir(root / "data", "MORPH II image folder")
    files = FileIndex()
    images, ages, names = [], [], []
    for number, line in read_lines(list_path):
        fields = line.split()
        expect_fields(fields, 2, list_path, number)
        age = parse_float(fields[1], list_path, number, "age")
        images.append(str(files.require(image_root / fields[0], list_path, number)))
        ages.append(age)
        names.append(fields[0])
    return build_dataset({"image": images, "age": ages, "file_name": names}, AGE_FEATURES, f"MORPH II {split}")


# ------------------------------------------------------------------------------------------------ UTKFace

UTKFACE_SPLITS = ("train", "test", "all")


def utkface_age(file_name: str, source: Path, line: int | None = None) -> float:
    """The age encoded in a UTKFace file name `<age>_<gender>_<race>_<date&time>.jpg[.chip.jpg]`."""
    head = Path(file_name).name.split("_", 1)[0]
    if not head.isdigit():
        raise DatasetFormatError(f"file name {file_name!r} does not start with '<age>_'", source, line)
    return float(head)


def read_utkface(root: str | os.PathLike, split: str):
    """UTKFace (https://susanqq.github.io/UTKFace/), aligned and cropped faces.

    Layout::

        root/data/<age>_<gender>_<race>_<date&time>.jpg.chip.jpg   (or root/UTKFace/..., the archive's folder)
        root/label/train.csv    header, then rows `<index>,<file name>,...` (the official reader's split,
        root/label/test.csv     the CORAL protocol: ages 21..60, 13,144 train / 3,287 test)

    Splits: `train`, `test` (rows of the csv files; column `file` or, without that header, the second
    column) and `all` (every .jpg in the image folder, no csv needed).
    The age always comes from the file name: CORAL's published csv files hold `age - 21` class indices in
    their `age` column, so it is not trusted.
    """
    root = require_dir(root, "UTKFace root folder")
    split = resolve_split("age_utkface", split, UTKFACE_SPLITS)
    image_root = first_existing(root, ["data", "UTKFace"], "UTKFace image folder", kind="dir")
    if split == "all":
        names = sorted(name for name in os.listdir(image_root) if name.lower().endswith(".jpg"))
        ages = [utkface_age(name, image_root / name) for name in names]
        images = [str(image_root / name) for name in names]
        return build_dataset({"image": images, "age": ages, "file_name": names}, AGE_FEATURES, "UTKFace all")
    list_path = require_file(root / "label" / f"{split}.csv")
    files = FileIndex()
    images, ages, names = [], [], []
    with open(list_path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None:
            raise DatasetFormatError("empty csv file", list_path, 1)
        column = header.index("file") if "file" in header else 1
        for row in rows:
            number = rows.line_num
            if not any(field.strip() for field in row):
                continue
            expect_fields(row, column + 1, list_path, number, at_least=True)
            name = row[column].strip()
            ages.append(utkface_age(name, list_path, number))
            images.append(str(files.require(image_root / name, list_path, number)))
            names.append(name)
    return build_dataset({"image": images, "age": ages, "file_name": names}, AGE_FEATURES, f"UTKFace {split}")
