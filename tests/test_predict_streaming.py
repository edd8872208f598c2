"""Streaming `faceptor predict`: ordered, bounded decoding and writing, faces per forward pass, bad inputs, and the
same output sharded over two processes under `accelerate launch`."""

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from transformers import pipeline

from conftest import ACCELERATE_TWO_CPU_PROCESSES, run_cli
from faceptor.commands.predict import predict_stream
from faceptor.commands.sharding import merge_parts, part_path, shard, write_part_line
from faceptor.commands.streaming import OrderedWriter
from faceptor.processing.image_loading import ImageLoadError, load_image
from faceptor.processing.streaming import StreamItem, as_pixels, decode_ahead, decode_on_device, make_decoder

ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos as files (JPEG, PNG, grayscale), an unreadable file and a missing one, in a fixed order."""
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(ASTRONAUT, folder / "a_astronaut.jpg")
    Image.fromarray(data.chelsea()).save(folder / "b_chelsea.png")
    Image.fromarray(data.camera()).save(folder / "c_camera.jpg")
    (folder / "d_broken.jpg").write_bytes(b"not a jpeg at all")
    Image.fromarray(data.coffee()).save(folder / "e_coffee.jpg")
    Image.fromarray(data.astronaut()[:260, 100:330]).save(folder / "f_face.png")
    paths = sorted(str(path) for path in folder.iterdir())
    return [*paths[:2], str(folder / "gone.jpg"), *paths[2:]]


def test_decoding_keeps_input_order_and_stays_within_its_window():
    live, most, lock = [0], [0], threading.Lock()

    def decoder(path):
        time.sleep(random.uniform(0, 0.01))  # workers finish out of order
        if path == "bad":
            raise ImageLoadError("bad: not an image")
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        return np.zeros((16, 16, 3), np.uint8)

    paths = [f"{index}.png" if index % 7 else "bad" for index in range(60)]
    seen = []
    for item in decode_ahead(paths, decoder, workers=4, in_flight=5):
        seen.append(item)
        if item.pixels is not None:
            with lock:
                live[0] -= 1  # the consumer is done with it
    assert [item.index for item in seen] == list(range(60))
    assert [item.input for item in seen] == paths
    assert all((item.result is not None) == (item.input == "bad") for item in seen)
    assert seen[0].result == {"source": "bad", "error": "bad: not an image"}
    assert most[0] <= 5  # never more decoded than the window, however fast the workers


def test_jpegs_decoded_by_torchvision_match_pillow_and_other_inputs_fall_back(photos, tmp_path):
    pytest.importorskip("torchvision")
    # The nvJPEG path's logic, run by torchvision on the CPU here: same pixels and orientation as Pillow's.
    turned = tmp_path / "turned.jpg"
    with Image.open(ASTRONAUT) as image:
        exif = image.getexif()
        exif[0x0112] = 6  # "rotate 90° clockwise to view"
        image.save(turned, exif=exif, quality=95)
    for path in (str(ASTRONAUT), str(turned), photos[1]):  # JPEG, EXIF-turned JPEG, PNG
        decoded, reference = as_pixels(decode_on_device(path, "cpu")), load_image(path)
        decoded = decoded.permute(1, 2, 0).numpy()  # the engine's (3, H, W) pixels, as Pillow's (H, W, 3)
        assert decoded.shape == reference.shape and decoded.dtype == np.uint8
        assert np.abs(decoded.astype(int) - reference).mean() < 1.0
    broken = next(path for path in photos if "broken" in path)
    with pytest.raises(ImageLoadError, match="not an image file"):
        decode_on_device(broken, "cpu")
    assert make_decoder("auto", "cpu") is load_image and make_decoder("pil", "cuda:0") is load_image
    with pytest.raises(ValueError, match="CUDA"):
        make_decoder("device", None)


def test_a_failing_writer_stops_the_producer():
    def write(item):
        if item.index == 3:
            raise OSError("disk full")

    writer = OrderedWriter(write, capacity=2)
    with pytest.raises(OSError, match="disk full"):
        for index in range(1000):  # would block for ever on the full queue if the error were not noticed
            writer.put(StreamItem(index, f"{index}.jpg"))
        writer.close()


class FakePipeline:
    """The engine's contract with a pipeline, on decoded images: one result per image, in order, two faces each."""

    def __init__(self):
        self.calls = []

    def resolve_detector(self, detector):
        return None, "whole_image"

    def run_images(self, images, tasks=None, detector=None, batch_size=None):
        self.calls.append((len(images), batch_size))
        return [{"source": image["source"], "faces": [{"box": [0, 0, 1, 1]}] * 2} for image in images]


