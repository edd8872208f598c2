import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data
from transformers import pipeline

from conftest import ASTRONAUT_FACE, tiny_config
from faceptor import FaceptorImageProcessor, FaceptorModel
from faceptor.processing.image_loading import ImageLoadError
from faceptor.processing.mask_encoding import decode_label_map


def test_result_schema_and_json_round_trip_on_a_real_photo(face_pipeline, astronaut):
    result = face_pipeline(astronaut, boxes=[ASTRONAUT_FACE])
    assert json.loads(json.dumps(result)) == result
    assert result["image_size"] == [512, 512] and len(result["faces"]) == 1
    face = result["faces"][0]
    assert face["box"] == ASTRONAUT_FACE and face["box_source"] == "given"
    assert set(face) >= {"landmarks", "parsing", "age", "expression", "attributes", "embedding"}
    assert len(face["landmarks"]) == 68 and len(face["embedding"]) == 24
    assert abs(np.linalg.norm(face["embedding"]) - 1) < 1e-3
    assert 0 <= face["age"] <= 100
    assert abs(sum(face["expression"].values()) - 1) < 1e-3 and "neutral" in face["expression"]
    assert len(face["attributes"]) == 40 and "Smiling" in face["attributes"]
    assert face["task_of"]["landmarks"] == "align_300w"
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in face["landmarks"])
    mask = decode_label_map(face["parsing"]["mask"])
    assert mask.shape == (512, 512) and face["parsing"]["labels"][0] == "background"
    assert mask.max() < len(face["parsing"]["labels"])
    assert (mask[:, :100] == 0).all()  # the crop around the face does not reach the left edge


def test_several_faces_tasks_subset_and_whole_image(face_pipeline, astronaut):
    faces = data.lfw_subset()[:3]  # 25x25 face crops
    crops = [(np.stack([face] * 3, axis=-1) * 255).astype(np.uint8) for face in faces]
    results = face_pipeline(crops, tasks=["age_morph2", "affect_rafdb"])
    assert [len(result["faces"]) for result in results] == [1, 1, 1]
    face = results[0]["faces"][0]
    assert face["box_source"] == "whole_image" and face["box"] == [0, 0, 25, 25]
    assert set(face) == {"box", "score", "box_source", "age", "expression", "task_of"}
    two = face_pipeline(astronaut, boxes=[ASTRONAUT_FACE, [300, 300, 400, 420]], tasks=["align_300w"])
    assert len(two["faces"]) == 2
    assert all(300 <= x <= 400 for x, _ in two["faces"][1]["landmarks"])


def test_several_tasks_of_one_kind(model_dir, astronaut):
    config = tiny_config(preset="faceptor-full")
    FaceptorModel(config).save_pretrained(model_dir / "full")
    full = pipeline("face-perception", model=str(model_dir / "full"), detector=None)
    face = full(astronaut, boxes=[ASTRONAUT_FACE], tasks=["age_morph2", "age_utkface"])["faces"][0]
    assert face["task_of"]["age"] == "age_morph2" and set(face["more"]) == {"age_utkface"}


def test_unknown_task_is_the_callers_error(face_pipeline, astronaut):
    with pytest.raises(ValueError, match="no task"):
        face_pipeline(astronaut, tasks=["nope"])


