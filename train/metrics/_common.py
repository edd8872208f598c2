"""Helpers shared by the metrics and the augmentations: dataset-name canonicalisation and array coercion."""

from __future__ import annotations

from typing import Any

import numpy as np

# Task-name prefixes of the official configurations ("align_300w", "parsing_lapa", ...).
_TASK_PREFIXES = ("align", "parsing", "age", "affect", "biattr", "recog")

_ALIASES = {
    "300w": "300w",
    "ibug300w": "300w",
    "ibug": "300w",
    "wflw": "wflw",
    "wflw98": "wflw",
    "cofw": "cofw",
    "cofw29": "cofw",
    "aflw": "aflw",
    "aflw19": "aflw",
    "celebam": "celebamask_hq",
    "celebamask": "celebamask_hq",
    "celebamaskhq": "celebamask_hq",
    "lapa": "lapa",
    "celeba": "celeba",
    "rafdb": "rafdb",
    "affectnet": "affectnet",
    "ferplus": "ferplus",
    "morph2": "morph2",
    "morphii": "morph2",
    "utkface": "utkface",
}


def canonical_dataset(name: str | None) -> str | None:
    """A dataset or official task name -> its canonical key: `"align_300w"`, `"300W"` and `"ibug300w"` give
    `"300w"`; `"parsing_celebam"` and `"CelebAMask-HQ"` give `"celebamask_hq"`. Unknown names come back
    lower-cased without separators; `None` stays `None`."""
    if name is None:
        return None
    lowered = str(name).strip().lower()
    head, _, tail = lowered.partition("_")
    if tail and head in _TASK_PREFIXES:
        lowered = tail
    key = "".join(character for character in lowered if character.isalnum())
    return _ALIASES.get(key, key)


def to_numpy(value: Any) -> np.ndarray:
    """Tensors (any device), lists and arrays -> a numpy array; lists of equal-shaped arrays are stacked."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)) and value and hasattr(value[0], "detach"):
        value = [item.detach().cpu().numpy() for item in value]
    return np.asarray(value)
