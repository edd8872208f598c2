"""Results as JSON lines that every JSON parser reads. NaN and infinity are not JSON, so a value holding one (a
NaN age, landmarks with an infinite coordinate, ...) is written as null, and its key is named in the face's
`"non_finite"` list (or the result's, for a key outside the faces): the other values of the face stay usable."""

from __future__ import annotations

import json
import math
from typing import Any

NON_FINITE_KEY = "non_finite"


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(item) for item in value)
    return True


def _null_non_finite(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of `record` whose keys holding a non-finite number are null and listed under `NON_FINITE_KEY`."""
    copy, named = {}, []
    for key, value in record.items():
        if not _finite(value):
            value = None
            named.append(key)
        copy[key] = value
    if named:
        copy[NON_FINITE_KEY] = named
    return copy


def json_line(result: dict[str, Any]) -> tuple[str, int]:
    """`result` as one line of valid JSON (newline included), and the number of its faces that had non-finite
    values nulled (0 for almost every result: then the result is written as it is)."""
    try:
        return json.dumps(result, allow_nan=False) + "\n", 0
    except ValueError:  # a NaN or an infinity somewhere: null the values holding one, name them
        pass
    faces = [_null_non_finite(face) for face in result.get("faces", [])]
    flagged = sum(NON_FINITE_KEY in face for face in faces)
    cleaned = _null_non_finite({**result, "faces": faces} if "faces" in result else result)  # keys keep their order
    return json.dumps(cleaned, allow_nan=False) + "\n", flagged
