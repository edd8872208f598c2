"""Removing tasks from a saved model folder: their entries in config.json and every weight only they use (their
queries, and an output module no remaining task needs), so the smaller model loads with no unused weights."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import load_file, save_file

from faceptor import FaceptorConfig, FaceptorModel

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.chmod(temporary, path.stat().st_mode)  # safetensors writes owner-only files: keep the original's mode
    os.replace(temporary, path)


def withhold_tasks(model_dir: str | os.PathLike, task_names: Iterable[str]) -> list[str]:
    """Drops `task_names` from the model saved in `model_dir` (config.json and model.safetensors, rewritten in
    place); returns the names it removed. A ValueError names a task the model lacks, or the last task."""
    folder = Path(model_dir)
    raw = json.loads((folder / CONFIG).read_text())
    names = set(task_names)
    unknown = sorted(names - {spec["name"] for spec in raw["tasks"]})
    if unknown:
        raise ValueError(f"{folder}: the model has no task {unknown}.")
    raw["tasks"] = [spec for spec in raw["tasks"] if spec["name"] not in names]
    if not raw["tasks"]:
        raise ValueError(f"{folder}: withholding {sorted(names)} would leave the model no task.")
    kept_keys = set(FaceptorModel(FaceptorConfig.from_dict(raw)).state_dict())
    weights = load_file(folder / WEIGHTS)
    missing = sorted(kept_keys - set(weights))
    if missing:
        raise ValueError(f"{folder}: {WEIGHTS} lacks weights the remaining tasks need: {missing[:5]}.")
    kept = {key: tensor.contiguous() for key, tensor in weights.items() if key in kept_keys}
    _write_atomically(folder / WEIGHTS, lambda path: save_file(kept, str(path), metadata={"format": "pt"}))
    _write_atomically(folder / CONFIG, lambda path: path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n"))
    return sorted(names)
