"""Pictures scaled to faces, measured on the drawn pixels: on a group photo (the bundled astronaut pasted six times
on a 1200-px canvas, faces about 90 px) and on a tight crop (one face filling the picture), the landmark dots are a
small share of each face, the parsing overlay keeps the face's own contrast, the landmarks' colour is no parsing
class's, and the legend sits inside the picture in at most a fifth of its width."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from transformers import pipeline

from faceptor.processing.mask_encoding import decode_label_map, encode_label_map
from faceptor.visualization.drawing import LANDMARK_COLOUR, class_colours, draw_result

WHITE = np.array(LANDMARK_COLOUR)


def _photo() -> Image.Image:
    return Image.open(resources.files("faceptor.assets") / "astronaut.jpg").convert("RGB")


def group_photo() -> np.ndarray:
    canvas = Image.new("RGB", (1200, 640), (90, 110, 130))
    head = _photo().crop((0, 0, 384, 300))
    for corner in [(0, 0), (400, 10), (800, 0), (10, 330), (410, 320), (805, 335)]:
        canvas.paste(head, corner)
    return np.asarray(canvas)


def tight_crop() -> np.ndarray:
    face = _photo().crop((100, 40, 220, 200))  # the face and a little hair: the face box nearly fills it
    return np.asarray(face.resize((360, 480)))


@pytest.fixture(scope="module")
def demo():
    return pipeline("face-perception", device="cpu")  # the bundled demo model: real landmarks and parsing


@pytest.fixture(scope="module", params=["group photo", "tight crop"])
def drawn(request, demo):
    image = group_photo() if request.param == "group photo" else tight_crop()
    result = demo(image)
    assert len(result["faces"]) == (6 if request.param == "group photo" else 1)
    return image, result


def _is(picture: np.ndarray, colour) -> np.ndarray:
    return (picture == np.asarray(colour, np.uint8)).all(axis=-1)


def _side(face: dict) -> float:
    x0, y0, x1, y1 = face["box"]
    return max(x1 - x0, y1 - y0)


def test_landmark_dots_are_a_small_share_of_each_face(drawn):
    image, result = drawn
    black = np.zeros_like(image)
    only_landmarks = {"faces": [{"box": face["box"], "landmarks": face["landmarks"]} for face in result["faces"]]}
    dots = _is(np.asarray(draw_result(black, only_landmarks)), WHITE)
    for face in result["faces"]:
        x0, y0, x1, y1 = (round(value) for value in face["box"])
        margin = round(0.2 * _side(face))
        area = dots[max(y0 - margin, 0) : y1 + margin, max(x0 - margin, 0) : x1 + margin].sum()
        diameter = 2 * np.sqrt(area / len(face["landmarks"]) / np.pi)  # each dot's, from the painted area
        # Seen (at least a pixel or two) and never more than 4% of the face: 68 dots leave its eyes and lips visible.
        assert 1.0 <= diameter <= 0.04 * _side(face), (diameter, _side(face))


def test_the_overlay_keeps_the_faces_contrast(drawn):
    image, result = drawn
    picture = np.asarray(draw_result(image, {"faces": [dict(face, landmarks=[]) for face in result["faces"]]}))
    for face in result["faces"]:
        labels = decode_label_map(face["parsing"]["mask"])
        inside = ndimage.binary_erosion(labels == face["parsing"]["labels"].index("skin"), iterations=2)
        before, after = image[inside].astype(float).mean(-1), picture[inside].astype(float).mean(-1)
        assert after.std() >= 0.7 * before.std()  # the skin's own shading shows through the fill


def test_the_legend_is_inside_the_picture_and_narrow(drawn):
    image, result = drawn
    picture = np.asarray(draw_result(image, result))
    assert picture.shape == image.shape  # no strip added
    components, count = ndimage.label(_is(picture, (255, 255, 255)))
    sizes = ndimage.sum_labels(np.ones(components.shape), components, index=range(1, count + 1))
    rows, columns = ndimage.find_objects(components)[int(np.argmax(sizes))]  # the legend's white box
    assert columns.stop - columns.start <= 0.2 * image.shape[1]
    assert rows.stop - rows.start < image.shape[0]
    painted = {name for face in result["faces"] for name in face["parsing"]["labels"][1:]}
    assert len(painted) >= 5  # a legend with something to list


def test_the_landmarks_colour_is_no_parsing_classs():
    colours = class_colours(32).astype(int)
    assert np.abs(colours - WHITE).sum(axis=1).min() >= 150


def test_a_picture_too_small_for_a_legend_inside_gets_one_below_not_beside():
    image = np.full((60, 50, 3), 128, np.uint8)
    labels = np.zeros((60, 50), np.uint8)
    labels[10:50, 10:40] = 1
    labels[20:30, 15:35] = 2
    parsing = {"mask": encode_label_map(labels), "labels": ["background", "skin", "nose"]}
    picture = draw_result(image, {"faces": [{"box": [10, 10, 40, 50], "parsing": parsing}]})
    assert picture.size[0] == 50 and picture.size[1] > 60
