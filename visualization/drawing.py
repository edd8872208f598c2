"""Pictures of pipeline results: face boxes, landmarks, a coloured parsing overlay with a legend, and the
age, expression and top attributes written beside each face. Marks are sized by each face, not by the image, so
that a group photo's small faces stay visible under them; the legend lists the classes present, inside the
picture."""

from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..processing.mask_encoding import decode_label_map
from ..task_kinds import TASK_KINDS

# The parsing overlay: a light fill, so the face shows through, and each class's outline at full colour.
OVERLAY_OPACITY = 0.25
# Landmarks: white, a colour no parsing class has (class colours are saturated), with a dark rim once big enough.
LANDMARK_COLOUR, LANDMARK_RIM = (255, 255, 255), (0, 0, 0)
BOX_COLOUR = (255, 255, 0)
# Per pixel of a face's longer side: the landmark dot's radius and the box's line width (bounded below).
RADIUS_PER_FACE, MIN_RADIUS, RIM_FROM_RADIUS = 0.008, 0.8, 2.5
LINE_PER_FACE = 1 / 120
# The legend: at most this share of the picture's width (else a strip below it), fonts between these sizes.
LEGEND_MAX_WIDTH, LEGEND_FONT_SIZES = 0.2, (14, 8)
GENERIC_CAPTION_VALUES = 3  # named values written of a kind whose entry gives no picture caption
# Captions: font size per pixel of face height (bounded), padding and gap to the box in pixels, and the search
# around each face: positions slid along each side and rings further out.
FONT_PER_FACE_HEIGHT, MIN_FONT_SIZE = 0.2, 9
LABEL_PADDING, LABEL_GAP = 2, 3
LABEL_SLIDES, LABEL_RINGS = 9, 4


def class_colours(count: int) -> np.ndarray:
    """`(count, 3)` uint8 colours, well apart in hue; class 0 (background) black."""
    colours = [(0, 0, 0)] + [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 1.0))
        for index in range(count - 1)
    ]
    return np.asarray(colours[:count], dtype=np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _generic_caption(key: str, form: str, value: object) -> list[str]:
    """The lines of a value whose kind gives no picture caption: a number or named values written out; points,
    label maps and vectors are drawn or not shown."""
    if form == "number":
        return [f"{key} {value:.1f}"]
    if form == "named_values":
        return [
            f"{name.replace('_', ' ')} {number:.1f}" for name, number in list(value.items())[:GENERIC_CAPTION_VALUES]
        ]
    return []


def face_caption(face: dict) -> list[str]:
    """The lines written beside a face: per task kind in the table's order, its value in its kind's words."""
    lines = []
    for kind in TASK_KINDS.values():
        if kind.result_key in face:
            value = face[kind.result_key]
            caption = kind.picture_caption
            lines += caption(value) if caption else _generic_caption(kind.result_key, kind.json_form, value)
    return lines


def _values_of_form(face: dict, form: str) -> list:
    # a face's values whose kind's result is of JSON form `form` (landmarks' points, parsing's label map)
    return [face[kind.result_key] for kind in TASK_KINDS.values() if kind.json_form == form and kind.result_key in face]


def _beside(size: tuple[int, int], box: np.ndarray, gap: int) -> np.ndarray:
    """(N, 4) spots for a `size` rectangle just outside `box`: slid along each side, then in rings further out."""
    label_width, label_height = size
    x0, y0, x1, y1 = box
    corners = []
    for ring in range(LABEL_RINGS):  # further rings stack the label past labels already placed beside the face
        reach_x, reach_y = gap + ring * (label_width + gap), gap + ring * (label_height + gap)
        slide_x = np.linspace(x0 - label_width, x1, LABEL_SLIDES)
        slide_y = np.linspace(y0 - label_height, y1, LABEL_SLIDES)
        corners += [(x, y1 + reach_y) for x in slide_x] + [(x, y0 - reach_y - label_height) for x in slide_x]
        corners += [(x1 + reach_x, y) for y in slide_y] + [(x0 - reach_x - label_width, y) for y in slide_y]
    corners = np.asarray(corners, dtype=np.float64)
    return np.concatenate([corners, corners + size], axis=1)


def _anywhere(size: tuple[int, int], width: int, height: int) -> np.ndarray:
    """(N, 4) spots for a `size` rectangle on a grid over the whole picture (half the label's height apart)."""
    step = max(4.0, size[1] / 2)
    xs, ys = np.arange(0, max(width - size[0], 0) + 1, step), np.arange(0, max(height - size[1], 0) + 1, step)
    corners = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float64)
    return np.concatenate([corners, corners + size], axis=1)


