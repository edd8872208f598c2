"""`faceptor predict --output-format parquet`: the rows are the JSON-lines records of the same run (photos and a
video), written in row groups, merged from sharded parts, never left half-written, and refused in one line
without an --output file."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from faceptor.commands.parquet_output import ParquetRecordWriter, read_records
from faceptor.commands.result_json import json_line
from faceptor.commands.sharding import merge_parts, part_path, shard, write_part_line
from faceptor.processing.streaming import StreamItem

pq = pytest.importorskip("pyarrow.parquet", reason="Parquet output needs pyarrow: pip install 'faceptor[video]'")

ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"


def leftovers(folder: Path, name: str) -> list[str]:
    """Files beside `name` in `folder` that a run made on its way (temporary files, lock)."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(name) and path.name != name)


def test_rows_are_the_json_lines_records_of_the_same_run_on_photos_and_a_video(model_dir, tmp_path, capsys):
    pytest.importorskip("av", reason="videos need PyAV: pip install 'faceptor[video]'")
    from test_video import write_clip

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(ASTRONAUT, inputs / "a_photo.jpg")
    (inputs / "b_broken.jpg").write_bytes(b"not a jpeg")  # an error line, in neither output
    write_clip(inputs / "c_clip.mp4", frames=6)
    common = ["predict", str(inputs), "--model", str(model_dir), "--no-detector", "--every", "2", "--quiet"]
    status, _, err = run_cli([*common, "--output", str(tmp_path / "out.jsonl")], capsys)
    assert status == 1 and "b_broken.jpg" in err, err
    status, _, err = run_cli([*common, "--output", str(tmp_path / "out.parquet"), "--output-format", "parquet"], capsys)
    assert status == 1 and "b_broken.jpg" in err, err

    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [record.get("frame") for record in lines] == [None, 0, 2, 4]
    assert list(read_records(tmp_path / "out.parquet")) == lines
    # The shared fields are typed columns, not JSON text: queryable as they are.
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("frame").to_pylist() == [None, 0, 2, 4]
    assert table.column("time_s").to_pylist() == [None, *(record["time_s"] for record in lines[1:])]
    faces = [face for row in table.column("faces").to_pylist() for face in row]
    assert [face["track_id"] for face in faces] == [None, 0, 0, 0]  # one face a record with --no-detector
    assert all(face["box"] and face["landmarks"] and face["embedding"] and face["age"] is not None for face in faces)
    attributes = [line["faces"][0]["attributes"] for line in lines]
    assert [dict(face["attributes"]) for face in faces] == attributes  # a map column: label -> probability
    assert all("parsing" in json.loads(face["other_json"]) for face in faces)  # the model-dependent rest
    assert leftovers(tmp_path, "out.parquet") == []


def test_records_are_written_in_row_groups_and_read_back_exactly(tmp_path):
    records = [
        {"source": "a.jpg", "image_size": [4, 6], "faces": [], "warning": "no face found"},
        {
            "source": "b.jpg",
            "image_size": (4, 6),
            "faces": [{"box": [0.0, 1.5, 2.0, 3.0], "score": None, "age": float("nan"), "box_source": "x"}],
        },
        {
            "source": "c.mp4",
            "frame": 3,
            "time_s": 0.25,
            "image_size": [4, 6],
            "faces": [{"track_id": 7, "box": [1, 2, 3, 4], "expression": {"happy": 0.75, "sad": 0.25}}],
        },
        {"source": "d.jpg", "faces": [{"custom_task": {"nested": [1, 2]}, "more": {"x": 1.0}}], "extra": True},
        {"source": "e.jpg", "image_size": [4, 6], "faces": [{"landmarks": [[1.0, 2.0], [3.0, 4.0]]}]},
    ]
    lines = [json_line(record)[0] for record in records]
    path = tmp_path / "out.parquet"
    writer = ParquetRecordWriter(str(path), rows_per_group=2)
    for index, (record, line) in enumerate(zip(records, lines, strict=True)):
        if index in (0, 2):
            writer.write(line)  # parsed from its JSON line, as the merge of sharded parts does
        else:
            writer.write_record(record, line)  # the record itself, as predict does
    records[4]["faces"][0]["landmarks"][0][0] = -1.0  # changed after it was written: the row keeps what was written
    writer.close()
    writer.close()  # closing twice is harmless, as for a file
    assert pq.ParquetFile(path).num_row_groups == 3
    read = list(read_records(path))
    assert read == [json.loads(line) for line in lines]
    assert read[1]["faces"][0]["age"] is None and read[1]["faces"][0]["non_finite"] == ["age"]
    assert type(read[2]["faces"][0]["box"][0]) is int  # an int box stays an int (kept in other_json, not a float)
    assert pq.read_table(path).column("image_size").to_pylist() == [[4, 6]] * 3 + [None, [4, 6]]
    with pytest.raises(FileExistsError):
        ParquetRecordWriter(str(path))  # never replaces a file
    by_size = tmp_path / "by_size.parquet"
    writer = ParquetRecordWriter(str(by_size), group_bytes=len(lines[0]) + len(lines[1]))
    for line in lines:
        writer.write(line)
    writer.close()
    assert pq.ParquetFile(by_size).num_row_groups == 3  # long records: fewer a row group, memory stays bounded


