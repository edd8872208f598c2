import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, tiny_config
from faceptor import FaceptorModel
from faceptor.train.evaluation import evaluate_task, per_sample_errors, save_worst_cases
from faceptor.train.metrics.tasks import metric_for_task
from faceptor.train.synthetic import SyntheticTaskDataset


def small_model():
    tasks = [
        {"name": "align_300w", "kind": "landmarks", "num_queries": 68, "input_size": 32},
        {"name": "parsing_celebam", "kind": "parsing", "num_queries": 19, "input_size": 32},
        {"name": "age_utkface", "kind": "age", "num_queries": 101, "input_size": 32},
        {"name": "affect_rafdb", "kind": "classification", "num_queries": 7, "input_size": 32},
        {"name": "biattr_celeba", "kind": "multilabel", "num_queries": 40, "input_size": 32},
        {"name": "recog_ms1mv3", "kind": "embedding", "input_size": 32},
    ]
    return FaceptorModel(tiny_config(tasks=tasks)).eval()


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("task", ["align_300w", "parsing_celebam", "age_utkface", "affect_rafdb", "biattr_celeba"])
def test_scores_are_the_metric_of_the_predictions(task, model, tmp_path):
    spec = model.config.task_specs[task].to_dict()
    dataset = SyntheticTaskDataset(spec, num_samples=5)
    scores, predictions, references, errors = evaluate_task(model, task, dataset, batch_size=2, progress=False)
    assert len(predictions) == len(references) == len(errors) == 5
    direct = metric_for_task(spec["kind"], task)
    extra = {"boxes": np.tile([-0.5, -0.5, 31.5, 31.5], (5, 1))} if getattr(direct, "needs_boxes", False) else {}
    expected = direct.compute(predictions=predictions, references=references, **extra)
    for name, value in expected.items():
        if np.isscalar(value):
            assert scores[name] == pytest.approx(value, nan_ok=True), name
    np.testing.assert_allclose(errors, per_sample_errors(spec["kind"], predictions, references))
    pictures = save_worst_cases(spec["kind"], dataset, predictions, references, errors, str(tmp_path), count=2)
    assert len(pictures) == 2 and all(Image.open(path).size[1] == 32 for path in pictures)


def test_cli_evaluate_on_a_dataset_layout(model_dir, tmp_path, capsys):
    (tmp_path / "utk" / "data").mkdir(parents=True)
    for index, age in enumerate([23, 35, 51, 67, 40]):
        pixels = (np.random.default_rng(index).random((40, 40, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(tmp_path / "utk" / "data" / f"{age}_0_0_2017010{index}.jpg.chip.jpg")
    arguments = [
        "evaluate",
        "--model",
        str(model_dir),
        "--task",
        "age_utkface",
        "--data",
        str(tmp_path / "utk"),
        "--split",
        "all",
        "--quiet",
        "--output",
        str(tmp_path / "scores.json"),
        "--visualize",
        str(tmp_path / "worst"),
    ]
    status, out, err = run_cli(arguments, capsys)
    assert status == 0, err
    scores = json.loads((tmp_path / "scores.json").read_text())["scores"]
    assert set(scores) >= {"mae", "cs_5"} and scores["mae"] >= 0
    assert "mae" in out and len(list((tmp_path / "worst").iterdir())) == 5
    elsewhere = [str(tmp_path / "nowhere") if part == str(tmp_path / "utk") else part for part in arguments]
    status, out, err = run_cli(elsewhere, capsys)
    assert status == 2 and out == ""
    assert err == f"faceptor: error: {tmp_path / 'nowhere'}: no such dataset folder\n"


def test_cli_evaluate_verification(model_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = []
    for _ in range(40):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    (tmp_path / "bins").mkdir()
    with open(tmp_path / "bins" / "lfw.bin", "wb") as handle:
        pickle.dump((images, [True, False] * 10), handle, protocol=4)
    arguments = [
        "evaluate",
        "--model",
        str(model_dir),
        "--task",
        "recog_ms1mv3",
        "--data",
        str(tmp_path / "bins"),
        "--split",
        "lfw",
        "--quiet",
        "--output",
        str(tmp_path / "lfw.json"),
    ]
    status, _, err = run_cli(arguments, capsys)
    assert status == 0, err
    scores = json.loads((tmp_path / "lfw.json").read_text())["scores"]
    assert 0.0 <= scores["accuracy"] <= 1.0 and "best_threshold" in scores
