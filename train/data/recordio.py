"""Face recognition data in insightface's formats, read without MXNet: MS1MV3's RecordIO pack
(`train.rec` + `train.idx`) and the verification pairs (`lfw.bin`, `cfp_fp.bin`, ...).

RecordIO framing (dmlc-core). A file is a sequence of records, each `uint32 magic = 0xCED7230A`,
`uint32 lrecord` (upper 3 bits a continuation flag, lower 29 bits the payload length), the payload and zero
padding to a multiple of 4 bytes. A payload that itself contains the magic word at a 4-byte-aligned position
is written in parts at those positions: flag 1 for the first part, 2 for middle parts, 3 for the last (0 for
a whole record), the magic words themselves left out; a reader joins the parts with the magic word.
The `.idx` file holds lines `<key>\\t<byte offset of the record>`.

Image records (MXNet's `recordio.pack`): a 24-byte IRHeader `<IfQQ` (flag, label, id, id2); when
`flag > 0` the label is instead `flag` float32 values following the header; then the JPEG bytes. In
insightface packs, record 0 is a header whose label (a, b) says images are the keys 1 .. a-1.

Design: `read_ms1mv3` returns a `datasets.Dataset` of `key` and `offset` columns (built from the `.idx`
alone, one int64 pair per image; 5.2M rows take ~80 MB) carrying a `DecodeRecords` transform, so indexing it
reads the record, decodes the JPEG and returns `{"image": PIL RGB, "label": int identity, "key": int}`.
Nothing is decoded at build time, random access works (shuffling samplers, `select`), and the transform holds
only the file path, so the dataset pickles into DataLoader workers, each opening its own file handle.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import pyarrow as pa

from .common import (
    DatasetFormatError,
    build_dataset,
    expect_fields,
    image_feature,
    parse_int,
    read_lines,
    require_dir,
    require_file,
    resolve_split,
)

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_FRAME = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


class IRHeader(NamedTuple):
    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def unpack_record(payload: bytes, source: str | os.PathLike | None = None) -> tuple[IRHeader, bytes]:
    """(header, the bytes after it) of an MXNet image record."""
    if len(payload) < _IR_HEADER.size:
        raise DatasetFormatError(f"record of {len(payload)} bytes is shorter than its 24-byte header", source)
    flag, label, id1, id2 = _IR_HEADER.unpack_from(payload)
    body = payload[_IR_HEADER.size :]
    if flag > 0:
        if len(body) < 4 * flag:
            raise DatasetFormatError(f"record header announces {flag} labels but the record is too short", source)
        label = tuple(float(value) for value in np.frombuffer(body[: 4 * flag], dtype="<f4"))
        body = body[4 * flag :]
    return IRHeader(flag, label, id1, id2), body


def frame_record(payload: bytes) -> bytes:
    """`payload` framed as dmlc-core's RecordIO writer frames it (split at aligned magic words)."""
    pieces, start = [], 0
    for position in range(0, len(payload) - len(payload) % 4, 4):
        if payload[position : position + 4] == _MAGIC_BYTES:
            flag = 1 if start == 0 else 2
            pieces.append(_FRAME.pack(RECORDIO_MAGIC, (flag << 29) | (position - start)) + payload[start:position])
            start = position + 4
    flag = 3 if start else 0
    tail = payload[start:]
    pieces.append(_FRAME.pack(RECORDIO_MAGIC, (flag << 29) | len(tail)) + tail + b"\0" * (-len(tail) % 4))
    return b"".join(pieces)


