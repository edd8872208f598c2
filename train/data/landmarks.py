"""Facial landmark datasets: 300W (68 points), WFLW (98), COFW (29) and AFLW-19 (19).

Every reader returns a `datasets.Dataset` with at least

- `image`: `datasets.Image()` (a file path, decoded on access; COFW's pixels live inside its .mat file, so
  its rows hold PNG bytes instead),
- `landmarks`: `Array2D((N, 2), "float32")`, (x, y) in pixels of that image,
- `box`: the face box (x0, y0, x1, y1) in pixels, computed as the official Faceptor readers
  (`core/data/dataset/align_dataset.py`, from FaRL) compute theirs. The official readers hand boxes over as
  (y0, x0, y1, x1); this package uses (x0, y0, x1, y1) throughout.

Boxes. 300W, WFLW and COFW use the square box of the landmarks' extent: with
x_min = floor(min x), x_max = ceil(max x) (likewise y), the centre is ((x_min + x_max) / 2, (y_min + y_max) / 2)
and the half side max(x_max - x_min, y_max - y_min) / 2. For 300W and WFLW the official readers take that box
from HRNet's csv files as `scale` = side / 200 and `box_half_size = 100 * scale`: the same square (checked on
HRNet's published 300W csv, e.g. ibug/image_99: scale 0.55, centre (364.5, 112.0) from its points; for WFLW's
csv we assume the same rule, which public regenerations of it use). COFW's reader computes it from the points
as above. AFLW-19 uses the box shipped in `AFLWinfo_release.mat`.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import datasets
import numpy as np

from .common import (
    DatasetFormatError,
    FileIndex,
    box_feature,
    build_dataset,
    expect_fields,
    first_existing,
    image_feature,
    landmarks_feature,
    parse_floats,
    parse_int,
    read_lines,
    require_dir,
    require_file,
    resolve_split,
)

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def landmarks_box(points: np.ndarray) -> list[float]:
    """The official square box (x0, y0, x1, y1) around `points` (N, 2): centred on the integer-rounded-out
    extent of the points, with the extent's longer side."""
    x_min, y_min = (math.floor(value) for value in points.min(axis=0))
    x_max, y_max = (math.ceil(value) for value in points.max(axis=0))
    centre_x, centre_y = (x_min + x_max) / 2.0, (y_min + y_max) / 2.0
    half = max(x_max - x_min, y_max - y_min) / 2.0
    return [centre_x - half, centre_y - half, centre_x + half, centre_y + half]


def _landmark_features(num_points: int, **extra) -> datasets.Features:
    return datasets.Features(
        {
            "image": image_feature(),
            "landmarks": landmarks_feature(num_points),
            "box": box_feature(),
            **extra,
            "file_name": datasets.Value("string"),
        }
    )


# --------------------------------------------------------------------------------------------------- 300W

IBUG_300W_SPLITS = {
    "train": ("afw", "helen/trainset", "lfpw/trainset"),  # 3,148 faces
    "common": ("helen/testset", "lfpw/testset"),  # 554
    "challenging": ("ibug",),  # 135
    "full": ("helen/testset", "lfpw/testset", "ibug"),  # 689
    "test": ("300W/01_Indoor", "300W/02_Outdoor"),  # 600, the 300-W challenge's private test set
}
# The official reader's split names (HRNet's csv files).
_300W_OFFICIAL_NAMES = {"valid_common": "common", "valid_challenge": "challenging", "valid": "full"}

# FaRL / the official reader subtract 2.0 from HRNet's 300W csv coordinates (and from the box centre). The csv
# appears to hold the .pts values unchanged (same 6-decimal points; not verifiable without the images here), so
# the default reproduces the coordinates the released checkpoints learned; 0.0 gives the raw .pts values.
OFFICIAL_300W_OFFSET = -2.0


