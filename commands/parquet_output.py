"""`faceptor predict --output-format parquet`: the records of the JSON lines as one Parquet file, one row per record,
written in row groups as the records arrive (at most `ROWS_PER_GROUP` rows or about `ROW_GROUP_BYTES` of JSON held),
so memory stays flat on large runs.

Columns: `source` (string), `frame` (int64; null for photos), `time_s` (float64; null for photos), `image_size`
(list<int64>), `warning` (string, e.g. "no face found"), `faces` (a list of structs) and `other_json`. Each face's
struct types the fields every model writes alike: `box`, `score`, `box_source`, `track_id` (videos), and the result
key of each task kind (`task_kinds.TASK_KINDS`) typed by its JSON form: `landmarks`, `age`, `expression` and
`attributes` (maps of label to probability) and `embedding`. The rest of a face (the parsing
mask's runs, `task_of`, `more`, `non_finite`, fields of tasks added with `add_task`) differs by model and task, and a
Parquet schema is fixed before the first row, so it goes as a JSON object in the face's `other_json` (null when
empty); so does a value of another type or a null (a non-finite value), which keeps `read_records` exact."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..task_kinds import TASK_KINDS
from .errors import CommandError

OUTPUT_FORMATS = ("jsonl", "parquet")
ROWS_PER_GROUP = 1024  # records buffered before they are written as one row group
ROW_GROUP_BYTES = 32 * 2**20  # or fewer, when their JSON is this long (parsing masks of many faces)
OTHER_COLUMN = "other_json"


def _is_float(value: Any) -> bool:
    return type(value) is float  # exact types: an int or a bool read back as a float would not be the same record


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_string(value: Any) -> bool:
    # A file name that is not UTF-8 holds lone surrogates, which Parquet cannot store: it goes to other_json, escaped.
    return type(value) is str and (value.isascii() or _encodes(value))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_floats(value: Any) -> bool:
    return type(value) in (list, tuple) and all(map(_is_float, value))  # JSON writes a tuple as a list


def _is_ints(value: Any) -> bool:
    return type(value) in (list, tuple) and all(map(_is_int, value))


def _is_points(value: Any) -> bool:
    return type(value) in (list, tuple) and all(map(_is_floats, value))


def _is_scores(value: Any) -> bool:
    return type(value) is dict and all(_is_string(key) and _is_float(score) for key, score in value.items())


def _is_faces(value: Any) -> bool:
    return type(value) in (list, tuple) and all(type(face) is dict for face in value)


KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "float": _is_float,
    "int": _is_int,
    "string": _is_string,
    "floats": _is_floats,
    "ints": _is_ints,
    "points": _is_points,
    "scores": _is_scores,
    "faces": _is_faces,
}
# A face's fields every result has; its tasks' fields follow from the table of task kinds (`face_columns`).
BASE_FACE_COLUMNS = {"box": "floats", "score": "float", "box_source": "string", "track_id": "int"}
# The column type of each JSON form of a task kind's result; a label map differs per model and goes to other_json.
FORM_COLUMNS = {"points": "points", "number": "float", "named_values": "scores", "vector": "floats"}
RECORD_COLUMNS = {
    "source": "string",
    "frame": "int",
    "time_s": "float",
    "image_size": "ints",
    "warning": "string",
    "faces": "faces",
}


def face_columns() -> dict[str, str]:
    """A face's typed columns: `BASE_FACE_COLUMNS`, then per task kind (`task_kinds.TASK_KINDS`) its result key
    typed by its JSON form (`FORM_COLUMNS`), e.g. `landmarks` points, `age` float, `expression` scores."""
    columns = dict(BASE_FACE_COLUMNS)
    for kind in TASK_KINDS.values():
        if kind.json_form in FORM_COLUMNS:
            columns.setdefault(kind.result_key, FORM_COLUMNS[kind.json_form])
    return columns


def _column_types() -> dict:
    """The `pyarrow.DataType` of each column type but "faces"."""
    import pyarrow as pa

    return {
        "float": pa.float64(),
        "int": pa.int64(),
        "string": pa.string(),
        "floats": pa.list_(pa.float64()),
        "ints": pa.list_(pa.int64()),
        "points": pa.list_(pa.list_(pa.float64())),
        "scores": pa.map_(pa.string(), pa.float64()),
    }


def record_schema():
    """The Parquet file's schema (a `pyarrow.Schema`): `RECORD_COLUMNS`, faces as `face_columns()`, `other_json`."""
    import pyarrow as pa

    types = _column_types()

    def fields(columns: dict[str, str]) -> list[tuple[str, pa.DataType]]:
        return [*((name, types[kind]) for name, kind in columns.items()), (OTHER_COLUMN, pa.string())]

    types["faces"] = pa.list_(pa.struct(fields(face_columns())))
    return pa.schema(fields(RECORD_COLUMNS))


