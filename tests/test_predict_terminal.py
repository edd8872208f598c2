"""`faceptor predict` for a person at a terminal: a readable summary per image and a closing line instead of the JSON
records, a progress bar that counts the inputs that exist; through a pipe (here: captured output) the JSON lines
stay as they were. The terminal is forced by patching the check, as a test has none."""

from __future__ import annotations

import json

from PIL import Image
from skimage import data

from conftest import run_cli
from faceptor.commands import predict

TASKS = ["--tasks", "age_morph2", "parsing_celebam"]


def _photos(folder) -> tuple[str, str]:
    face = folder / "face.png"
    Image.fromarray(data.astronaut()[30:150, 165:260]).save(face)
    return str(face), str(folder / "missing.jpg")


def test_a_terminal_gets_a_summary_per_image_and_a_closing_line(model_dir, tmp_path, monkeypatch, capsys):
    face, missing = _photos(tmp_path)
    monkeypatch.setattr(predict, "is_terminal", lambda stream=None: True)
    arguments = ["predict", face, missing, "--model", str(model_dir), "--no-detector", *TASKS]
    status, out, err = run_cli(arguments, capsys)

    assert status == 1  # the missing input
    lines = out.splitlines()
    assert not any(line.lstrip().startswith("{") for line in lines), out  # no JSON record
    assert "counts" not in out  # nor the run-length mask
    assert lines[0].startswith(f"{face} (95x120): 1 face")
    # The face's box and the parsing classes counted (CelebAMask's 19 classes, background not counted).
    assert lines[1].startswith("  face 1: box 0, 0, 95, 120") and "parsing: 18 classes" in lines[1]
    assert "age " in lines[1]
    assert lines[-1].startswith("faceptor: 2 images, 1 face, 1 error") and "images/s" in lines[-1]
    assert f"{missing}: no such file" in err
    # Loading and warm-up are steps before the bar, which counts the one input that exists.
    assert "faceptor: loading the model ... " in err and "faceptor: warming up ... " in err
    assert err.index("warming up") < err.index("1/1 [") and "/2 [" not in err


def test_a_pipe_gets_the_json_lines_unchanged(model_dir, tmp_path, capsys):
    face, _ = _photos(tmp_path)
    status, out, err = run_cli(["predict", face, "--model", str(model_dir), "--no-detector", "--quiet", *TASKS], capsys)

    assert status == 0 and err == ""
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["source"] == face and len(record["faces"]) == 1
    assert set(record["faces"][0]["parsing"]["mask"]) == {"size", "counts"}


def test_output_to_a_file_with_a_person_watching_ends_with_where_it_went(model_dir, tmp_path, monkeypatch, capsys):
    face, _ = _photos(tmp_path)
    output = tmp_path / "out.jsonl"
    # stdout is the file, stderr the terminal: the records go to the file, the closing line to the person.
    monkeypatch.setattr(predict, "is_terminal", lambda stream=None: stream is not None)
    arguments = ["predict", face, "--output", str(output), "--visualize", str(tmp_path / "pictures")]
    status, out, err = run_cli([*arguments, "--model", str(model_dir), "--no-detector", *TASKS], capsys)

    assert status == 0 and out == ""
    assert len(output.read_text().splitlines()) == 1
    closing = err.replace("\r", "\n").splitlines()[-1]  # after the bar's last redraw
    assert closing.startswith("faceptor: 1 image, 1 face, 0 errors")
    assert f"results in {output}" in closing and f"pictures in {tmp_path / 'pictures'}" in closing
    assert "faceptor: loading the model ..." in err


def test_a_terminal_gets_readable_lines_for_video_frames_too(model_dir, tmp_path, monkeypatch, capsys):
    import pytest

    pytest.importorskip("av")
    from test_video import write_clip

    clip = write_clip(tmp_path / "clip.mp4")
    monkeypatch.setattr(predict, "is_terminal", lambda stream=None: True)
    arguments = ["predict", str(clip), "--model", str(model_dir), "--no-detector", "--every", "10", *TASKS]
    status, out, _ = run_cli(arguments, capsys)

    assert status == 0
    lines = out.splitlines()
    assert not any(line.lstrip().startswith("{") for line in lines) and "counts" not in out, out
    frames = [line for line in lines if line.startswith(f"{clip} frame ")]
    assert frames and all(": 1 face" in line for line in frames)
