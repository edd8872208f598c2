"""Binary attribute dataset: CelebA's 40 attributes."""

from __future__ import annotations

import os

import datasets
import numpy as np

from faceptor.task_presets import CELEBA_ATTRIBUTES

from .common import (
    DatasetFormatError,
    FileIndex,
    build_dataset,
    expect_fields,
    first_existing,
    image_feature,
    parse_int,
    read_lines,
    require_dir,
    resolve_split,
)

CELEBA_SPLITS = ("train", "val", "test", "trainval")
_CELEBA_PARTITION = {"train": (0,), "val": (1,), "test": (2,), "trainval": (0, 1)}

CELEBA_FEATURES = datasets.Features(
    {
        "image": image_feature(),
        # attribute i is CELEBA_ATTRIBUTES[i]; 0 = "no" (-1 in the file), 1 = "yes"
        "attributes": datasets.Sequence(datasets.ClassLabel(names=["no", "yes"]), length=len(CELEBA_ATTRIBUTES)),
        "file_name": datasets.Value("string"),
    }
)


def _read_partition(path, groups: tuple[int, ...]) -> set[str]:
    chosen = set()
    for number, line in read_lines(path):
        fields = line.split()
        expect_fields(fields, 2, path, number)
        group = parse_int(fields[1], path, number, "partition")
        if group not in (0, 1, 2):
            raise DatasetFormatError(f"partition {group} is not 0, 1 or 2", path, number)
        if group in groups:
            chosen.add(fields[0])
    return chosen


def read_celeba(root: str | os.PathLike, split: str):
    """CelebA attributes (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html).

    Layout (flat, or the download's `Anno/`, `Eval/`, `Img/` folders)::

        root/list_attr_celeba.txt      (or root/Anno/...) line 1 the count, line 2 the 40 attribute names,
                                       then `000001.jpg -1 1 1 -1 ...`
        root/list_eval_partition.txt   (or root/Eval/...) lines `000001.jpg 0` (0 train, 1 val, 2 test)
        root/img_align_celeba/000001.jpg ...   (or root/Img/img_align_celeba/)

    Splits: `train` (162,770), `val` (19,867), `test` (19,962) and `trainval` (182,637, what Faceptor
    trains on; `train_val` is accepted). Columns: image, attributes (40 x ClassLabel no/yes in
    `CELEBA_ATTRIBUTES` order, reordered by name if the file lists them differently), file_name.
    """
    root = require_dir(root, "CelebA root folder")
    split = resolve_split("biattr_celeba", split, CELEBA_SPLITS)
    attr_path = first_existing(root, ["list_attr_celeba.txt", "Anno/list_attr_celeba.txt"], "list_attr_celeba.txt")
    partition_path = first_existing(
        root, ["list_eval_partition.txt", "Eval/list_eval_partition.txt"], "list_eval_partition.txt"
    )
    image_root = first_existing(root, ["img_align_celeba", "Img/img_align_celeba"], "CelebA image folder", "dir")
    chosen = _read_partition(partition_path, _CELEBA_PARTITION[split])
    lines = read_lines(attr_path)
    number, count_line = next(lines, (1, ""))
    fields = count_line.split()
    expect_fields(fields, 1, attr_path, number)
    expected_rows = parse_int(fields[0], attr_path, number, "image count")
    number, header = next(lines, (2, ""))
    names = header.split()
    if sorted(names) != sorted(CELEBA_ATTRIBUTES):
        raise DatasetFormatError(f"expected the 40 CelebA attribute names, found {len(names)} names", attr_path, number)
    order = [names.index(name) for name in CELEBA_ATTRIBUTES]
    files = FileIndex()
    images, attributes, file_names = [], [], []
    rows = 0
    width = len(CELEBA_ATTRIBUTES) + 1
    for number, line in lines:
        rows += 1
        fields = line.split()
        expect_fields(fields, width, attr_path, number)
        if fields[0] not in chosen:
            continue
        values = [parse_int(value, attr_path, number, "attribute value") for value in fields[1:]]
        if any(value not in (-1, 1) for value in values):
            raise DatasetFormatError("attribute values must be -1 or 1", attr_path, number)
        images.append(str(files.require(image_root / fields[0], attr_path, number)))
        attributes.append(bytes(1 if values[index] == 1 else 0 for index in order))
        file_names.append(fields[0])
    if rows != expected_rows:
        raise DatasetFormatError(f"header announces {expected_rows} rows, found {rows}", attr_path, 1)
    attributes = np.frombuffer(b"".join(attributes), dtype=np.uint8).reshape(-1, len(CELEBA_ATTRIBUTES))
    columns = {"image": images, "attributes": attributes, "file_name": file_names}
    return build_dataset(columns, CELEBA_FEATURES, f"CelebA {split}")
