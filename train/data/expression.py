"""Facial expression datasets: AffectNet, RAF-DB (basic) and FERPlus.

All three are remapped to AffectNet's order, as the official readers do (`EXPRESSIONS`: 0 neutral,
1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger). Columns: image (Image(), path),
label (ClassLabel of `EXPRESSIONS`), file_name (path relative to the image folder).
"""

from __future__ import annotations

import csv
import os

import datasets

from faceptor.task_presets import EXPRESSIONS

from .common import (
    DatasetFormatError,
    FileIndex,
    build_dataset,
    check_label,
    expect_fields,
    first_existing,
    image_feature,
    parse_int,
    read_lines,
    require_dir,
    require_file,
    resolve_split,
)

EXPRESSION_FEATURES = datasets.Features(
    {
        "image": image_feature(),
        "label": datasets.ClassLabel(names=list(EXPRESSIONS)),
        "file_name": datasets.Value("string"),
    }
)


def _dataset(images: list, labels: list, names: list, description: str) -> datasets.Dataset:
    return build_dataset({"image": images, "label": labels, "file_name": names}, EXPRESSION_FEATURES, description)


# ---------------------------------------------------------------------------------------------- AffectNet

AFFECTNET_SPLITS = ("train", "test")
_AFFECTNET_CSV = {"train": "training.csv", "test": "validation.csv"}
_AFFECTNET_CLASSES = range(11)  # 0-6 the seven basic expressions, 7 contempt, 8 none, 9 uncertain, 10 no face


def read_affectnet(root: str | os.PathLike, split: str):
    """AffectNet, the seven basic expressions (contempt, none, uncertain and no-face images dropped, as the
    official reader keeps labels < 7; AffectNet's own codes are already in `EXPRESSIONS` order).

    Either layout works::

        root/label/train.txt, root/label/test.txt   lines `<relative path> <label>` (the official reader's)
        root/data/<relative path>

        root/Manually_Annotated_file_lists/training.csv     (the AffectNet download: columns
        root/Manually_Annotated_file_lists/validation.csv    subDirectory_filePath, face_x, face_y, face_width,
        root/Manually_Annotated_Images/<subDirectory_filePath>   face_height, facial_landmarks, expression, ...)
        (or root/Manually_Annotated/Manually_Annotated_Images/)

    Splits: `train` and `test` (AffectNet's validation set, its public test set).
    """
    root = require_dir(root, "AffectNet root folder")
    split = resolve_split("affect_affectnet", split, AFFECTNET_SPLITS)
    files = FileIndex()
    images, labels, names = [], [], []
    list_path = root / "label" / f"{split}.txt"
    if list_path.is_file():
        image_root = require_dir(root / "data", "AffectNet image folder")
        for number, line in read_lines(list_path):
            fields = line.split()
            expect_fields(fields, 2, list_path, number)
            label = check_label(parse_int(fields[1], list_path, number, "label"), _AFFECTNET_CLASSES, list_path, number)
            if label < len(EXPRESSIONS):
                images.append(str(files.require(image_root / fields[0], list_path, number)))
                labels.append(label)
                names.append(fields[0])
        return _dataset(images, labels, names, f"AffectNet {split}")
    csv_name = _AFFECTNET_CSV[split]
    csv_path = first_existing(
        root,
        [f"Manually_Annotated_file_lists/{csv_name}", csv_name],
        f"AffectNet label file (label/{split}.txt or Manually_Annotated_file_lists/{csv_name})",
    )
    image_root = first_existing(
        root,
        ["Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images"],
        "AffectNet image folder",
        kind="dir",
    )
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        for row in rows:
            number = rows.line_num
            if not row or (number == 1 and row[0] == "subDirectory_filePath"):
                continue
            expect_fields(row, 7, csv_path, number, at_least=True)
            label = check_label(parse_int(row[6], csv_path, number, "expression"), _AFFECTNET_CLASSES, csv_path, number)
            if label < len(EXPRESSIONS):
                images.append(str(files.require(image_root / row[0], csv_path, number)))
                labels.append(label)
                names.append(row[0])
    return _dataset(images, labels, names, f"AffectNet {split}")


# ------------------------------------------------------------------------------------------------- RAF-DB

RAFDB_SPLITS = ("train", "test")
# RAF-DB's labels 1..7 (surprise, fear, disgust, happiness, sadness, anger, neutral) -> `EXPRESSIONS`.
RAFDB_TO_EXPRESSIONS = (-1, 3, 4, 5, 1, 2, 6, 0)


