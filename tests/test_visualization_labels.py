"""Captions in pictures of group photos: each outside its face box, over no other face or caption, inside the
picture, in a smaller font for smaller faces, with the parsing legend kept."""

import itertools

import numpy as np
import pytest

from faceptor.processing.mask_encoding import encode_label_map
from faceptor.visualization.drawing import MIN_FONT_SIZE, caption_layout, draw_result

CAPTION = {
    "age": 34.2,
    "expression": {"happiness": 0.7, "neutral": 0.3},
    "attributes": {"smiling": 0.9, "eyeglasses": 0.2, "wavy_hair": 0.6},
}


def _overlap(first, second) -> float:
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    return max(width, 0) * max(height, 0)


def _assert_readable(faces: list[dict], width: int, height: int) -> list[dict]:
    """Every face's caption is inside the picture and overlaps no face box and no other caption."""
    layout = caption_layout({"faces": faces}, width, height)
    assert all(caption is not None for caption in layout)
    rectangles = [caption["rectangle"] for caption in layout]
    for rectangle in rectangles:
        assert 0 <= rectangle[0] < rectangle[2] <= width and 0 <= rectangle[1] < rectangle[3] <= height
        assert all(_overlap(rectangle, face["box"]) == 0 for face in faces)
    assert all(_overlap(first, second) == 0 for first, second in itertools.combinations(rectangles, 2))
    return layout


def _crowd(rows: int, columns: int, seed: int = 0) -> list[dict]:
    """Faces of 30-90 px in a jittered grid, 140 px apart: a class photo."""
    rng = np.random.default_rng(seed)
    faces = []
    for row, column in itertools.product(range(rows), range(columns)):
        side = float(rng.uniform(30, 90))
        left, top = 20 + column * 140 + rng.uniform(0, 30), 20 + row * 140 + rng.uniform(0, 30)
        faces.append({"box": [left, top, left + side, top + 1.2 * side], **CAPTION})
    return faces


def test_a_crowd_of_faces_gets_captions_over_no_face_or_caption_inside_the_picture():
    _assert_readable(_crowd(5, 7), 7 * 140 + 20, 5 * 140 + 20)


def test_smaller_faces_get_smaller_fonts():
    faces = [{"box": [20, 20, 50, 56], **CAPTION}, {"box": [300, 20, 460, 212], **CAPTION}]
    small, large = (caption["font"].size for caption in _assert_readable(faces, 800, 400))
    assert MIN_FONT_SIZE <= small < large


def test_a_close_up_caption_goes_beside_the_face_not_over_it():
    faces = [{"box": [60, 20, 340, 330], **CAPTION}]  # the face fills most of the picture
    _assert_readable(faces, 400, 420)


def test_faces_without_captions_get_none_and_no_room_still_gives_a_caption():
    faces = [{"box": [0, 0, 50, 50]}, {"box": [60, 0, 100, 40], **CAPTION}]
    layout = caption_layout({"faces": faces}, 100, 50)  # no free spot anywhere: the least covering one
    assert layout[0] is None and layout[1] is not None
    assert draw_result(np.zeros((50, 100, 3), np.uint8), {"faces": faces}).size == (100, 50)
    whole = {"box": [0, 0, 64, 64], **CAPTION}  # a whole-image box (no detector): its caption still shows
    left, top, right, bottom = caption_layout({"faces": [whole]}, 64, 64)[0]["rectangle"]
    assert left == 0 and 0 <= top < 64 and right > 0 and bottom > 0


def test_the_picture_paints_each_caption_where_the_layout_puts_it_and_keeps_the_legend():
    image = np.full((300, 400, 3), 200, np.uint8)
    mask = np.zeros((300, 400), np.uint8)
    mask[40:100, 40:100] = 1
    parsing = {"mask": encode_label_map(mask), "labels": ["background", "skin"]}
    faces = [{"box": [40, 40, 100, 100], **CAPTION, "parsing": parsing}, {"box": [120, 40, 170, 100], **CAPTION}]
    picture = np.asarray(draw_result(image, {"faces": faces}))
    assert picture.shape[:2] == (300, 400)  # the legend inside, clear of the captions checked below
    for caption in caption_layout({"faces": faces}, 400, 300):
        left, top, right, bottom = (round(value) for value in caption["rectangle"])
        region = picture[top:bottom, left:right]
        assert (region == 0).all(axis=-1).mean() > 0.5 and (region == 255).all(axis=-1).any()  # text on black


@pytest.mark.slow
def test_a_real_group_photo_gets_readable_captions(tmp_path):
    """insightface's group photo (six people), its faces found by the bundled detector, captioned."""
    from transformers import pipeline

    from recipes.demo_model.sources import SourceUnavailable, decode_image, fetch_archive, read_member

    try:
        archive = fetch_archive("pypi", "insightface", "2.1", tmp_path, "wheel")
    except SourceUnavailable as error:
        pytest.skip(f"registry unreachable: {error}")
    image = decode_image(read_member(archive, "insightface/data/images/t1.jpg"))
    faces = pipeline("face-perception", device="cpu", tasks=["align_dlib68"])(image)["faces"]
    assert len(faces) == 6
    captioned = [{**face, **CAPTION} for face in faces]
    _assert_readable(captioned, image.shape[1], image.shape[0])
    assert draw_result(image, {"faces": captioned}).size[1] == image.shape[0]