def test_memory_stays_flat_over_many_images():
    # Every decoded image is 1 MB; count how many are alive at once while 3,000 stream through.
    live, most, lock = [0], [0], threading.Lock()

    def released():
        with lock:
            live[0] -= 1

    def decoder(path):
        image = np.zeros((1024, 1024, 1), np.uint8)
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        weakref.finalize(image, released)
        return image

    written = []

    def sink(item):
        time.sleep(0.0002 * (item.index % 3))  # a writer slower at times than the model
        written.append((item.index, item.result["source"], len(item.result["faces"])))

    fake = FakePipeline()
    inputs = [(index, f"{index}.jpg") for index in range(3000)]
    predict_stream(fake, inputs, sink, batch_size=4, images_in_flight=8, workers=3, decoder=decoder)
    assert written == [(index, f"{index}.jpg", 2) for index in range(3000)]  # in order, sources are the paths
    assert most[0] <= 8 + 4 + 1  # the decode window, one pipeline call, one being handed over
    assert {size for size, _ in fake.calls} == {4} and {batch for _, batch in fake.calls} == {4}


def test_batch_size_counts_faces_per_forward_pass(model_dir, photos):
    face_pipeline = pipeline("face-perception", model=str(model_dir))
    sizes = []
    forward = face_pipeline.model.forward
    face_pipeline.model.forward = lambda pixel_values, **kwargs: (
        sizes.append(len(pixel_values)) or forward(pixel_values, **kwargs)
    )
    three_faces = lambda image: [[10, 10, 60, 60], [40, 40, 120, 120], [0, 0, 30, 40]]  # noqa: E731
    inputs = list(enumerate(path for path in photos if Path(path).stem in ("a_astronaut", "b_chelsea", "e_coffee")))
    results = []
    predict_stream(
        face_pipeline,
        inputs,
        lambda item: results.append(item.result),
        tasks=["age_morph2"],
        detector=three_faces,
        batch_size=4,
        images_in_flight=2,
        workers=2,
    )
    assert [len(result.get("faces", ())) for result in results] == [3, 3, 3], results
    assert max(sizes) == 4 and sum(sizes) == 9  # nine faces, at most four per forward pass


def test_cli_streams_the_same_results_as_the_pipeline(model_dir, photos, tmp_path, capsys):
    target = tmp_path / "out.jsonl"
    arguments = [
        "predict",
        *photos,
        "--model",
        str(model_dir),
        "--output",
        str(target),
        "--tasks",
        "age_morph2",
        "align_300w",
        "parsing_celebam",
        "--batch-size",
        "2",
        "--images-in-flight",
        "3",
        "--workers",
        "2",
        "--visualize",
        str(tmp_path / "pictures"),
        "--quiet",
    ]
    status, out, err = run_cli(arguments, capsys)
    assert status == 1 and out == ""
    # One line per unreadable input, in input order; photos without a face are results, counted in one line.
    *errors, summary = err.splitlines()
    assert all(line.startswith("faceptor: error:") for line in errors), err
    assert [line.split("/")[-1] for line in errors] == [
        "gone.jpg: no such file",
        "d_broken.jpg: not an image file (or a format Pillow cannot read)",
    ]
    assert summary == "faceptor: 2 of 7 images had no face"
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    good = [path for path in photos if "gone" not in path and "broken" not in path]
    assert [line["source"] for line in lines] == good
    face_pipeline = pipeline("face-perception", model=str(model_dir))
    expected = face_pipeline(good, tasks=["age_morph2", "align_300w", "parsing_celebam"], batch_size=2)
    assert_same_results(lines, expected)
    assert sorted(os.listdir(tmp_path / "pictures")) == sorted(Path(path).stem + ".jpg" for path in good)