def _nearest_free(
    spots: np.ndarray, box: np.ndarray, obstacles: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, float]:
    """Of `spots` (N, 4), those inside the picture (else all, pushed into it), the one overlapping no obstacle
    nearest the face in `box` (else the least overlapping one), and the area it overlaps."""
    inside = (spots[:, 0] >= 0) & (spots[:, 1] >= 0) & (spots[:, 2] <= width) & (spots[:, 3] <= height)
    if inside.any():
        spots = spots[inside]
    else:  # no spot fits: each pushed into the picture (a label bigger than the picture from its top left)
        extent = spots[0, 2:] - spots[0, :2]
        corners = np.clip(spots[:, :2], 0, np.maximum([width, height] - extent, 0))
        spots = np.concatenate([corners, corners + extent], axis=1)
    overlap_x = np.minimum(spots[:, None, 2], obstacles[None, :, 2]) - np.maximum(spots[:, None, 0], obstacles[:, 0])
    overlap_y = np.minimum(spots[:, None, 3], obstacles[None, :, 3]) - np.maximum(spots[:, None, 1], obstacles[:, 1])
    overlap = (np.clip(overlap_x, 0, None) * np.clip(overlap_y, 0, None)).sum(axis=1)
    centre = (box[:2] + box[2:]) / 2
    distance = np.linalg.norm((spots[:, :2] + spots[:, 2:]) / 2 - centre, axis=1)
    best = np.lexsort((distance, overlap))[0]  # no overlap first, then nearest the face
    return spots[best], float(overlap[best])


def caption_layout(result: dict, width: int, height: int) -> list[dict | None]:
    """Per face, where its caption goes in a `width` x `height` picture: `{"text", "font", "rectangle"}` (the
    rectangle, padding included, outside every face box and every other caption and inside the picture wherever
    there is room, nearest its face), or None when it has no caption. Bigger faces are placed first; small faces
    get a smaller font."""
    faces = result.get("faces", [])
    boxes = np.asarray([face["box"] for face in faces], dtype=np.float64).reshape(-1, 4)
    base_size = max(MIN_FONT_SIZE, round(14 * max(height, width) / 512))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    layout: list[dict | None] = [None] * len(faces)
    placed: list[np.ndarray] = []
    for index in np.argsort(-(boxes[:, 3] - boxes[:, 1]), kind="stable"):
        text = "\n".join(face_caption(faces[index]))
        if not text:
            continue
        face_height = boxes[index, 3] - boxes[index, 1]
        size = int(np.clip(round(face_height * FONT_PER_FACE_HEIGHT), MIN_FONT_SIZE, base_size))
        obstacles = np.concatenate([boxes, np.asarray(placed).reshape(-1, 4)])
        # Beside the face in its own font, else in the smallest, else anywhere free in the smallest.
        attempts = [(font_size, False) for font_size in dict.fromkeys((size, MIN_FONT_SIZE))] + [(MIN_FONT_SIZE, True)]
        for font_size, far in attempts:
            font = _font(font_size)
            left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font)
            extent = (right - left + 2 * LABEL_PADDING, bottom - top + 2 * LABEL_PADDING)
            spots = _anywhere(extent, width, height) if far else _beside(extent, boxes[index], LABEL_GAP)
            rectangle, overlap = _nearest_free(spots, boxes[index], obstacles, width, height)
            if overlap == 0:
                break
        placed.append(rectangle)
        layout[index] = {"text": text, "font": font, "rectangle": tuple(float(v) for v in rectangle)}
    return layout