def read_rafdb(root: str | os.PathLike, split: str, *, aligned: bool = True):
    """RAF-DB basic emotions (http://www.whdeng.cn/raf/model1.html).

    Layout (the RAF-DB download)::

        root/EmoLabel/list_patition_label.txt   lines `train_00001.jpg 5` / `test_0001.jpg 7` (labels 1..7)
        root/Image/aligned/train_00001_aligned.jpg ...   (`aligned=False`: root/Image/original/train_00001.jpg)

    or the official reader's flattened copy: `root/label.txt` (same lines) with `root/data/<name>`.
    Splits: `train` (12,271) and `test` (3,068), from the name prefix. Labels are remapped to `EXPRESSIONS`
    with `RAFDB_TO_EXPRESSIONS` (1 surprise -> 3, 2 fear -> 4, 3 disgust -> 5, 4 happiness -> 1,
    5 sadness -> 2, 6 anger -> 6, 7 neutral -> 0).
    """
    root = require_dir(root, "RAF-DB root folder")
    split = resolve_split("affect_rafdb", split, RAFDB_SPLITS)
    list_path = root / "EmoLabel" / "list_patition_label.txt"
    if list_path.is_file():
        image_root = require_dir(root / "Image" / ("aligned" if aligned else "original"), "RAF-DB image folder")
        suffix = "_aligned" if aligned else ""
    else:
        if not (root / "label.txt").is_file():
            raise DatasetFormatError("missing annotation file (or label.txt with data/)", list_path)
        list_path = root / "label.txt"
        image_root = require_dir(root / "data", "RAF-DB image folder")
        suffix = ""
    files = FileIndex()
    images, labels, names = [], [], []
    for number, line in read_lines(list_path):
        fields = line.split()
        expect_fields(fields, 2, list_path, number)
        raw = check_label(parse_int(fields[1], list_path, number, "label"), range(1, 8), list_path, number)
        if fields[0].split("_", 1)[0] != split:
            continue
        name = fields[0]
        if suffix:
            stem, extension = os.path.splitext(name)
            name = f"{stem}{suffix}{extension}"
        images.append(str(files.require(image_root / name, list_path, number)))
        labels.append(RAFDB_TO_EXPRESSIONS[raw])
        names.append(name)
    return _dataset(images, labels, names, f"RAF-DB {split}")


# ------------------------------------------------------------------------------------------------ FERPlus

FERPLUS_SPLITS = ("train", "val", "test", "train_val")
# FERPlus's vote columns, in fer2013new.csv order.
FERPLUS_CLASSES = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
# FERPlus class -> `EXPRESSIONS` (the official FERPlusDataset_V2 mapping); contempt (7) has no 7-class slot.
FERPLUS_TO_EXPRESSIONS = (0, 1, 3, 2, 6, 5, 4)
_FERPLUS_USAGE = {"train": ("Training",), "val": ("PublicTest",), "test": ("PrivateTest",)}
_FERPLUS_USAGE["train_val"] = _FERPLUS_USAGE["train"] + _FERPLUS_USAGE["val"]
_FERPLUS_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}


def ferplus_majority(votes: list[float]) -> int | None:
    """FERPlus's majority label of one image's ten vote counts, or None: votes of 1 are dropped as outliers,
    then the top class wins if it holds more than half of the remaining votes."""
    kept = [value if value > 1 else 0.0 for value in votes]
    total = sum(kept)
    top = max(range(len(kept)), key=kept.__getitem__)
    if total <= 0 or kept[top] <= 0.5 * total:
        return None
    return top


def read_ferplus(root: str | os.PathLike, split: str):
    """FERPlus (https://github.com/microsoft/FERPlus): FER2013 faces relabelled by ten annotators.

    Layout (FERPlus's repository after its `generate_training_data.py` wrote the PNGs)::

        root/fer2013new.csv      header `Usage,Image name,neutral,...,contempt,unknown,NF`, then one row per image
        root/FER2013Train/fer0000000.png ...   (Usage Training)
        root/FER2013Valid/...                  (PublicTest)
        root/FER2013Test/...                   (PrivateTest)

    Each image gets the majority label of its votes (`ferplus_majority`); images without a majority, or
    whose majority is unknown, not-a-face or contempt (no slot among the seven `EXPRESSIONS`), and rows with
    an empty image name are dropped. Labels are remapped with `FERPLUS_TO_EXPRESSIONS`, the official mapping.
    Splits: `train`, `val`, `test` and `train_val` (what the official reader trains on).
    """
    root = require_dir(root, "FERPlus root folder")
    split = resolve_split("affect_ferplus", split, FERPLUS_SPLITS)
    csv_path = require_file(root / "fer2013new.csv")
    usages = _FERPLUS_USAGE[split]
    files = FileIndex()
    images, labels, names = [], [], []
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        for row in rows:
            number = rows.line_num
            if not row or (number == 1 and row[0] == "Usage"):
                continue
            expect_fields(row, 2 + len(FERPLUS_CLASSES), csv_path, number)
            usage, name = row[0].strip(), row[1].strip()
            if usage not in _FERPLUS_FOLDERS:
                raise DatasetFormatError(f"unknown Usage {usage!r}", csv_path, number)
            votes = [float(parse_int(value, csv_path, number, "vote count")) for value in row[2:]]
            if usage not in usages or not name:
                continue
            winner = ferplus_majority(votes)
            if winner is None or winner >= len(FERPLUS_TO_EXPRESSIONS):
                continue
            relative = f"{_FERPLUS_FOLDERS[usage]}/{name}"
            images.append(str(files.require(root / relative, csv_path, number)))
            labels.append(FERPLUS_TO_EXPRESSIONS[winner])
            names.append(relative)
    return _dataset(images, labels, names, f"FERPlus {split}")