def assert_same_results(got, expected, tolerance=1e-5):
    """Equal JSON results, floats to within `tolerance` (different batches may round the last bits apart)."""
    assert len(got) == len(expected)
    for line, reference in zip(got, expected, strict=True):
        flat, flat_reference = _flat(line), _flat(reference)
        assert flat.keys() == flat_reference.keys()
        for key, value in flat.items():
            if isinstance(value, float):
                assert value == pytest.approx(flat_reference[key], abs=tolerance), key
            else:
                assert value == flat_reference[key], key


def _flat(value, prefix=""):
    if isinstance(value, dict):
        return {key: leaf for name in value for key, leaf in _flat(value[name], f"{prefix}/{name}").items()}
    if isinstance(value, list):
        return {key: leaf for index, item in enumerate(value) for key, leaf in _flat(item, f"{prefix}/{index}").items()}
    return {prefix: value}


def test_parts_merge_in_input_order_and_count_bad_inputs(tmp_path):
    output = str(tmp_path / "out.jsonl")
    face = {"box": [0, 0, 1, 1]}
    results = [
        {"source": "0", "faces": [face]},
        {"source": "1", "error": "x"},
        {"source": "2", "faces": []},
        {"source": "3", "faces": [face]},
        {"source": "4", "faces": [face]},
    ]
    for rank in range(2):
        with open(part_path(output, rank, 2), "w") as part:
            for index, _ in shard([result["source"] for result in results], rank, 2):
                write_part_line(part, index, results[index], json.dumps(results[index]) + "\n")
    assert merge_parts(output, 2) == {"ok": 3, "error": 1, "no_face": 1}
    assert [json.loads(line)["source"] for line in open(output)] == ["0", "2", "3", "4"]  # errors not written
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]  # parts removed


@pytest.mark.slow
def test_two_processes_under_accelerate_give_the_single_process_output(model_dir, photos, tmp_path):
    pytest.importorskip("accelerate")
    common = [
        *photos,
        "--model",
        str(model_dir),
        "--tasks",
        "age_morph2",
        "align_300w",
        "parsing_celebam",
        "--batch-size",
        "2",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    alone = [sys.executable, "-m", "faceptor.commands.predict", *common, "--output", str(tmp_path / "one.jsonl")]
    single = subprocess.run(alone, capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 1, single.stderr[-3000:]
    launch = [
        *ACCELERATE_TWO_CPU_PROCESSES,
        "-m",
        "faceptor.commands.predict",
        *common,
        "--output",
        str(tmp_path / "two.jsonl"),
        "--visualize",
        str(tmp_path / "pictures"),
    ]
    sharded = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    # The main process reports the inputs of both: a bad file in either process's shard fails the run.
    assert sharded.returncode != 0
    errors = [line for line in sharded.stderr.splitlines() if line.startswith("faceptor: error:")]
    assert len(errors) == 2, sharded.stderr[-3000:]  # two unreadable
    assert "faceptor: 2 of 7 images had no face" in sharded.stderr.splitlines()
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert [line["source"] for line in two] == [line["source"] for line in one]
    assert len(one) == len(photos) - 2 and any(line["faces"] for line in one)
    assert_same_results(two, one)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("two")) == ["two.jsonl"]
    assert len(os.listdir(tmp_path / "pictures")) == len(one)


def test_a_run_that_dies_leaves_the_earlier_output_whole(model_dir, tmp_path, monkeypatch):
    from faceptor.commands import cli, predict

    target = tmp_path / "out.jsonl"
    target.write_text("an earlier run's line\n")

    def dies(face_pipeline, inputs, sink, **options):
        sink(StreamItem(0, str(ASTRONAUT), result={"source": str(ASTRONAUT), "faces": []}))  # half the run written
        raise RuntimeError("killed")

    monkeypatch.setattr(predict, "predict_stream", dies)
    with pytest.raises(RuntimeError, match="killed"):
        cli.main(["predict", str(ASTRONAUT), "--model", str(model_dir), "--output", str(target), "--quiet"])
    assert target.read_text() == "an earlier run's line\n"