def face_side(box) -> float:
    """A face's size for its marks: the longer side of its box, in pixels."""
    x0, y0, x1, y1 = box
    return max(float(x1 - x0), float(y1 - y0), 1.0)


def landmark_radius(box) -> float:
    """The radius of a face's landmark dots: a small share of its size, so 68 dots never cover its eyes and lips."""
    return max(MIN_RADIUS, RADIUS_PER_FACE * face_side(box))


def box_line_width(box) -> int:
    return max(1, round(LINE_PER_FACE * face_side(box)))


def _outline(labels: np.ndarray) -> np.ndarray:
    """Where a painted class meets another class (or the unpainted rest): its one-pixel outline."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels > 0)


def _paint_parsing(canvas: np.ndarray, faces: list[dict]) -> dict[str, tuple[int, int, int]]:
    """Each face's parsing over `canvas` (float, in place): a light fill and a full-colour outline per class; the
    classes painted, with their colours."""
    legend: dict[str, tuple[int, int, int]] = {}
    for parsing in (value for face in faces for value in _values_of_form(face, "label_map")):
        labels = decode_label_map(parsing["mask"])
        colours = class_colours(len(parsing["labels"]))
        painted = labels > 0
        canvas[painted] = (1 - OVERLAY_OPACITY) * canvas[painted] + OVERLAY_OPACITY * colours[labels[painted]]
        edge = _outline(labels)
        canvas[edge] = colours[labels[edge]]
        for index in np.unique(labels[painted]):
            legend[parsing["labels"][index]] = tuple(int(c) for c in colours[index])
    return legend


def legend_layout(names: list[str], width: int, height: int, obstacles: np.ndarray) -> dict | None:
    """Where the legend of `names` goes in a `width` x `height` picture: `{"font", "row", "rectangle"}`, a box in the
    corner overlapping the least of `obstacles` ((N, 4) face boxes and captions), in the largest font (of
    `LEGEND_FONT_SIZES`, scaled to the picture) that keeps it within `LEGEND_MAX_WIDTH` of the width; None when even
    the smallest is too big (the caller puts a strip below)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    largest, smallest = LEGEND_FONT_SIZES
    start = int(np.clip(round(11 * max(width, height) / 512), smallest, largest))
    for size in range(start, smallest - 1, -1):
        font, row = _font(size), size + 4
        text_width = max(measure.textbbox((0, 0), name, font=font)[2] for name in names)
        extent = np.asarray([row + 4 + text_width + 8, row * len(names) + 6], dtype=np.float64)
        if extent[0] <= LEGEND_MAX_WIDTH * width and extent[1] <= height:
            break
    else:
        return None
    margin = 2.0
    right, bottom = width - margin - extent[0], height - margin - extent[1]
    corners = [(right, margin), (margin, margin), (right, bottom), (margin, bottom)]
    spots = np.asarray([[x, y, x + extent[0], y + extent[1]] for x, y in corners])
    overlap_x = np.minimum(spots[:, None, 2], obstacles[None, :, 2]) - np.maximum(spots[:, None, 0], obstacles[:, 0])
    overlap_y = np.minimum(spots[:, None, 3], obstacles[None, :, 3]) - np.maximum(spots[:, None, 1], obstacles[:, 1])
    overlap = (np.clip(overlap_x, 0, None) * np.clip(overlap_y, 0, None)).sum(axis=1)
    best = int(np.argmin(overlap))  # ties: the first, top right as the old strip was
    return {"font": font, "row": row, "rectangle": tuple(float(value) for value in spots[best])}


def _draw_legend(draw: ImageDraw.ImageDraw, legend: dict, left: float, top: float, font, row: int) -> None:
    for index, (name, colour) in enumerate(sorted(legend.items())):
        y = top + 3 + index * row
        draw.rectangle([left + 4, y + 1, left + row, y + row - 3], fill=colour, outline=(0, 0, 0))
        draw.text((left + row + 6, y), name, fill=(0, 0, 0), font=font)