def read_pts(path: Path) -> np.ndarray:
    """Points (N, 2) of an iBUG `.pts` file (`version: 1`, `n_points: N`, `{`, N lines `x y`, `}`)."""
    lines = list(read_lines(path))
    if len(lines) < 3:
        line = lines[-1][0] if lines else 1
        raise DatasetFormatError("truncated .pts file", path, line)
    number, header = lines[1]
    key, _, value = header.partition(":")
    if key.strip() != "n_points":
        raise DatasetFormatError(f"expected 'n_points: N', found {header!r}", path, number)
    count = parse_int(value.strip(), path, number, "n_points")
    if lines[2][1].strip() != "{":
        raise DatasetFormatError(f"expected '{{', found {lines[2][1]!r}", path, lines[2][0])
    body = lines[3 : 3 + count]
    points = []
    for number, line in body:
        fields = line.split()
        if fields == ["}"]:
            raise DatasetFormatError(f"expected {count} points, found {len(points)}", path, number)
        expect_fields(fields, 2, path, number)
        points.append(parse_floats(fields, path, number))
    if len(points) < count:
        raise DatasetFormatError(f"expected {count} points, found {len(points)}", path, lines[-1][0])
    closing = lines[3 + count] if len(lines) > 3 + count else None
    if closing is None or closing[1].strip() != "}":
        where = closing[0] if closing else lines[-1][0]
        raise DatasetFormatError("expected '}' after the points", path, where)
    return np.asarray(points, dtype=np.float32)


def _image_for(pts_path: Path, files: FileIndex) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = pts_path.with_suffix(suffix)
        if files.exists(candidate):
            return candidate
    raise DatasetFormatError("no image next to this annotation (looked for .jpg/.png/.jpeg)", pts_path)


def read_300w(root: str | os.PathLike, split: str, *, coordinate_offset: float = OFFICIAL_300W_OFFSET):
    """300W, 68 points, from the iBUG download (https://ibug.doc.ic.ac.uk/resources/300-W/).

    Layout (each image next to its `.pts` file of the same name)::

        root/
          afw/*.jpg + *.pts
          helen/trainset/*.jpg + *.pts     helen/testset/...
          lfpw/trainset/*.png + *.pts      lfpw/testset/...
          ibug/*.jpg + *.pts
          300W/01_Indoor/*.png + *.pts     300W/02_Outdoor/...   (only for split "test")

    Splits (as HRNet's / the official csv files): `train` (afw + helen/trainset + lfpw/trainset, 3,148),
    `common` (helen/testset + lfpw/testset, 554), `challenging` (ibug, 135), `full` (common + challenging,
    689) and `test` (the 300-W private set, 600). The official names `valid_common`, `valid_challenge` and
    `valid` are accepted too.

    `landmarks` = .pts coordinates + `coordinate_offset` (default -2.0, the official reader's shift; pass 0.0
    for the raw 1-based .pts values); `box` is the official square box of those points.
    Columns: image, landmarks (68, 2), box, file_name (path relative to root).
    """
    root = require_dir(root, "300W root folder")
    split = _300W_OFFICIAL_NAMES.get(split, split)
    split = resolve_split("align_300w", split, tuple(IBUG_300W_SPLITS))
    files = FileIndex()
    images, points, boxes, names = [], [], [], []
    for folder in IBUG_300W_SPLITS[split]:
        directory = require_dir(root / folder, f"300W folder {folder}")
        for pts_path in sorted(directory.glob("*.pts")):
            landmarks = read_pts(pts_path) + np.float32(coordinate_offset)
            if landmarks.shape != (68, 2):
                raise DatasetFormatError(f"expected 68 points, found {len(landmarks)}", pts_path, 2)
            image = _image_for(pts_path, files)
            images.append(str(image))
            points.append(landmarks)
            boxes.append(landmarks_box(landmarks))
            names.append(image.relative_to(root).as_posix())
    columns = {"image": images, "landmarks": points, "box": boxes, "file_name": names}
    return build_dataset(columns, _landmark_features(68), f"300W {split}")


