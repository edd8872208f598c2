"""Checkpoints that are complete or absent. Each is written under a temporary name in the run's folder
(`tmp-checkpoint-N`) and renamed into place when whole, with a record of the training config that made it;
`--resume` takes the newest complete checkpoint of the same config, and a new run refuses a folder that holds
another run's."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR, as its Trainer names them
STAGING_PREFIX = "tmp-"  # tmp-checkpoint-N: a checkpoint still being written (or left by a killed run)
RUN_RECORD_FILE = "faceptor_run.json"  # in each checkpoint: the fingerprint of the training config that made it
# What a checkpoint has when whole; the run record is written last, just before the rename.
REQUIRED_FILES = ("model.safetensors", "trainer_state.json", RUN_RECORD_FILE)
FINAL_MODEL_FILE = "model.safetensors"  # a finished run's model, in the output folder itself


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (absent, incomplete, from another config, unreadable), or an output
    folder that holds another run: named in one line."""


def checkpoint_folders(output_dir: str) -> list[str]:
    """The `checkpoint-N` folders of `output_dir`, oldest (smallest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(match[1]), name) for name in os.listdir(output_dir) if (match := CHECKPOINT_NAME.match(name))]
    return [
        os.path.join(output_dir, name) for _, name in sorted(found) if os.path.isdir(os.path.join(output_dir, name))
    ]


def missing_parts(folder: str) -> list[str]:
    """The files a whole checkpoint has that `folder` lacks (or holds unreadable: its trainer state)."""
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, name))]
    if "trainer_state.json" not in missing:
        try:
            with open(os.path.join(folder, "trainer_state.json")) as handle:
                json.load(handle)
        except (OSError, ValueError):
            missing.append("trainer_state.json (unreadable)")
    return missing


def newest_complete_checkpoint(output_dir: str) -> tuple[str, list[str]]:
    """The newest whole checkpoint of `output_dir` and the newer, incomplete ones it skips, each named with what
    it lacks."""
    skipped = []
    for folder in reversed(checkpoint_folders(output_dir)):
        missing = missing_parts(folder)
        if not missing:
            return folder, skipped
        skipped.append(f"{os.path.basename(folder)} (no {', '.join(missing)})")
    detail = f" (incomplete: {', '.join(skipped)})" if skipped else ""
    raise CheckpointError(f"{output_dir}: no complete checkpoint to resume from{detail}")


def write_run_record(folder: str, record: dict[str, Any]) -> None:
    """Writes the training config's record into a checkpoint being staged."""
    with open(os.path.join(folder, RUN_RECORD_FILE), "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)


def check_run_record(folder: str, fingerprint: str) -> None:
    """CheckpointError unless the checkpoint was written under the training config with this fingerprint."""
    try:
        with open(os.path.join(folder, RUN_RECORD_FILE)) as handle:
            saved = json.load(handle).get("config_sha256")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved != fingerprint:
        raise CheckpointError(
            f"{folder} was written by a different training config (sha256 {str(saved)[:12]}, this config "
            f"{fingerprint[:12]}): resume with the config it was trained with, or train into a new --output_dir"
        )


def commit_checkpoint(staged: str, final: str) -> None:
    """Renames a whole staged checkpoint into place (an older folder of the same name goes only once the new one
    is in place)."""
    if os.path.exists(final):
        stale = os.path.join(os.path.dirname(final), STAGING_PREFIX + "stale-" + os.path.basename(final))
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        os.replace(staged, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(staged, final)


def move_into(staging: str, output_dir: str) -> None:
    """Renames every file and folder of `staging` into `output_dir` (replacing those of the same name), then
    removes the emptied `staging`."""
    for name in os.listdir(staging):
        source, target = os.path.join(staging, name), os.path.join(output_dir, name)
        if os.path.isdir(source):
            commit_checkpoint(source, target)
        else:
            os.replace(source, target)
    os.rmdir(staging)


def earlier_run(output_dir: str) -> list[str]:
    """What in `output_dir` belongs to an earlier run: its checkpoints (whole or not) and its final model."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(
        name
        for name in os.listdir(output_dir)
        if CHECKPOINT_NAME.match(name.removeprefix(STAGING_PREFIX)) or name == FINAL_MODEL_FILE
    )
    return names


def remove_earlier_checkpoints(output_dir: str) -> None:
    """Deletes an earlier run's checkpoints, whole or not (`--overwrite_output_dir`); its final model files are
    replaced when this run saves its own."""
    for name in earlier_run(output_dir):
        if name != FINAL_MODEL_FILE:
            shutil.rmtree(os.path.join(output_dir, name))