def draw_result(image: np.ndarray, result: dict) -> Image.Image:
    """An (H, W, 3) uint8 RGB image and its pipeline result -> a PIL picture of the result, the image's size (a
    parsing legend inside it; only on an image too small to hold one, a strip below it)."""
    faces = result.get("faces", [])
    canvas = image.astype(np.float32)
    legend = _paint_parsing(canvas, faces)
    picture = Image.fromarray(canvas.round().astype(np.uint8))
    height, width = image.shape[:2]
    draw = ImageDraw.Draw(picture)
    for face in faces:
        x0, y0, x1, y1 = face["box"]
        draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=box_line_width(face["box"]))
        radius = landmark_radius(face["box"])
        rim = LANDMARK_RIM if radius >= RIM_FROM_RADIUS else None
        for x, y in (point for points in _values_of_form(face, "points") for point in points):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=LANDMARK_COLOUR, outline=rim)
    captions = [
        (face, caption)
        for face, caption in zip(result.get("faces", []), caption_layout(result, width, height), strict=True)
        if caption is not None
    ]
    for face, caption in captions:  # lines first, so that no line crosses a caption's text
        left, top, right, bottom = caption["rectangle"]
        x0, y0, x1, y1 = face["box"]
        # A caption placed away from its face (no room beside it) is tied to it by a line from its nearest edge.
        near_x, near_y = min(max(x0, left), right), min(max(y0, top), bottom)
        face_x, face_y = min(max(near_x, x0), x1), min(max(near_y, y0), y1)
        if max(abs(near_x - face_x), abs(near_y - face_y)) > LABEL_GAP + 1:
            draw.line([(near_x, near_y), (face_x, face_y)], fill=(255, 255, 0), width=1)
    for _, caption in captions:
        left, top, right, bottom = caption["rectangle"]
        draw.rectangle([left, top, right - 1, bottom - 1], fill=(0, 0, 0))
        # The text's own offset inside its bounding box (the font's ascent gap) is undone so padding stays even.
        offset_x, offset_y = draw.multiline_textbbox((0, 0), caption["text"], font=caption["font"])[:2]
        origin = (left + LABEL_PADDING - offset_x, top + LABEL_PADDING - offset_y)
        draw.multiline_text(origin, caption["text"], fill=(255, 255, 255), font=caption["font"])
    if not legend:
        return picture
    obstacles = [face["box"] for face in faces] + [caption["rectangle"] for _, caption in captions]
    place = legend_layout(sorted(legend), width, height, np.asarray(obstacles, dtype=np.float64).reshape(-1, 4))
    if place is not None:
        left, top, right, bottom = place["rectangle"]
        draw.rectangle([left, top, right - 1, bottom - 1], fill=(255, 255, 255), outline=(96, 96, 96))
        _draw_legend(draw, legend, left, top, place["font"], place["row"])
        return picture
    # Too small a picture for a legend inside it: a strip below, one class a line, as wide as the picture.
    font = _font(LEGEND_FONT_SIZES[1])
    row = LEGEND_FONT_SIZES[1] + 4
    framed = Image.new("RGB", (width, height + row * len(legend) + 6), (255, 255, 255))
    framed.paste(picture, (0, 0))
    _draw_legend(ImageDraw.Draw(framed), legend, 0, height, font, row)
    return framed


PICTURE_COMMENT = b"faceptor picture"  # marks our pictures: a later run may replace these, and no other file


def is_saved_picture(path: str | os.PathLike) -> bool:
    """Whether the file at `path` is a picture `save_picture` wrote (its JPEG comment says so)."""
    try:
        with Image.open(path) as picture:
            return picture.format == "JPEG" and picture.info.get("comment") == PICTURE_COMMENT
    except Exception:  # not an image, unreadable, a folder: not ours
        return False


def save_picture(picture: Image.Image, path: str | os.PathLike) -> None:
    """Saves `picture` as a JPEG at `path` (making its folders), marked with `PICTURE_COMMENT`: written under a
    temporary name beside it and renamed when complete, so an interrupted save never leaves a half picture, nor
    truncates a file at `path`."""
    from ..commands.output_files import rename_target, temporary_path

    path = rename_target(os.fspath(path))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = temporary_path(path)
    try:
        picture.save(temporary, format="JPEG", comment=PICTURE_COMMENT)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