def test_sharded_parts_merge_into_one_parquet_file_in_input_order(tmp_path):
    from faceptor.commands.parquet_output import open_records_output

    output = str(tmp_path / "out.parquet")
    face = {"box": [0.0, 0.0, 1.0, 1.0], "score": 0.5}
    results = [
        {"source": "0", "faces": [face]},
        {"source": "1", "error": "x"},
        {"source": "2", "faces": []},
        {"source": "3", "faces": [face]},
    ]
    for rank in range(2):
        with open(part_path(output, rank, 2), "w") as part:
            for index, _ in shard([result["source"] for result in results], rank, 2):
                write_part_line(part, index, results[index], json.dumps(results[index]) + "\n")
    statuses = merge_parts(output, 2, output + ".tmp", open_merged=lambda path: open_records_output(path, "parquet"))
    assert statuses == {"ok": 2, "error": 1, "no_face": 1}
    assert list(read_records(output)) == [results[0], results[2], results[3]]  # errors counted, not written
    assert sorted(os.listdir(tmp_path)) == ["out.parquet"]


def test_a_run_that_fails_leaves_no_parquet_file_or_the_earlier_one_untouched(model_dir, tmp_path, capsys, monkeypatch):
    from faceptor.commands import predict

    target = tmp_path / "out.parquet"
    arguments = [
        "predict",
        str(ASTRONAUT),
        "--model",
        str(model_dir),
        "--output",
        str(target),
        "--output-format",
        "parquet",
        "--quiet",
    ]
    status, _, err = run_cli([*arguments, "--tasks", "no_such_task"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and not target.exists()
    assert leftovers(tmp_path, "out.parquet") == []

    target.write_bytes(b"an earlier run's file")

    def dies(face_pipeline, inputs, sink, **options):
        sink(StreamItem(0, str(ASTRONAUT), result={"source": str(ASTRONAUT), "faces": []}))  # half the run written
        raise RuntimeError("killed")

    monkeypatch.setattr(predict, "predict_stream", dies)
    with pytest.raises(RuntimeError, match="killed"):
        run_cli(arguments, capsys)
    assert target.read_bytes() == b"an earlier run's file"
    assert leftovers(tmp_path, "out.parquet") == []


def test_parquet_needs_an_output_file_and_pyarrow_and_jsonl_is_not_written_as_parquet(tmp_path, capsys, monkeypatch):
    status, out, err = run_cli(["predict", str(ASTRONAUT), "--output-format", "parquet"], capsys)
    assert (status, out) == (2, "") and err.count("\n") == 1 and "--output-format parquet needs --output" in err
    target = tmp_path / "out.parquet"
    status, _, err = run_cli(["predict", str(ASTRONAUT), "--output", str(target)], capsys)
    assert status == 2 and err.count("\n") == 1 and "add --output-format parquet" in err and not target.exists()
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    arguments = ["predict", str(ASTRONAUT), "--output", str(target), "--output-format", "parquet"]
    status, _, err = run_cli(arguments, capsys)
    assert status == 2 and err.count("\n") == 1 and "needs pyarrow" in err and not target.exists()
    with pytest.raises(SystemExit) as caught:  # argparse's own one-line usage error
        run_cli(["predict", str(ASTRONAUT), "--output-format", "csv"], capsys)
    assert caught.value.code == 2 and "invalid choice: 'csv'" in capsys.readouterr().err
