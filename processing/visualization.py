"""Pictures of pipeline results: face boxes, landmarks, a coloured parsing overlay with a legend, and the
age, expression and top attributes written beside each face."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .mask_encoding import decode_label_map

OVERLAY_OPACITY = 0.45
TOP_ATTRIBUTES = 3


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


def face_caption(face: dict) -> list[str]:
    lines = []
    if "age" in face:
        lines.append(f"age {face['age']:.0f}")
    if "expression" in face:
        label, probability = max(face["expression"].items(), key=lambda item: item[1])
        lines.append(f"{label} {probability:.0%}")
    if "attributes" in face:
        top = sorted(face["attributes"].items(), key=lambda item: -item[1])[:TOP_ATTRIBUTES]
        lines += [f"{name.replace('_', ' ')} {probability:.0%}" for name, probability in top]
    return lines


def draw_result(image: np.ndarray, result: dict) -> Image.Image:
    """An (H, W, 3) uint8 RGB image and its pipeline result -> a PIL picture of the result (wider than the
    image when a parsing legend is drawn on the right)."""
    canvas = image.astype(np.float32)
    legend: dict[str, tuple[int, int, int]] = {}
    for face in result.get("faces", []):
        parsing = face.get("parsing")
        if parsing is None:
            continue
        labels = decode_label_map(parsing["mask"])
        colours = class_colours(len(parsing["labels"]))
        painted = labels > 0
        canvas[painted] = (1 - OVERLAY_OPACITY) * canvas[painted] + OVERLAY_OPACITY * colours[labels[painted]]
        for index in np.unique(labels[painted]):
            legend[parsing["labels"][index]] = tuple(int(c) for c in colours[index])
    picture = Image.fromarray(canvas.round().astype(np.uint8))
    height, width = image.shape[:2]
    scale = max(height, width) / 512
    font = _font(max(11, round(14 * scale)))
    draw = ImageDraw.Draw(picture)
    line_width = max(1, round(2 * scale))
    for face in result.get("faces", []):
        x0, y0, x1, y1 = face["box"]
        draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 0), width=line_width)
        radius = max(1.5, 2.0 * scale)
        for x, y in face.get("landmarks", []):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(0, 255, 0))
        text = "\n".join(face_caption(face))
        if text:
            # Beside the face: right of the box when there is room, else left of it.
            box = draw.multiline_textbbox((0, 0), text, font=font)
            text_width = box[2] - box[0]
            left = x1 + 4 if x1 + 4 + text_width <= width else max(0, x0 - 4 - text_width)
            anchor = (left, max(0, y0))
            frame = draw.multiline_textbbox(anchor, text, font=font)
            draw.rectangle([frame[0] - 2, frame[1] - 2, frame[2] + 2, frame[3] + 2], fill=(0, 0, 0))
            draw.multiline_text(anchor, text, fill=(255, 255, 255), font=font)
    if not legend:
        return picture
    row = font.size + 6 if hasattr(font, "size") else 16
    legend_width = max(draw.textbbox((0, 0), name, font=font)[2] for name in legend) + row + 16
    framed = Image.new("RGB", (width + legend_width, max(height, row * len(legend) + 8)), (255, 255, 255))
    framed.paste(picture, (0, 0))
    legend_draw = ImageDraw.Draw(framed)
    for index, (name, colour) in enumerate(sorted(legend.items())):
        top = 4 + index * row
        legend_draw.rectangle([width + 6, top, width + 6 + row - 6, top + row - 6], fill=colour, outline=(0, 0, 0))
        legend_draw.text((width + row + 6, top), name, fill=(0, 0, 0), font=font)
    return framed
