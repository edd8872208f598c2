"""The image processor and the pipeline follow transformers' conventions: `model(**processor(...))`, one
`post_process`, a `ChunkPipeline` batching faces of many images, crops and decoding on the model's device, and a
saved pipeline that carries no local path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_hub import BLOCK_FACEPTOR
from torchvision.transforms.v2 import functional as tvF
from transformers import pipeline

from conftest import ASTRONAUT_FACE
from faceptor import FaceptorImageProcessor
from faceptor.processing.image_processing_faceptor import square_crop
from faceptor.processing.mask_encoding import decode_label_map, encode_label_map, label_map_runs, runs_to_json


def test_model_takes_the_processors_output_per_size_group(face_pipeline, astronaut):
    model, processor = face_pipeline.model, face_pipeline.image_processor
    specs = model.resolve_tasks(["age_morph2", "affect_rafdb"])
    inputs = processor(astronaut, boxes=[ASTRONAUT_FACE], tasks=specs)
    assert set(inputs) == {"pixel_values", "tasks"} and inputs["pixel_values"].shape == (1, 3, 32, 32)
    with torch.no_grad():
        outputs = model(**inputs)
    assert list(outputs.task_outputs) == ["age_morph2", "affect_rafdb"]
    decoded = processor.post_process(outputs, specs, image_sizes=[astronaut.shape[:2]], boxes=[[ASTRONAUT_FACE]])
    result = face_pipeline(astronaut, boxes=[ASTRONAUT_FACE], tasks=["age_morph2", "affect_rafdb"])["faces"][0]
    assert round(float(decoded["age_morph2"][0]), 2) == result["age"]
    dense = processor(astronaut, boxes=[ASTRONAUT_FACE], group="dense")
    assert set(dense) == {"pixel_values"} and dense["pixel_values"].shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="one group"):
        processor(astronaut, boxes=[ASTRONAUT_FACE], tasks=model.resolve_tasks(["age_morph2", "align_300w"]))


def test_post_process_maps_back_to_the_image(face_pipeline, astronaut):
    model, processor = face_pipeline.model, face_pipeline.image_processor
    specs = model.resolve_tasks(["align_300w", "parsing_celebam"])
    boxes = [[ASTRONAUT_FACE, [300, 300, 400, 420]]]
    with torch.no_grad():
        outputs = model(**processor([astronaut], boxes=boxes, tasks=specs))
    maps = processor.post_process(outputs, specs, [astronaut.shape[:2]], boxes)
    runs = processor.post_process(outputs, specs, [astronaut.shape[:2]], boxes, parsing_format="runs")
    points = maps["align_300w"]
    assert points.shape == (2, 68, 2)
    assert ((points[1, :, 0] >= 300) & (points[1, :, 0] <= 400)).all()
    for label_map, face_runs in zip(maps["parsing_celebam"], runs["parsing_celebam"], strict=True):
        assert label_map.shape == (512, 512) and label_map.dtype == torch.uint8
        assert np.array_equal(decode_label_map(runs_to_json(face_runs, label_map.shape)), label_map.numpy())
    # The parsing sampling is `F.interpolate` to the crop's side, then the crop's part of the image.
    logits = outputs.task_outputs["parsing_celebam"][:1]
    left, top, side = square_crop(ASTRONAUT_FACE, processor.dense_box_scale)
    upsampled = torch.nn.functional.interpolate(logits, (side, side), mode="bilinear", align_corners=False)
    expected = upsampled.argmax(1)[0, max(-top, 0) : 512 - top, max(-left, 0) : 512 - left]
    got = maps["parsing_celebam"][0][max(top, 0) : top + side, max(left, 0) : left + side]
    assert (got == expected[: got.shape[0], : got.shape[1]]).float().mean() > 0.999


def old_crop(image: torch.Tensor, crop, size: int) -> torch.Tensor:
    """The per-face crop that `crop_faces` replaced: pad with black to the square, then an antialiased resize."""
    left, top, side = crop
    patch = tvF.crop(image, top, left, side, side)
    return tvF.resize(patch, [size, size], antialias=True).float()


@pytest.mark.parametrize("box", [ASTRONAUT_FACE, [20, -30, 200, 170], [150, 20, 270, 160]])
def test_batched_crops_match_the_per_face_crops(astronaut, box):
    processor = FaceptorImageProcessor()  # 512-px dense (upsampling) and 112-px face (downsampling) crops
    image = torch.from_numpy(astronaut).permute(2, 0, 1)
    for group in ("dense", "face"):
        size, mean, std, scale = processor.group_settings(group)
        crop = square_crop(box, scale)
        new = processor.crop_faces([image], torch.tensor([crop], dtype=torch.float32), torch.tensor([0]), group)[0]
        new = new * torch.tensor(std)[:, None, None] * 255 + torch.tensor(mean)[:, None, None] * 255
        difference = (new - old_crop(image, crop, size)).abs()
        # The same crop and antialiased resize as the per-face crop the models were trained with.
        assert difference.max() < 1e-3, (group, difference.max())


def test_run_length_encoding_round_trips_and_keeps_maps_apart():
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randint(0, 3, shape, generator=generator, dtype=torch.uint8) for shape in [(7, 5), (1, 1), (4, 9)]]
    maps.append(torch.zeros(0, 4, dtype=torch.uint8))
    maps.append(torch.full((3, 3), int(maps[2].reshape(-1)[-1]), dtype=torch.uint8))  # same label across the seam
    for label_map, runs in zip(maps, label_map_runs(maps), strict=True):
        encoded = runs_to_json(runs, label_map.shape)
        assert json.loads(json.dumps(encoded)) == encoded
        assert np.array_equal(decode_label_map(encoded), label_map.numpy())
    assert encode_label_map(maps[0].numpy()) == encode_label_map(maps[0])
    assert encode_label_map(np.zeros((2, 3), np.uint8)) == {"size": [2, 3], "counts": [[0, 6]]}


def test_faces_of_many_images_share_batches(face_pipeline, astronaut):
    images = [astronaut, astronaut[:300, 100:450], astronaut]
    boxes = [[ASTRONAUT_FACE, [300, 300, 400, 420]], [[65, 30, 160, 150]], None]
    tasks = ["align_300w", "age_morph2", "parsing_celebam"]
    batched = face_pipeline(images, boxes=boxes, tasks=tasks, batch_size=3)
    pairs = zip(images, boxes, strict=True)
    one_by_one = [face_pipeline(image, boxes=box, tasks=tasks, batch_size=1) for image, box in pairs]
    assert [len(result["faces"]) for result in batched] == [2, 1, 1]
    for got, expected in zip(batched, one_by_one, strict=True):
        assert got["source"] == expected["source"] and got["image_size"] == expected["image_size"]
        for face, reference in zip(got["faces"], expected["faces"], strict=True):
            assert face["age"] == pytest.approx(reference["age"], abs=0.02)
            np.testing.assert_allclose(face["landmarks"], reference["landmarks"], atol=0.02)
            assert face["parsing"] == reference["parsing"]


def test_a_generator_streams_and_records_bad_inputs(face_pipeline, astronaut):
    def images():
        yield astronaut
        yield "no/such/file.jpg"
        yield astronaut[:200, 150:350]

    results = list(face_pipeline(images(), tasks=["age_morph2"], batch_size=2))
    assert [("error" in result) for result in results] == [False, True, False]
    assert results[1]["source"] == "no/such/file.jpg" and "no such file" in results[1]["error"]


class BatchDetector:
    """A detector with `detect_batch`, as the bundled one: the pipeline calls it, not `__call__`."""

    def __init__(self):
        self.batches = []

    def __call__(self, image):
        raise AssertionError("detect_batch should be used")

    def detect_batch(self, images):
        self.batches.append(len(images))
        return [[ASTRONAUT_FACE] for _ in images]


def test_a_detector_with_detect_batch_is_called_through_it(face_pipeline, astronaut):
    detector = BatchDetector()
    results = face_pipeline([astronaut, astronaut], tasks=["age_morph2"], detector=detector)
    assert detector.batches and all(result["faces"][0]["box"] == ASTRONAUT_FACE for result in results)
    assert results[0]["faces"][0]["box_source"] == "custom_detector"


def test_a_saved_pipeline_has_no_local_path_and_reloads_with_the_package(face_pipeline, astronaut, tmp_path):
    face_pipeline.save_pretrained(tmp_path / "saved")
    text = (tmp_path / "saved" / "config.json").read_text()
    assert str(os.path.expanduser("~")) not in text and "demo_model" not in text
    entry = json.loads(text)["custom_pipelines"]["face-perception"]
    assert entry["impl"] == "pipeline_faceptor.FacePerceptionPipeline" and "default" not in entry


def test_a_saved_pipeline_loads_by_task_name_with_the_package_imported(face_pipeline, tmp_path):
    face_pipeline.save_pretrained(tmp_path / "saved")
    reloaded = pipeline("face-perception", model=str(tmp_path / "saved"), detector=None)
    assert type(reloaded).__name__ == "FacePerceptionPipeline"


@pytest.mark.slow
def test_a_saved_pipeline_loads_as_remote_code_without_the_package(face_pipeline, astronaut, tmp_path):
    face_pipeline.save_pretrained(tmp_path / "saved")
    np.save(tmp_path / "astronaut.npy", astronaut)
    expected = face_pipeline(astronaut, boxes=[ASTRONAUT_FACE], tasks=["age_morph2", "align_300w"])
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    script = (
        BLOCK_FACEPTOR
        + f"""
import json, sys, numpy as np
from transformers import pipeline
face = pipeline(model={str(tmp_path / "saved")!r}, trust_remote_code=True, detector=None)
assert "faceptor" not in sys.modules, "the package was imported"
image = np.load({str(tmp_path / "astronaut.npy")!r})
result = face(image, boxes={ASTRONAUT_FACE!r}, tasks=["age_morph2", "align_300w"])
assert result == json.load(open({str(tmp_path / "expected.json")!r})), result
print("pipeline-remote-ok")
"""
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipeline-remote-ok" in result.stdout