def make_inputs(tmp_path, astronaut):
    """Every kind of awkward input, as files."""
    image = Image.fromarray(astronaut)
    paths = {}
    paths["good"] = tmp_path / "good.jpg"
    image.save(paths["good"])
    paths["grayscale"] = tmp_path / "gray.png"
    image.convert("L").save(paths["grayscale"])
    paths["rgba"] = tmp_path / "rgba.png"
    image.convert("RGBA").save(paths["rgba"])
    paths["cmyk"] = tmp_path / "cmyk.jpg"
    image.convert("CMYK").save(paths["cmyk"])
    paths["palette"] = tmp_path / "palette.png"
    image.convert("P").save(paths["palette"])
    paths["sixteen_bit"] = tmp_path / "deep.png"
    Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257).save(paths["sixteen_bit"])
    paths["exif_rotated"] = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    image.crop((0, 0, 300, 200)).save(paths["exif_rotated"], exif=exif)
    paths["missing"] = tmp_path / "missing.jpg"
    paths["not_an_image"] = tmp_path / "notes.jpg"
    paths["not_an_image"].write_text("not a picture")
    paths["truncated"] = tmp_path / "truncated.jpg"
    paths["truncated"].write_bytes(paths["good"].read_bytes()[:5000])
    paths["zero_bytes"] = tmp_path / "zero.jpg"
    paths["zero_bytes"].write_bytes(b"")
    paths["tiny"] = tmp_path / "tiny.png"
    image.resize((4, 4)).save(paths["tiny"])
    return paths


CONVERTED = ["grayscale", "rgba", "cmyk", "palette", "sixteen_bit", "exif_rotated"]
REFUSED = {
    "missing": "no such file",
    "not_an_image": "not an image file",
    "truncated": "truncated or corrupt",
    "zero_bytes": "empty file",
    "tiny": "too small to hold a face",
}


@pytest.mark.parametrize("case", CONVERTED)
def test_unusual_modes_are_converted_not_refused(case, face_pipeline, astronaut, tmp_path):
    path = make_inputs(tmp_path, astronaut)[case]
    result = face_pipeline(str(path), tasks=["age_morph2"])
    assert len(result["faces"]) == 1 and "error" not in result
    assert result["image_size"] == ([200, 300] if case == "exif_rotated" else [512, 512])


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_files_raise_a_clear_error_naming_the_file(case, face_pipeline, astronaut, tmp_path):
    path = make_inputs(tmp_path, astronaut)[case]
    with pytest.raises(ImageLoadError, match=REFUSED[case]) as error:
        face_pipeline(str(path))
    assert str(path) in str(error.value)