# --------------------------------------------------------------------------------------------------- WFLW

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
WFLW_SPLITS = ("train", "test") + tuple(f"test_{name}" for name in ("largepose",) + WFLW_ATTRIBUTES[1:])
_WFLW_SUBSET_ATTRIBUTE = {f"test_{name}": name for name in WFLW_ATTRIBUTES[1:]} | {"test_largepose": "pose"}
_WFLW_LIST_FOLDERS = ("WFLW_annotations/list_98pt_rect_attr_train_test", "list_98pt_rect_attr_train_test", "")
_WFLW_FIELDS = 98 * 2 + 4 + 6 + 1


def read_wflw(root: str | os.PathLike, split: str):
    """WFLW, 98 points, from the official download (https://wywu.github.io/projects/LAB/WFLW.html).

    Layout::

        root/
          WFLW_images/<event>/<name>.jpg
          WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt

    (the list files may also sit directly under `root` or `root/list_98pt_rect_attr_train_test/`). A list line
    is 196 coordinates x0 y0 x1 y1 ..., the detector rectangle (4), the six attribute flags (pose, expression,
    illumination, make-up, occlusion, blur) and the image path relative to `WFLW_images/`.

    Splits: `train` (7,500), `test` (2,500) and the six test subsets `test_largepose`, `test_expression`,
    `test_illumination`, `test_makeup`, `test_occlusion`, `test_blur` (the test faces whose flag is set, as
    the official `list_98pt_test_*.txt` files).
    Columns: image, landmarks (98, 2), box (official square box of the points), attributes (six bools),
    file_name.
    """
    root = require_dir(root, "WFLW root folder")
    split = resolve_split("align_wflw", split, WFLW_SPLITS)
    part = "train" if split == "train" else "test"
    file_name = f"list_98pt_rect_attr_{part}.txt"
    list_path = first_existing(root, [f"{folder}/{file_name}".lstrip("/") for folder in _WFLW_LIST_FOLDERS], file_name)
    image_root = first_existing(root, ["WFLW_images", "images"], "WFLW image folder", kind="dir")
    subset = _WFLW_SUBSET_ATTRIBUTE.get(split)
    files = FileIndex()
    images, points, boxes, attributes, names = [], [], [], [], []
    for number, line in read_lines(list_path):
        fields = line.split()
        expect_fields(fields, _WFLW_FIELDS, list_path, number)
        landmarks = np.asarray(parse_floats(fields[:196], list_path, number), dtype=np.float32).reshape(98, 2)
        flags = [parse_int(value, list_path, number, "attribute flag") for value in fields[200:206]]
        flags = dict(zip(WFLW_ATTRIBUTES, (bool(value) for value in flags), strict=True))
        if subset is not None and not flags[subset]:
            continue
        image = files.require(image_root / fields[206], list_path, number)
        images.append(str(image))
        points.append(landmarks)
        boxes.append(landmarks_box(landmarks))
        attributes.append(flags)
        names.append(fields[206])
    features = _landmark_features(98, attributes={name: datasets.Value("bool") for name in WFLW_ATTRIBUTES})
    columns = {"image": images, "landmarks": points, "box": boxes, "attributes": attributes, "file_name": names}
    return build_dataset(columns, features, f"WFLW {split}")


# ------------------------------------------------------------------------------------------- MATLAB files


def _is_hdf5(path: Path) -> bool:
    """MATLAB v7.3 files are HDF5 with a 512-byte user block; the HDF5 signature sits at 0, 512, 1024, ..."""
    signature = b"\x89HDF\r\n\x1a\n"
    with open(path, "rb") as handle:
        for offset in (0, 512, 1024, 2048):
            handle.seek(offset)
            if handle.read(8) == signature:
                return True
    return False


def _hdf5_value(handle, node):
    """A MATLAB v7.3 variable as scipy.io.loadmat would return it: numeric arrays in MATLAB's shape (HDF5
    stores them with the axes reversed), cells as object arrays, char arrays as 1-element str arrays."""
    import h5py

    matlab_class = node.attrs.get("MATLAB_class", b"")
    matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
    if node.attrs.get("MATLAB_empty", 0):
        return np.zeros((0, 0))
    data = node[()]
    if node.dtype == h5py.ref_dtype or matlab_class == "cell":
        out = np.empty(data.shape, dtype=object)
        for index in np.ndindex(data.shape):
            out[index] = _hdf5_value(handle, handle[data[index]])
        return out.T
    if matlab_class == "char":
        return np.array(["".join(chr(code) for code in np.asarray(data).T.ravel())])
    return np.asarray(data).T


