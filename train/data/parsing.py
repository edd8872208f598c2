"""Face parsing datasets: CelebAMask-HQ (19 classes) and LaPa (11 classes, with 106 landmarks)."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np

from .common import (
    DatasetFormatError,
    FileIndex,
    build_dataset,
    expect_fields,
    first_existing,
    image_feature,
    landmarks_feature,
    parse_float,
    parse_int,
    read_lines,
    require_dir,
    require_file,
    resolve_split,
)

# ------------------------------------------------------------------------------------------ CelebAMask-HQ

CELEBAMASK_HQ_SPLITS = ("train", "val", "test", "train_val")
_CELEBA_PARTITION = {"train": (0,), "val": (1,), "test": (2,), "train_val": (0, 1)}
# Part files in the official 'all' label order: the part at position i paints class i + 1, later parts
# painting over earlier ones (so hair covers skin, eyeglasses cover eyes, ...).
CELEBAMASK_HQ_PARTS = (
    "neck",
    "skin",
    "cloth",
    "l_ear",
    "r_ear",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "nose",
    "mouth",
    "l_lip",
    "u_lip",
    "hair",
    "eye_g",
    "hat",
    "ear_r",
    "neck_l",
)
CELEBAMASK_HQ_MASK_SIZE = 512


def merge_part_masks(part_paths: list[str], size: int = CELEBAMASK_HQ_MASK_SIZE) -> np.ndarray:
    """The (size, size) uint8 class map of one CelebAMask-HQ face: `part_paths[i]` (a part PNG, or "" where
    the face has no such part) paints class i + 1 wherever its pixels are non-zero, in order."""
    from PIL import Image

    label = np.zeros((size, size), np.uint8)
    for value, path in enumerate(part_paths, start=1):
        if path:
            with Image.open(path) as part:
                mask = np.asarray(part.convert("L"))
            if mask.shape != label.shape:
                raise DatasetFormatError(f"part mask is {mask.shape[1]}x{mask.shape[0]}, expected {size}x{size}", path)
            label[mask > 0] = value
    return label


class MergePartMasks:
    """`datasets` transform turning a batch's `mask_parts` column into a `mask` column of PIL "L" images
    (values 0..18 in `CELEBAMASK_HQ_CLASSES` order), merged when the rows are accessed."""

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        out = {key: value for key, value in batch.items() if key != "mask_parts"}
        out["mask"] = [Image.fromarray(merge_part_masks(parts), "L") for parts in batch["mask_parts"]]
        return out


def read_celebamask_hq(root: str | os.PathLike, split: str, *, merge_masks: bool = True):
    """CelebAMask-HQ (https://github.com/switchablenorms/CelebAMask-HQ), 19 classes.

    Layout (the CelebAMask-HQ download plus CelebA's partition file)::

        root/
          CelebA-HQ-img/<id>.jpg                         (1024 x 1024; the official reader resizes to 512)
          CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png   (512 x 512 part masks)
          CelebA-HQ-to-CelebA-mapping.txt                (header, then `idx orig_idx orig_file`)
          list_eval_partition.txt                        (CelebA's: `<orig_file> <0|1|2>`)

    The split is CelebA's partition of each face's original image, as the official (FaRL) reader does:
    `train` (24,183), `val` (2,993), `test` (2,824), `train_val` (27,176, what Faceptor trains on).

    Masks are merged from the per-part PNGs in the official order (see `CELEBAMASK_HQ_PARTS`). Merging reads up
    to 18 PNGs per face, so it is not done at build time: the stored columns are `image` (Image(), path),
    `mask_parts` (18 paths in class order 1..18, "" for a part the face lacks) and `id` (int); with
    `merge_masks=True` (default) the dataset carries a `MergePartMasks` transform, so indexing it returns
    `{"image": PIL RGB, "mask": PIL "L" with values 0..18, "id"}`. `.map()`/`.with_format()` drop that
    transform; apply `MergePartMasks()` (or `merge_part_masks`) yourself then.
    """
    root = require_dir(root, "CelebAMask-HQ root folder")
    split = resolve_split("parsing_celebam", split, CELEBAMASK_HQ_SPLITS)
    mapping_path = require_file(root / "CelebA-HQ-to-CelebA-mapping.txt")
    partition_path = first_existing(
        root, ["list_eval_partition.txt", "Eval/list_eval_partition.txt"], "CelebA's list_eval_partition.txt"
    )
    original_to_hq: dict[str, int] = {}
    for number, line in read_lines(mapping_path):
        if ".jpg" not in line:  # the header line
            continue
        fields = line.split()
        expect_fields(fields, 3, mapping_path, number)
        original_to_hq[fields[2]] = parse_int(fields[0], mapping_path, number, "idx")
    groups = _CELEBA_PARTITION[split]
    hq_ids = []
    for number, line in read_lines(partition_path):
        if ".jpg" not in line:
            continue
        fields = line.split()
        expect_fields(fields, 2, partition_path, number)
        group = parse_int(fields[1], partition_path, number, "partition")
        if fields[0] in original_to_hq and group in groups:
            hq_ids.append(original_to_hq[fields[0]])
    image_root = require_dir(root / "CelebA-HQ-img", "CelebA-HQ-img folder")
    mask_root = require_dir(root / "CelebAMask-HQ-mask-anno", "CelebAMask-HQ-mask-anno folder")
    files = FileIndex()
    listings: dict[int, frozenset[str]] = {}
    images, parts, ids = [], [], []
    for hq_id in hq_ids:
        images.append(str(files.require(image_root / f"{hq_id}.jpg", mapping_path, None, f"image of idx {hq_id}")))
        folder = hq_id // 2000
        if folder not in listings:
            listing = mask_root / str(folder)
            listings[folder] = frozenset(os.listdir(listing)) if listing.is_dir() else frozenset()
        names = [f"{hq_id:05d}_{part}.png" for part in CELEBAMASK_HQ_PARTS]
        paths = [str(mask_root / str(folder) / name) if name in listings[folder] else "" for name in names]
        if not any(paths):
            raise DatasetFormatError(f"no part mask of idx {hq_id} in {mask_root / str(folder)}", mapping_path)
        parts.append(paths)
        ids.append(hq_id)
    features = datasets.Features(
        {
            "image": image_feature(),
            "mask_parts": datasets.Sequence(datasets.Value("string"), length=len(CELEBAMASK_HQ_PARTS)),
            "id": datasets.Value("int32"),
        }
    )
    dataset = build_dataset({"image": images, "mask_parts": parts, "id": ids}, features, f"CelebAMask-HQ {split}")
    if merge_masks:
        dataset.set_transform(MergePartMasks())
    return dataset


# ------------------------------------------------------------------------------------------------- LaPa

LAPA_SPLITS = ("train", "val", "test", "train_val")


def read_lapa_landmarks(path: Path) -> np.ndarray:
    """The (106, 2) points of a LaPa landmark file: `106` then 106 lines `x y`."""
    values = []
    for number, line in read_lines(path):
        values.extend((number, token) for token in line.split())
    if not values:
        raise DatasetFormatError("empty landmark file", path, 1)
    number, count = values[0]
    if parse_int(count, path, number, "point count") != 106 or len(values) != 1 + 106 * 2:
        where = values[-1][0]
        raise DatasetFormatError(f"expected '106' and 212 coordinates, found {len(values) - 1} values", path, where)
    coordinates = [parse_float(token, path, number, "coordinate") for number, token in values[1:]]
    return np.asarray(coordinates, dtype=np.float32).reshape(106, 2)


def read_lapa(root: str | os.PathLike, split: str):
    """LaPa (https://github.com/JDAI-CV/lapa-dataset), 11 classes and 106 landmarks.

    Layout::

        root/<train|val|test>/images/<name>.jpg
                             /labels/<name>.png      (class map, values 0..10 in `LAPA_CLASSES` order)
                             /landmarks/<name>.txt   (`106` then 106 lines `x y`)

    Splits: `train` (18,168), `val` (2,000), `test` (2,000), `train_val` (what Faceptor trains on).
    Columns: image (Image(), path), mask (Image(), path of the label PNG), landmarks (106, 2), file_name
    (`<subfolder>/<name>`). The mask values index `LAPA_CLASSES`.
    """
    root = require_dir(root, "LaPa root folder")
    split = resolve_split("parsing_lapa", split, LAPA_SPLITS)
    subfolders = ("train", "val") if split == "train_val" else (split,)
    files = FileIndex()
    images, masks, points, names = [], [], [], []
    for subfolder in subfolders:
        image_root = require_dir(root / subfolder / "images", f"LaPa {subfolder}/images folder")
        for image in sorted(path for path in image_root.iterdir() if path.suffix == ".jpg"):
            label = files.require(root / subfolder / "labels" / f"{image.stem}.png", image, None, "label mask")
            landmark_path = require_file(root / subfolder / "landmarks" / f"{image.stem}.txt", "landmark file")
            images.append(str(image))
            masks.append(str(label))
            points.append(read_lapa_landmarks(landmark_path))
            names.append(f"{subfolder}/{image.stem}")
    features = datasets.Features(
        {
            "image": image_feature(),
            "mask": image_feature(),
            "landmarks": landmarks_feature(106),
            "file_name": datasets.Value("string"),
        }
    )
    columns = {"image": images, "mask": masks, "landmarks": points, "file_name": names}
    return build_dataset(columns, features, f"LaPa {split}")
