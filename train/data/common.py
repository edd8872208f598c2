"""Shared plumbing of the dataset readers: the error type, line-numbered parsing and Arrow table building.

Every reader builds its rows from annotation files only; images are stored as file paths in a
`datasets.Image()` column and decoded when a row is accessed, so building a dataset never touches pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable


class DatasetFormatError(ValueError):
    """A dataset root, annotation file or row does not match the expected layout.

    The message names the file (and the 1-based line number where one applies)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


# Split names the readers accept in place of each other.
_SPLIT_ALIASES = {"trainval": "train_val", "train_val": "trainval", "valid": "val", "validation": "val"}


def resolve_split(dataset: str, split: str, valid: Sequence[str]) -> str:
    """`split` if `dataset` defines it (or an alias such as trainval / train_val), else a DatasetFormatError
    listing the valid split names."""
    if split in valid:
        return split
    alias = _SPLIT_ALIASES.get(split)
    if alias in valid:
        return alias
    raise DatasetFormatError(f"unknown split {split!r} for {dataset}; valid splits: {', '.join(valid)}")


def require_file(path: str | os.PathLike, what: str = "annotation file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"missing {what}", path)
    return path


def require_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DatasetFormatError(f"missing {what}", path)
    return path


def first_existing(root: Path, candidates: Sequence[str], what: str, kind: str = "file") -> Path:
    """The first of `root / candidate` that exists (file or folder per `kind`), else an error naming them."""
    for candidate in candidates:
        path = root / candidate
        if path.is_dir() if kind == "dir" else path.is_file():
            return path
    tried = ", ".join(candidates)
    raise DatasetFormatError(f"missing {what}; looked for {tried}", root)


def read_lines(path: Path, skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of a text file."""
    try:
        handle = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DatasetFormatError("missing annotation file", path) from None
    with handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if skip_blank and not line.strip():
                continue
            yield number, line


def parse_float(token: str, path: Path, line: int, field: str = "value") -> float:
    try:
        return float(token)
    except ValueError:
        raise DatasetFormatError(f"{field} {token!r} is not a number", path, line) from None


def parse_int(token: str, path: Path, line: int, field: str = "value") -> int:
    try:
        return int(token)
    except ValueError:
        raise DatasetFormatError(f"{field} {token!r} is not an integer", path, line) from None


def parse_floats(tokens: Iterable[str], path: Path, line: int, field: str = "coordinate") -> list[float]:
    return [parse_float(token, path, line, field) for token in tokens]


def expect_fields(fields: Sequence[str], count: int, path: Path, line: int, at_least: bool = False) -> None:
    short = len(fields) < count if at_least else len(fields) != count
    if short:
        need = f"at least {count}" if at_least else str(count)
        raise DatasetFormatError(f"expected {need} fields, found {len(fields)}", path, line)


def check_label(label: int, valid: range, path: Path, line: int, field: str = "label") -> int:
    if label not in valid:
        raise DatasetFormatError(f"{field} {label} outside {valid.start}..{valid.stop - 1}", path, line)
    return label


class FileIndex:
    """Existence checks through one cached directory listing per folder (much faster than a stat per file
    on network file systems and for 100k-file folders)."""

    def __init__(self):
        self._listings: dict[Path, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        folder = path.parent
        listing = self._listings.get(folder)
        if listing is None:
            try:
                listing = frozenset(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                listing = frozenset()
            self._listings[folder] = listing
        return path.name in listing

    def require(self, path: Path, source: Path | None = None, line: int | None = None, what: str = "image") -> Path:
        if not self.exists(path):
            if source is None:
                raise DatasetFormatError(f"missing {what}", path)
            raise DatasetFormatError(f"missing {what} {path}", source, line)
        return path


def image_feature() -> datasets.Image:
    return datasets.Image()


def box_feature() -> datasets.Sequence:
    """A face box (x0, y0, x1, y1) in pixels of the stored image, as the rest of the package uses."""
    return datasets.Sequence(datasets.Value("float32"), length=4)


def landmarks_feature(num_points: int) -> datasets.Array2D:
    """(x, y) per point, in pixels of the stored image."""
    return datasets.Array2D(shape=(num_points, 2), dtype="float32")


def _arrow_column(values, feature, arrow_type: pa.DataType) -> pa.Array | None:
    """`values` as an Arrow array of `arrow_type` without per-row Python encoding, for the column kinds the
    readers build in bulk (image paths, scalars, fixed-length rows given as a 2-D numpy array); None for
    anything else."""
    if isinstance(feature, datasets.Image):
        if all(isinstance(value, str) for value in values):
            paths = pa.array(values, pa.string())
            return pa.StructArray.from_arrays([pa.nulls(len(paths), pa.binary()), paths], names=["bytes", "path"])
        if all(isinstance(value, dict) and value.keys() == {"bytes", "path"} for value in values):
            encoded = pa.array([value["bytes"] for value in values], pa.binary())
            paths = pa.array([value["path"] for value in values], pa.string())
            return pa.StructArray.from_arrays([encoded, paths], names=["bytes", "path"])
        return None
    if isinstance(feature, (datasets.Value, datasets.ClassLabel)):
        if isinstance(feature, datasets.ClassLabel) and len(values):
            low, high = int(np.min(values)), int(np.max(values))
            if low < 0 or high >= feature.num_classes:
                raise ValueError(f"class index {low if low < 0 else high} outside 0..{feature.num_classes - 1}")
        return pa.array(values, type=arrow_type)
    if isinstance(values, np.ndarray) and values.ndim == 2 and pa.types.is_fixed_size_list(arrow_type):
        flat = pa.array(values.reshape(-1), type=arrow_type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    return None


def build_dataset(columns: dict[str, list], features: datasets.Features, description: str = "") -> datasets.Dataset:
    """An in-memory `datasets.Dataset` of `columns` typed by `features`. Image columns hold paths (or bytes)
    that `datasets` decodes on access; no pixel is read here. Columns of paths, scalars and 2-D numpy arrays
    go to Arrow directly (a few bytes of overhead per row); others through `datasets`' per-row encoding."""
    missing = set(features) ^ set(columns)
    if missing:
        raise ValueError(f"columns and features differ: {sorted(missing)}")
    info = datasets.DatasetInfo(description=description, features=features)
    schema = features.arrow_schema
    arrays = []
    for name in features:
        array = _arrow_column(columns[name], features[name], schema.field(name).type)
        if array is None:
            return datasets.Dataset.from_dict(columns, features=features, info=info)
        arrays.append(array)
    table = pa.Table.from_arrays(arrays, schema=schema)
    return datasets.Dataset(InMemoryTable(table), info=info, fingerprint=_fingerprint(table, description))


def _fingerprint(table: pa.Table, description: str) -> str:
    """A content hash of the table's Arrow buffers (what `datasets` would otherwise compute by pickling the
    whole table, several times its size in transient memory)."""
    import xxhash  # a dependency of `datasets`

    hasher = xxhash.xxh64(description.encode())
    hasher.update(str(table.schema).encode())
    for column in table.columns:
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    hasher.update(memoryview(buffer))
    return hasher.hexdigest()