def load_mat(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The variables `names` of a .mat file, MATLAB v7.3 (HDF5, needs h5py) or older (needs scipy)."""
    path = require_file(path, ".mat file")
    if _is_hdf5(path):
        try:
            import h5py
        except ImportError as error:
            raise ImportError(f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs `pip install h5py`") from error
        with h5py.File(path, "r") as handle:
            missing = [name for name in names if name not in handle]
            if missing:
                raise DatasetFormatError(f"variables {missing} not found (has {sorted(handle)})", path)
            return {name: _hdf5_value(handle, handle[name]) for name in names}
    try:
        import scipy.io
    except ImportError as error:
        raise ImportError(f"reading {path} needs `pip install scipy`") from error
    try:
        contents = scipy.io.loadmat(path, variable_names=list(names))
    except (ValueError, TypeError, OSError) as error:
        raise DatasetFormatError(f"not a readable .mat file ({error})", path) from None
    missing = [name for name in names if name not in contents]
    if missing:
        raise DatasetFormatError(f"variables {missing} not found", path)
    return {name: contents[name] for name in names}


def _cell_items(cell: np.ndarray) -> list:
    """Elements of a MATLAB cell array (any n x 1 or 1 x n shape) in MATLAB's linear order."""
    return list(np.asarray(cell, dtype=object).ravel(order="F"))


def _as_str(value) -> str:
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.ravel()[0]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "U":
            return "".join(value.ravel(order="F").tolist())
        raise TypeError(f"expected a string, found an array of {value.dtype}")
    return str(value)


def _matrix(value: np.ndarray, columns: int, path: Path, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != columns:
        raise DatasetFormatError(f"variable {name} has shape {array.shape}, expected (N, {columns})", path)
    return array


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:  # the official reader repeats grey images into three channels
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint8)), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------- COFW

COFW_SPLITS = ("train", "test")


def read_cofw(root: str | os.PathLike, split: str):
    """COFW, 29 points, from the colour release used by HRNet / FaRL.

    Layout::

        root/COFW_train_color.mat   (IsTr: 1,345 x 1 cell of HxWx3 or HxW uint8 images, phisTr: 1,345 x 87)
        root/COFW_test_color.mat    (IsT: 507 x 1 cell, phisT: 507 x 87)

    MATLAB v7.3 (HDF5) files are read with h5py, older ones with scipy. A `phis` row holds 29 x, 29 y and
    29 occlusion flags. The pixels live inside the .mat file, so (unlike the other readers) each row stores
    its image as PNG bytes, encoded once at build time; grey images are repeated into RGB as the official
    reader does.
    Splits: `train`, `test`. Columns: image, landmarks (29, 2) (the .mat coordinates, as the official reader),
    box (official square box of the points), occluded (29 bools), file_name (`<split>/<index>`).
    """
    root = require_dir(root, "COFW root folder")
    split = resolve_split("align_cofw", split, COFW_SPLITS)
    path = root / f"COFW_{split}_color.mat"
    image_key, points_key = ("IsTr", "phisTr") if split == "train" else ("IsT", "phisT")
    contents = load_mat(path, (image_key, points_key))
    pictures = _cell_items(contents[image_key])
    phis = _matrix(contents[points_key], 87, path, points_key)
    if len(pictures) != len(phis):
        raise DatasetFormatError(f"{image_key} has {len(pictures)} images but {points_key} {len(phis)} rows", path)
    images, points, boxes, occluded, names = [], [], [], [], []
    for index, (pixels, row) in enumerate(zip(pictures, phis, strict=True)):
        pixels = np.asarray(pixels)
        if pixels.ndim not in (2, 3) or pixels.dtype.kind not in "ui":
            raise DatasetFormatError(
                f"{image_key} row {index + 1}: not an image ({pixels.dtype}, {pixels.shape})", path
            )
        landmarks = row[:58].reshape(2, 29).T.astype(np.float32)
        images.append({"bytes": _png_bytes(pixels), "path": None})
        points.append(landmarks)
        boxes.append(landmarks_box(landmarks))
        occluded.append([bool(value) for value in row[58:]])
        names.append(f"{split}/{index}")
    features = _landmark_features(29, occluded=datasets.Sequence(datasets.Value("bool"), length=29))
    columns = {"image": images, "landmarks": points, "box": boxes, "occluded": occluded, "file_name": names}
    return build_dataset(columns, features, f"COFW {split}")


