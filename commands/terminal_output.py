"""What `faceptor predict` prints for a person at a terminal: a few lines per image in place of its JSON record
(the parsing mask as a count of classes, not its run-length code) and one closing line for the run. Programs get
the JSON lines: through a pipe or `--output`."""

from __future__ import annotations

import sys
from typing import IO, Any

TOP_ATTRIBUTES = 3


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether `stream` (default: standard output) is a terminal, i.e. a person reads it."""
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-like object without a terminal behind it
        return False


def _number(value: Any, digits: int = 0) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def describe_face(face: dict[str, Any]) -> str:
    """One line for one face: its box (x0, y0, x1, y1 in pixels) and a short word for each task's result."""
    parts = ["box " + ", ".join(_number(value) for value in face.get("box", []))]
    if face.get("landmarks"):
        parts.append(f"{len(face['landmarks'])} landmarks")
    parsing = face.get("parsing")
    if isinstance(parsing, dict):
        parts.append(f"parsing: {max(len(parsing.get('labels', [])) - 1, 0)} classes")  # background not counted
    if "age" in face:
        parts.append(f"age {_number(face['age'])}")
    expression = face.get("expression")
    if isinstance(expression, dict) and expression:
        label, probability = max(expression.items(), key=lambda item: -1 if item[1] is None else item[1])
        parts.append(f"{label} {_number(probability and probability * 100)}%")
    attributes = face.get("attributes")
    if isinstance(attributes, dict) and attributes:
        top = sorted(attributes.items(), key=lambda item: -(item[1] or 0))[:TOP_ATTRIBUTES]
        parts.append(", ".join(f"{name.replace('_', ' ')} {_number(value and value * 100)}%" for name, value in top))
    if face.get("embedding") is not None:
        parts.append(f"embedding ({len(face['embedding'])})")
    if face.get("non_finite"):
        parts.append("non-finite: " + ", ".join(face["non_finite"]))
    return " · ".join(parts)


def describe_result(result: dict[str, Any]) -> list[str]:
    """The lines for one image: its name, size and face count, then one indented line per face."""
    faces = result.get("faces", [])
    size = result.get("image_size")
    where = f" ({size[0]}x{size[1]})" if size else ""
    frame = f" frame {result['frame']}" if "frame" in result else ""
    count = "no face" if not faces else "1 face" if len(faces) == 1 else f"{len(faces)} faces"
    lines = [f"{result.get('source', '?')}{frame}{where}: {count}"]
    lines += [f"  face {number}: {describe_face(face)}" for number, face in enumerate(faces, 1)]
    return lines


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def closing_line(
    images: int,
    faces: int,
    errors: int,
    no_face: int,
    per_second: float | None,
    output: str | None,
    pictures: str | None,
) -> str:
    """One line for the end of a run: what was done, where it went, and how fast (usable images a second)."""
    line = f"faceptor: {_plural(images, 'image')}, {_plural(faces, 'face')}, {_plural(errors, 'error')}"
    if no_face:
        line += f", {no_face} without a face"
    if output:
        line += f"; results in {output}"
    if pictures:
        line += f"; pictures in {pictures}"
    if per_second is not None:
        line += f"; {per_second:.2f} images/s"
    return line
