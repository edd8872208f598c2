"""Loading a model folder for a command (predict, export, evaluate, push): every way a folder can be broken
(missing or non-finite tensors, a truncated weights file, a config without tasks or with a mistyped field)
becomes one `CommandError` line that names the folder and the real cause."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import AutoModel, PreTrainedModel
from transformers.utils import logging as transformers_logging

from .errors import CommandError, error_summary

# What loading a broken folder raises: the model's own checks (ValueError), a mistyped config (TypeError), a
# torn file (SafetensorError, OSError, JSONDecodeError), a state dict of other shapes (RuntimeError).
LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError)
FACEPTOR_MODEL_TYPES = ("faceptor", "naive_faceptor")


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """No progress bar from transformers (or huggingface_hub) for a local step of a second, whose bar would only
    stand between a command and its one-line error."""
    progress = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if progress:
            transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No load report table or progress bar from transformers: a failure is reported in one line, and the
    checks refuse what the table would only warn about."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with no_progress_bars():
            yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def unreadable_weight_files(folder: str | os.PathLike) -> list[str]:
    """The safetensors files of `folder` whose header does not cover the file (truncated or corrupt)."""
    broken = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError):
            broken.append(path.name)
    return broken


def load_model_folder(
    path: str | os.PathLike, model_class: Any = None, *, allow_missing_weights: bool = False, **kwargs: Any
) -> PreTrainedModel:
    """`model_class.from_pretrained(path, **kwargs)` (default `AutoModel`: Faceptor or Naive Faceptor) in eval
    mode, or a `CommandError` naming the folder and the cause: no folder or config.json, an unreadable file, a
    mistyped or incomplete config, a missing tensor (unless `allow_missing_weights`), non-finite weights."""
    from ..modeling_faceptor import check_loaded_weights  # here: the model module is heavy, the CLI starts fast

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CommandError(f"{path}: no such model folder")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise CommandError(f"{path}: not a model folder (no config.json)")
    try:
        with open(config_file, encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise CommandError(f"{config_file}: not a readable JSON object ({error_summary(error)})") from None
    if model_type not in FACEPTOR_MODEL_TYPES:
        raise CommandError(f"{path}: not a Faceptor model (model_type {model_type!r} in config.json)")
    try:
        with quiet_transformers():
            model, loading_info = (model_class or AutoModel).from_pretrained(path, output_loading_info=True, **kwargs)
            # from_pretrained only warns of missing tensors (transformers' convention); a command refuses them.
            check_loaded_weights(model, loading_info["missing_keys"], path, allow_missing_weights)
    except SafetensorError as error:
        files = ", ".join(unreadable_weight_files(path)) or "a weights file"
        raise CommandError(f"{path}: {files} is truncated or corrupt ({error_summary(error)})") from None
    except LOAD_ERRORS as error:
        cause = error_summary(error).removeprefix(f"{path}: ")  # the model's checks name the folder already
        raise CommandError(f"{path}: cannot load the model: {cause}") from None
    return model.eval()


__all__ = ["load_model_folder", "no_progress_bars", "quiet_transformers", "unreadable_weight_files"]