# ---------------------------------------------------------------------------------------------- AFLW-19

AFLW_SPLITS = ("train", "test_full", "test_frontal")
_AFLW_OFFICIAL_NAMES = {"full": "test_full", "frontal": "test_frontal", "test": "test_full"}


def read_aflw(root: str | os.PathLike, split: str, *, num_train: int = 20000):
    """AFLW-19 (the 19-point AFLW protocol of Zhu et al., CVPR 2016) as the official reader loads it.

    Layout::

        root/AFLWinfo_release.mat     (bbox N x 4 [left right top bottom], data N x 38 [x1..x19 y1..y19],
                                       mask_new N x 19 visibility, nameList N x 1 cell, ra 1 x N permutation)
        root/data/flickr/<0|2|3>/<image>.jpg

    Splits (official): `train` = the first 20,000 entries of `ra`, `test_full` = the remaining 4,386,
    `test_frontal` = those of them with all 19 points visible (`full`, `frontal` and `test` are accepted;
    `num_train` moves the 20,000 boundary, for miniature copies).
    Columns: image, landmarks (19, 2), box (the released box, as x0 y0 x1 y1), visible (19 bools), file_name.
    """
    root = require_dir(root, "AFLW root folder")
    split = resolve_split("align_aflw", _AFLW_OFFICIAL_NAMES.get(split, split), AFLW_SPLITS)
    path = root / "AFLWinfo_release.mat"
    info = load_mat(path, ("bbox", "data", "mask_new", "nameList", "ra"))
    bbox = _matrix(info["bbox"], 4, path, "bbox")
    data = _matrix(info["data"], 38, path, "data")
    mask = _matrix(info["mask_new"], 19, path, "mask_new")
    try:
        names = [_as_str(value) for value in _cell_items(info["nameList"])]
    except TypeError as error:
        raise DatasetFormatError(f"nameList: {error}", path) from None
    order = np.asarray(info["ra"]).ravel().astype(np.int64) - 1
    count = len(bbox)
    if not (len(data) == len(mask) == len(names) == count):
        raise DatasetFormatError("bbox, data, mask_new and nameList have different lengths", path)
    if sorted(order.tolist()) != list(range(count)):
        raise DatasetFormatError(f"ra is not a permutation of 1..{count}", path)
    if split == "train":
        indices = order[:num_train]
    else:
        indices = order[num_train:]
        if split == "test_frontal":
            indices = np.asarray([index for index in indices if np.all(mask[index] == 1)], dtype=np.int64)
    image_root = root / "data" / "flickr"
    files = FileIndex()
    images, points, boxes, visible, file_names = [], [], [], [], []
    for index in indices.tolist():
        image = files.require(image_root / names[index], path, None, f"image (nameList entry {index + 1})")
        left, right, top, bottom = bbox[index]
        images.append(str(image))
        points.append(data[index].reshape(2, 19).T.astype(np.float32))
        boxes.append([left, top, right, bottom])
        visible.append([bool(value) for value in mask[index]])
        file_names.append(names[index])
    features = _landmark_features(19, visible=datasets.Sequence(datasets.Value("bool"), length=19))
    columns = {"image": images, "landmarks": points, "box": boxes, "visible": visible, "file_name": file_names}
    return build_dataset(columns, features, f"AFLW-19 {split}")