def test_decompression_bombs_are_refused(face_pipeline, astronaut, tmp_path, monkeypatch):
    path = make_inputs(tmp_path, astronaut)["good"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # the photo has 262,144 pixels
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        face_pipeline(str(path))


def test_an_image_without_a_face_says_so(face_pipeline, astronaut):
    result = face_pipeline(astronaut, detector=lambda image: [])
    assert result["faces"] == [] and result["warning"] == "no face found"


def test_a_batch_with_bad_items_keeps_every_good_result(face_pipeline, astronaut, tmp_path):
    paths = make_inputs(tmp_path, astronaut)
    order = ["good", "missing", "grayscale", "truncated", "not_an_image", "good", "tiny"]
    results = face_pipeline([str(paths[name]) for name in order], tasks=["age_morph2"], batch_size=2)
    assert [("error" in result) for result in results] == [False, True, False, True, True, False, True]
    assert results[0]["faces"][0]["age"] == results[5]["faces"][0]["age"]
    assert all(result["source"] == str(paths[name]) for result, name in zip(results, order, strict=True))


@pytest.mark.slow
def test_cli_predict_writes_json_lines_pictures_and_one_line_per_bad_file(model_dir, astronaut, tmp_path):
    (tmp_path / "in").mkdir()
    paths = make_inputs(tmp_path / "in", astronaut)
    chosen = [paths["good"], paths["grayscale"], paths["truncated"], paths["missing"]]
    command = [
        sys.executable,
        "-m",
        "faceptor.commands.cli",
        "predict",
        *map(str, chosen),
        "--model",
        str(model_dir),
        "--no-detector",
        "--output",
        str(tmp_path / "out.jsonl"),
        "--visualize",
        str(tmp_path / "vis"),
        "--tasks",
        "age_morph2",
        "parsing_celebam",
        "align_300w",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    # The entry point's stderr holds one line per bad file and nothing else: no traceback, warning or progress bar.
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and all(line.startswith("faceptor: error:") for line in errors), result.stderr
    assert str(paths["truncated"]) in errors[0] and str(paths["missing"]) in errors[1]
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["source"] for line in lines] == [str(paths["good"]), str(paths["grayscale"])]
    pictures = sorted(path.name for path in (tmp_path / "vis").iterdir())
    assert pictures == ["good.jpg", "gray.jpg"]
    with Image.open(tmp_path / "vis" / "good.jpg") as picture:
        assert picture.size == (512, 512)  # the image's own size: the legend sits inside it


def test_cli_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    # In this process: the entry point's clean stderr is the subprocess test's above.
    from faceptor.commands import cli

    assert cli.main(["predict", "x.jpg", "--model", str(tmp_path / "none")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"faceptor: error: {tmp_path / 'none'}: no such model folder\n" and captured.out == ""


def test_the_bundled_detector_finds_the_face_in_a_full_photo(model_dir, astronaut):
    pytest.importorskip("onnxruntime")
    detecting = pipeline("face-perception", model=str(model_dir))  # detector="auto"
    result = detecting(astronaut, tasks=["align_300w"])
    assert len(result["faces"]) == 1
    face = result["faces"][0]
    assert face["box_source"] == "detector" and face["score"] > 0.9
    x0, y0, x1, y1 = face["box"]
    ix0, iy0 = max(x0, ASTRONAUT_FACE[0]), max(y0, ASTRONAUT_FACE[1])
    ix1, iy1 = min(x1, ASTRONAUT_FACE[2]), min(y1, ASTRONAUT_FACE[3])
    overlap = max(0, ix1 - ix0) * max(0, iy1 - iy0)
    union = (x1 - x0) * (y1 - y0) + 95 * 120 - overlap
    assert overlap / union > 0.4


def test_warped_parsing_crops_in_the_pipeline(model_dir, astronaut, tmp_path):
    FaceptorModel(tiny_config()).save_pretrained(tmp_path / "warped")
    FaceptorImageProcessor(dense_size=64, face_size=32, parsing_warp_factor=0.8).save_pretrained(tmp_path / "warped")
    warped = pipeline("face-perception", model=str(tmp_path / "warped"), detector=None)
    face = warped(astronaut, boxes=[ASTRONAUT_FACE], tasks=["parsing_celebam", "align_300w"])["faces"][0]
    mask = decode_label_map(face["parsing"]["mask"])
    assert mask.shape == (512, 512)
    # The warped crop covers the whole photo, so labels reach beyond the plain crop around the face.
    assert (mask[:, :100] != 0).any()
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in face["landmarks"])


@pytest.mark.slow
def test_cli_predict_compile_gives_the_eager_results(model_dir, astronaut, tmp_path):
    from faceptor.commands import cli

    # Dense and attribute crops of one size: the encoder compiles once (each new size compiles again, ~40 s each
    # on a 2-core CPU), and both kinds of task still go through it.
    model = tmp_path / "model"
    shutil.copytree(model_dir, model, ignore=shutil.ignore_patterns("full"))
    FaceptorImageProcessor(dense_size=32, face_size=32).save_pretrained(model)
    image = tmp_path / "face.png"
    Image.fromarray(astronaut[:200, 150:350]).save(image)
    outputs = {}
    for flag in ([], ["--compile"]):
        target = tmp_path / f"out{len(flag)}.jsonl"
        arguments = ["predict", str(image), "--model", str(model), "--no-detector", "--output", str(target)]
        assert cli.main([*arguments, "--tasks", "age_morph2", "align_300w", "--quiet", *flag]) == 0
        outputs[bool(flag)] = json.loads(target.read_text())["faces"][0]
    assert outputs[True]["age"] == pytest.approx(outputs[False]["age"], abs=1e-3)
    np.testing.assert_allclose(outputs[True]["landmarks"], outputs[False]["landmarks"], atol=1e-2)