def read_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of a RecordIO `.idx` file, in file order."""
    import pyarrow.csv as pa_csv

    path = require_file(path, "RecordIO index")
    try:  # fast path (5.2M lines in about a second); the line-by-line parser below names a bad line
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=["key", "offset"]),
            parse_options=pa_csv.ParseOptions(delimiter="\t"),
            convert_options=pa_csv.ConvertOptions(column_types={"key": pa.int64(), "offset": pa.int64()}),
        )
        keys, offsets = table.column("key").to_numpy(), table.column("offset").to_numpy()
        if table.num_rows and not (table.column("key").null_count or table.column("offset").null_count):
            return keys.astype(np.int64), offsets.astype(np.int64)
    except (pa.ArrowInvalid, ValueError):
        pass
    keys, offsets = [], []
    for number, line in read_lines(path):
        fields = line.split("\t") if "\t" in line else line.split()
        expect_fields(fields, 2, path, number)
        keys.append(parse_int(fields[0], path, number, "key"))
        offsets.append(parse_int(fields[1], path, number, "offset"))
    if not keys:
        raise DatasetFormatError("empty RecordIO index", path)
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def _select_keys(keys: np.ndarray, offsets: np.ndarray, wanted: np.ndarray, idx_path: Path):
    """(wanted, their offsets), or a DatasetFormatError naming the first wanted key the index lacks."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    positions = np.searchsorted(sorted_keys, wanted).clip(max=max(len(keys) - 1, 0))
    found = sorted_keys[positions] == wanted if len(keys) else np.zeros(len(wanted), bool)
    if not found.all():
        missing = int(wanted[np.argmin(found)])
        message = f"header record announces keys 1..{len(wanted)} but key {missing} is not indexed"
        raise DatasetFormatError(message, idx_path)
    return wanted, offsets[order[positions]]


class RecordIOReader:
    """Random access to the records of a RecordIO file. Picklable: the file is (re)opened on first use in
    each process."""

    def __init__(self, rec_path: str | os.PathLike):
        self.rec_path = str(require_file(rec_path, "RecordIO file"))
        self._handle = None
        self._pid = None

    def __getstate__(self):
        return {"rec_path": self.rec_path, "_handle": None, "_pid": None}

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def read_at(self, offset: int) -> bytes:
        """The payload of the record starting at byte `offset`, its parts joined."""
        handle = self._file()
        handle.seek(offset)
        parts, position = [], offset
        while True:
            frame = handle.read(_FRAME.size)
            if len(frame) < _FRAME.size:
                raise DatasetFormatError(f"truncated record at byte {position}", self.rec_path)
            magic, lrecord = _FRAME.unpack(frame)
            if magic != RECORDIO_MAGIC:
                raise DatasetFormatError(f"no RecordIO magic at byte {position} (found {magic:#010x})", self.rec_path)
            flag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            expected = (0, 1) if not parts else (2, 3)
            if flag not in expected:
                raise DatasetFormatError(f"unexpected continuation flag {flag} at byte {position}", self.rec_path)
            data = handle.read(length)
            if len(data) < length:
                raise DatasetFormatError(f"truncated record at byte {position}", self.rec_path)
            handle.seek(-length % 4, os.SEEK_CUR)
            position += _FRAME.size + length + (-length % 4)
            parts.append(data)
            if flag in (0, 3):
                return _MAGIC_BYTES.join(parts)


class DecodeRecords:
    """`datasets` transform: a batch of `offset`s -> the records' decoded images and identity labels."""

    def __init__(self, rec_path: str | os.PathLike):
        self.reader = RecordIOReader(rec_path)

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        images, labels = [], []
        for offset in batch["offset"]:
            header, body = unpack_record(self.reader.read_at(int(offset)), self.reader.rec_path)
            label = header.label if isinstance(header.label, float) else header.label[0]
            labels.append(int(label))
            with Image.open(io.BytesIO(body)) as picture:
                images.append(picture.convert("RGB"))
        return {"image": images, "label": labels, "key": list(batch["key"])}


MS1MV3_SPLITS = ("train",)


def read_ms1mv3(root: str | os.PathLike, split: str = "train", *, decode: bool = True):
    """MS1MV3 (insightface's `ms1m-retinaface-t1`: 5,179,510 aligned 112 x 112 faces of 93,431 identities).

    Layout::

        root/train.rec   RecordIO pack of JPEG image records
        root/train.idx   lines `<key>\\t<offset>`

    As the official reader: if record 0 is a header record (flag > 0), the images are the keys
    1 .. label[0] - 1, otherwise every key of the index. Split: `train` only.
    Stored columns: `key` (int64) and `offset` (int64, byte offset in train.rec). With `decode=True` (default)
    the dataset carries a `DecodeRecords` transform, so `dataset[i]` is `{"image": PIL RGB, "label": int,
    "key": int}`; `.map()`/`.with_format()` drop it (apply `DecodeRecords(root / "train.rec")` yourself then).
    """
    root = require_dir(root, "MS1MV3 root folder")
    split = resolve_split("recog_ms1mv3", split, MS1MV3_SPLITS)
    rec_path = require_file(root / f"{split}.rec", "RecordIO file")
    idx_path = root / f"{split}.idx"
    keys, offsets = read_index(idx_path)
    reader = RecordIOReader(rec_path)
    try:
        first = np.flatnonzero(keys == 0)
        if len(first):
            header, _ = unpack_record(reader.read_at(int(offsets[first[0]])), rec_path)
            if header.flag > 0:
                wanted = np.arange(1, int(header.label[0]), dtype=np.int64)
                keys, offsets = _select_keys(keys, offsets, wanted, idx_path)
    finally:
        reader.close()
    features = datasets.Features({"key": datasets.Value("int64"), "offset": datasets.Value("int64")})
    dataset = build_dataset({"key": keys, "offset": offsets}, features, f"MS1MV3 {split} (RecordIO offsets)")
    if decode:
        dataset.set_transform(DecodeRecords(rec_path))
    return dataset


