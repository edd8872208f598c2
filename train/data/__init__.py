"""Dataset readers: each public face dataset, in its download layout, as a typed `datasets.Dataset`.

    from faceptor.train.data import load_face_dataset
    rafdb = load_face_dataset("affect_rafdb", "/data/RAF-DB/basic", "train")

`READERS` maps the official task names (plus `verification` for the LFW / CFP-FP / AgeDB-30 / CALFW /
CPLFW `.bin` files, whose split is the target's name) to reader functions `reader(root, split, **options)`;
`SPLITS` lists each one's split names. Splits and label mappings follow the official Faceptor readers
(`core/data/dataset/*.py`); each reader's docstring gives the folder layout it expects. Images are stored as
paths and decoded on access; malformed or missing inputs raise `DatasetFormatError` naming the file and line.

Training takes them as samples: `task_dataset` (a reader's rows through a task's transforms, and
`register_task_dataset` for data in a layout of your own) and `multitask` (each step's batch of every task).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import datasets

from .age import MORPH2_SPLITS, UTKFACE_SPLITS, read_morph2, read_utkface
from .attributes import CELEBA_SPLITS, read_celeba
from .common import DatasetFormatError, resolve_split
from .expression import AFFECTNET_SPLITS, FERPLUS_SPLITS, RAFDB_SPLITS, read_affectnet, read_ferplus, read_rafdb
from .landmarks import (
    AFLW_SPLITS,
    COFW_SPLITS,
    IBUG_300W_SPLITS,
    WFLW_SPLITS,
    read_300w,
    read_aflw,
    read_cofw,
    read_wflw,
)
from .parsing import CELEBAMASK_HQ_SPLITS, LAPA_SPLITS, read_celebamask_hq, read_lapa
from .recordio import MS1MV3_SPLITS, VERIFICATION_TARGETS, read_ms1mv3, read_verification

READERS: dict[str, Callable[..., datasets.Dataset]] = {
    "align_300w": read_300w,
    "align_wflw": read_wflw,
    "align_cofw": read_cofw,
    "align_aflw": read_aflw,
    "parsing_celebam": read_celebamask_hq,
    "parsing_lapa": read_lapa,
    "age_morph2": read_morph2,
    "age_utkface": read_utkface,
    "affect_affectnet": read_affectnet,
    "affect_rafdb": read_rafdb,
    "affect_ferplus": read_ferplus,
    "biattr_celeba": read_celeba,
    "recog_ms1mv3": read_ms1mv3,
    "verification": read_verification,
}

SPLITS: dict[str, tuple[str, ...]] = {
    "align_300w": tuple(IBUG_300W_SPLITS),
    "align_wflw": WFLW_SPLITS,
    "align_cofw": COFW_SPLITS,
    "align_aflw": AFLW_SPLITS,
    "parsing_celebam": CELEBAMASK_HQ_SPLITS,
    "parsing_lapa": LAPA_SPLITS,
    "age_morph2": MORPH2_SPLITS,
    "age_utkface": UTKFACE_SPLITS,
    "affect_affectnet": AFFECTNET_SPLITS,
    "affect_rafdb": RAFDB_SPLITS,
    "affect_ferplus": FERPLUS_SPLITS,
    "biattr_celeba": CELEBA_SPLITS,
    "recog_ms1mv3": MS1MV3_SPLITS,
    "verification": VERIFICATION_TARGETS,
}

# Official split names some readers also accept.
_EXTRA_SPLIT_NAMES = {
    "align_300w": ("valid_common", "valid_challenge", "valid"),
    "align_aflw": ("full", "frontal", "test"),
}


def load_face_dataset(name: str, root: str | os.PathLike, split: str, **options) -> datasets.Dataset:
    """The `split` of dataset `name` (a key of `READERS`) stored under `root`, as a `datasets.Dataset`.

    `options` go to the reader (e.g. `coordinate_offset` for 300W, `aligned` for RAF-DB). An unknown name or
    split raises `DatasetFormatError` listing the valid ones."""
    if name not in READERS:
        raise DatasetFormatError(f"unknown dataset {name!r}; valid names: {', '.join(READERS)}")
    if split not in _EXTRA_SPLIT_NAMES.get(name, ()):
        split = resolve_split(name, split, SPLITS[name])
    return READERS[name](root, split, **options)


__all__ = ["READERS", "SPLITS", "DatasetFormatError", "load_face_dataset"]