def _to_row(record: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """`record` as a row of `columns`: each key whose value is of its column's type in its column, the others
    (nulls included, so that a null is told from an absent key) as one JSON object in `other_json`."""
    row, other = {}, {}
    for key, value in record.items():
        kind = columns.get(key)
        if kind is not None and value is not None and KIND_CHECKS[kind](value):
            row[key] = _copy(value, kind)
        else:
            other[key] = value
    row[OTHER_COLUMN] = json.dumps(other, allow_nan=False) if other else None
    return row


def _copy(value: Any, kind: str) -> Any:
    """A copy of `value` for a row held until its row group is written: the caller may change its result meanwhile."""
    if kind == "faces":
        columns = face_columns()
        return [_to_row(face, columns) for face in value]
    if kind == "points":
        return [list(point) for point in value]
    if kind in ("floats", "ints"):
        return list(value)
    return dict(value) if kind == "scores" else value


def _from_row(row: dict[str, Any], columns: dict[str, str], faces: dict[str, str]) -> dict[str, Any]:
    """The record that `_to_row` made `row` of, with `faces` the face columns of its file."""
    record = {}
    for key, value in row.items():
        if key == OTHER_COLUMN or value is None:
            continue
        if columns[key] == "faces":
            value = [_from_row(face, faces, faces) for face in value]
        elif columns[key] == "scores":
            value = dict(value)  # pyarrow reads a map as (key, value) pairs
        record[key] = value
    if row[OTHER_COLUMN] is not None:
        record.update(json.loads(row[OTHER_COLUMN]))
    return record


class ParquetRecordWriter:
    """A Parquet file at `path` (made new, never replacing a file) taking the records `faceptor predict` writes, one
    row each: `write_record(result, line)` with the JSON line `line` of `result`, or `write(line)` as a text file
    takes it; so the rows are the JSON lines' records exactly (non-finite values nulled and named). A row group is
    written every `rows_per_group` records or `group_bytes` of JSON; `close` writes the rest and the footer."""

    def __init__(
        self, path: str, rows_per_group: int = ROWS_PER_GROUP, group_bytes: int = ROW_GROUP_BYTES, new: bool = True
    ):
        import pyarrow.parquet as pq

        self.schema, self.rows_per_group, self.group_bytes = record_schema(), rows_per_group, group_bytes
        self._file = open(path, "xb" if new else "ab")  # not new: a FIFO or /dev/stdout, written into, not truncated
        try:
            self._writer = pq.ParquetWriter(self._file, self.schema)
        except BaseException:
            self._file.close()
            raise
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def write(self, line: str) -> int:
        self._add(json.loads(line), len(line))
        return len(line)

    def write_record(self, result: dict[str, Any], line: str) -> None:
        # `line` names non_finite only where json_line nulled a value: then only the line holds the record.
        self._add(json.loads(line) if '"non_finite"' in line else result, len(line))

    def _add(self, record: dict[str, Any], size: int) -> None:
        self._rows.append(_to_row(record, RECORD_COLUMNS))
        self._bytes += size
        if len(self._rows) >= self.rows_per_group or self._bytes >= self.group_bytes:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            table, self._rows, self._bytes = pa.Table.from_pylist(self._rows, schema=self.schema), [], 0
            self._writer.write_table(table, row_group_size=max(self.rows_per_group, table.num_rows))

    def close(self) -> None:
        """Writes the buffered rows and the file's footer; once closed, does nothing."""
        if self._writer is None:
            return
        try:
            self._flush()
            self._writer.close()
        finally:
            self._writer = None
            self._file.close()


def write_record(output: Any, result: dict[str, Any], line: str) -> None:
    """Writes `result`, whose JSON line is `line`, to `faceptor predict`'s output: the line to a text file, the
    record to a `ParquetRecordWriter` (which then need not parse the line back)."""
    if isinstance(output, ParquetRecordWriter):
        output.write_record(result, line)
    else:
        output.write(line)


def _column_type_of(data_type: Any) -> str | None:
    """The column type (of `_column_types`) a `pyarrow.DataType` read from a file is; a map is "scores"."""
    import pyarrow as pa

    if pa.types.is_map(data_type):
        return "scores"
    if pa.types.is_list(data_type):
        item = data_type.value_type
        return "points" if pa.types.is_list(item) else "ints" if pa.types.is_integer(item) else "floats"
    return next((kind for kind, known in _column_types().items() if data_type.equals(known)), None)


def read_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a Parquet file `faceptor predict` wrote, as the JSON lines hold them, one row group at a time."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    # The file's own face columns: it may have been written with task kinds this process does not have.
    face_struct = parquet.schema_arrow.field("faces").type.value_type
    faces = {field.name: _column_type_of(field.type) for field in face_struct if field.name != OTHER_COLUMN}
    for group in range(parquet.num_row_groups):
        for row in parquet.read_row_group(group).to_pylist():
            yield _from_row(row, RECORD_COLUMNS, faces)


def check_output_format(output_format: str, output: str | None) -> None:
    """Refuses, in one line, `--output-format parquet` without an `--output` file or without pyarrow, and JSON lines
    into an `--output` named .parquet."""
    if output_format == "parquet":
        if not output:
            raise CommandError("--output-format parquet needs --output FILE.parquet (Parquet is not written to stdout)")
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise CommandError("--output-format parquet needs pyarrow: pip install 'faceptor[video]'") from None
    elif output and output.lower().endswith(".parquet"):
        raise CommandError(f"--output {output}: JSON lines into a .parquet file; add --output-format parquet")


def open_records_output(path: str, output_format: str, new: bool = True) -> IO[str] | ParquetRecordWriter:
    """A new file at `path` (never replacing one; with `new` False, a special file written into) that takes
    `faceptor predict`'s JSON lines through `write`: a text file for "jsonl", a `ParquetRecordWriter` for
    "parquet"."""
    if output_format == "parquet":
        return ParquetRecordWriter(path, new=new)
    return open(path, "x" if new else "a", encoding="utf-8")  # appending: a /dev/stdout sent to a log keeps it