# ------------------------------------------------------------------------------------------- verification

VERIFICATION_TARGETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw", "cfp_ff", "vgg2_fp")

VERIFICATION_FEATURES = datasets.Features(
    {"image1": image_feature(), "image2": image_feature(), "is_same": datasets.Value("bool")}
)


class _BinUnpickler(pickle.Unpickler):
    """Unpickles insightface's `.bin` files (a tuple of a list of JPEG bytes and a list of bools) and
    nothing else: the only globals it resolves are `_codecs.encode` (how Python 3 pickles bytes in protocol
    2) and NumPy's array reconstruction (some packs hold arrays of bytes)."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def __init__(self, handle, path: Path):
        super().__init__(handle, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DatasetFormatError(f"refusing to unpickle global {module}.{name}", self.path)


def load_verification_bin(path: str | os.PathLike) -> tuple[list[bytes], list[bool]]:
    """(encoded images, is-same flags) of an insightface verification `.bin`; images 2i and 2i + 1 form
    pair i."""
    path = require_file(path, "verification .bin file")
    with open(path, "rb") as handle:
        try:
            contents = _BinUnpickler(handle, path).load()
        except DatasetFormatError:
            raise
        except Exception as error:  # a corrupt pickle raises any of several exception types
            raise DatasetFormatError(f"not a verification pickle ({type(error).__name__}: {error})", path) from None
    if not isinstance(contents, (tuple, list)) or len(contents) != 2:
        raise DatasetFormatError("expected a pickled (bins, issame_list) pair", path)
    bins, same = contents
    images = []
    for index, item in enumerate(bins):
        if isinstance(item, np.ndarray):
            item = item.tobytes()
        if not isinstance(item, (bytes, bytearray)):
            raise DatasetFormatError(f"image {index} is a {type(item).__name__}, not encoded bytes", path)
        images.append(bytes(item))
    flags = []
    for index, item in enumerate(same):
        if not isinstance(item, (bool, np.bool_, int, np.integer)):
            raise DatasetFormatError(f"issame entry {index} is a {type(item).__name__}, not a bool", path)
        flags.append(bool(item))
    if len(images) != 2 * len(flags):
        raise DatasetFormatError(f"{len(images)} images for {len(flags)} pairs (expected twice as many)", path)
    return images, flags


def read_verification(root: str | os.PathLike, split: str):
    """A 1:1 verification set in insightface's `.bin` format (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

    Layout::

        root/lfw.bin  root/cfp_fp.bin  root/agedb_30.bin  root/calfw.bin  root/cplfw.bin  (cfp_ff, vgg2_fp)

    The split is the target's name. Each file is a pickle of (bins: list of JPEG bytes, issame_list), read
    with a restricted unpickler; row i is the pair (bins[2i], bins[2i + 1]). Columns: image1, image2
    (Image() holding the JPEG bytes, decoded on access) and is_same (bool).
    """
    root = require_dir(root, "verification folder")
    split = resolve_split("verification", split, VERIFICATION_TARGETS)
    images, flags = load_verification_bin(root / f"{split}.bin")
    columns = {
        "image1": [{"bytes": data, "path": None} for data in images[0::2]],
        "image2": [{"bytes": data, "path": None} for data in images[1::2]],
        "is_same": flags,
    }
    return build_dataset(columns, VERIFICATION_FEATURES, f"verification {split}")
