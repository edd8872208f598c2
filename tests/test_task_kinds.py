"""A task kind lives in one table (`faceptor.task_kinds.TASK_KINDS`): a kind added there with its decoding, and
nowhere else, runs through model -> processor -> pipeline -> JSON -> Parquet -> picture and the demo's words."""

import json

import numpy as np
import pytest
import torch
from transformers import pipeline

from conftest import ASTRONAUT_FACE, tiny_config
from faceptor import FaceptorImageProcessor, FaceptorModel
from faceptor.task_kinds import TASK_KINDS, TaskKind

ANGLES = ["yaw", "pitch", "roll"]


def pose_angles(raw: torch.Tensor) -> torch.Tensor:
    """The new kind's decoding: one query per angle, its output squashed into degrees in (-90, 90)."""
    return torch.tanh(raw.float()) * 90


@pytest.fixture
def pose_kind(monkeypatch):
    kind = TaskKind(
        name="pose",
        category="attribute",
        crop_group="face",
        decoding=pose_angles,
        result_key="pose",
        json_form="named_values",
        pipeline_tag="image-feature-extraction",
        description="head pose (one query per angle)",
        label_prefix="angle",
    )
    monkeypatch.setitem(TASK_KINDS, "pose", kind)
    return kind


@pytest.fixture
def pose_pipeline(pose_kind):
    pose = {"name": "pose_300wlp", "kind": "pose", "labels": ANGLES}
    tasks = [pose, {"name": "align_300w", "kind": "landmarks", "num_queries": 5}]
    model = FaceptorModel(tiny_config(tasks=tasks)).eval()
    processor = FaceptorImageProcessor(dense_size=64, face_size=32)
    return pipeline("face-perception", model=model, image_processor=processor, detector=None)


def test_an_unknown_kind_is_refused_until_the_table_has_it(pose_kind, monkeypatch):
    monkeypatch.delitem(TASK_KINDS, "pose")
    with pytest.raises(ValueError, match="unknown kind 'pose'"):
        tiny_config(tasks=[{"name": "pose_300wlp", "kind": "pose", "labels": ANGLES}])
    with pytest.raises(ValueError, match="json_form"):
        TaskKind("pose", "attribute", "face", pose_angles, "pose", "angles", "image-feature-extraction")


def test_a_kind_added_to_the_table_runs_through_model_processor_and_pipeline(pose_pipeline, astronaut):
    model, processor = pose_pipeline.model, pose_pipeline.image_processor
    (spec,) = model.resolve_tasks(["pose_300wlp"])
    assert spec.category == "attribute" and processor.group_for(spec) == "face"
    inputs = processor(astronaut, boxes=[ASTRONAUT_FACE], tasks=[spec])
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    with torch.no_grad():
        raw = model(**inputs).task_outputs["pose_300wlp"]
    assert raw.shape == (1, 3)
    decoded = processor.post_process({"pose_300wlp": raw}, [spec], [astronaut.shape[:2]], [[ASTRONAUT_FACE]])
    torch.testing.assert_close(decoded["pose_300wlp"], pose_angles(raw))

    face = pose_pipeline(astronaut, boxes=[ASTRONAUT_FACE])["faces"][0]
    assert face["task_of"] == {"pose": "pose_300wlp", "landmarks": "align_300w"}
    assert list(face["pose"]) == ANGLES
    expected = np.round(pose_angles(raw)[0].numpy().astype(np.float64), 4).tolist()
    assert list(face["pose"].values()) == pytest.approx(expected, abs=1e-3)
    assert all(-90 < value < 90 for value in face["pose"].values())
    assert json.loads(json.dumps(face)) == face


def test_a_kind_added_to_the_table_reaches_parquet_picture_and_demo(pose_pipeline, astronaut, tmp_path):
    from faceptor.commands.demo import describe_task
    from faceptor.visualization.drawing import draw_result, face_caption

    result = pose_pipeline(astronaut, boxes=[ASTRONAUT_FACE])
    face = result["faces"][0]

    pytest.importorskip("pyarrow")
    from faceptor.commands.parquet_output import ParquetRecordWriter, face_columns, read_records

    assert face_columns()["pose"] == "scores"  # typed by its JSON form, not kept as JSON text
    writer = ParquetRecordWriter(str(tmp_path / "out.parquet"))
    writer.write_record(result, json.dumps(result))
    writer.close()
    (read,) = read_records(tmp_path / "out.parquet")
    assert read == json.loads(json.dumps(result))
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "out.parquet").to_pylist()[0]["faces"][0]
    assert dict(row["pose"]) == face["pose"] and "pose" not in json.loads(row["other_json"] or "{}")

    lines = face_caption(face)
    assert lines == [f"{name} {value:.1f}" for name, value in face["pose"].items()]
    picture = draw_result(astronaut, result)
    assert picture.size == (astronaut.shape[1], astronaut.shape[0])
    assert not np.array_equal(np.asarray(picture), astronaut)  # the box, landmarks and caption are drawn

    (spec,) = pose_pipeline.model.resolve_tasks(["pose_300wlp"])
    words = describe_task(spec, face["pose"])
    assert words.startswith("yaw ") and "pitch" in words and "roll" in words
