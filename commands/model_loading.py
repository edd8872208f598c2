"""Loading a model folder for a command (predict, export, evaluate, push): every way a folder can be broken
(missing or non-finite tensors, a truncated weights file, a config without tasks or with a mistyped field)
becomes one `CommandError` line that names the folder and the real cause."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
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
        if MISMATCH_MARKER in str(error):  # it points at a report transformers printed (silenced here): name the cause
            cause = size_mismatch(path) or cause
        raise CommandError(f"{path}: cannot load the model: {cause}") from None
    return model.eval()


MISMATCH_MARKER = "ignore_mismatched_sizes"  # transformers' error for weights of other shapes than the config's
MAX_PARAMETERS = 10_000_000_000  # no Faceptor is near this: a config asking for more has an absurd size in it


def model_parameters(config: Any) -> int:
    """How many parameters the model of `config` has, counted on the meta device (no memory taken)."""
    from transformers import AutoModel as Auto

    with torch.device("meta"):
        model = Auto.from_config(config)
    return sum(parameter.numel() for parameter in model.parameters())


def check_model_size(config: Any, source: str) -> None:
    """Refuses (`ValueError`, one line naming the sizes) a config whose model would have more than
    `MAX_PARAMETERS` parameters: an absurd size, which would fail deep in torch for want of memory."""
    count = model_parameters(config)
    if count > MAX_PARAMETERS:
        sizes = {key: value for key, value in config.to_dict().items() if type(value) is int and value > 4096}
        raise ValueError(
            f"{source}: the config asks for a model of {count:,} parameters (over {MAX_PARAMETERS:,}): sizes {sizes}"
        )


def size_mismatch(path: str) -> str | None:
    """The first tensor whose shape in the weights files differs from what config.json builds, as one line naming
    the config fields that differ; None when none is found."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            expected = {name: tuple(value.shape) for name, value in AutoModel.from_config(config).state_dict().items()}
        for weights in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(weights), framework="pt") as opened:
                for key in opened.keys():
                    stored = tuple(opened.get_slice(key).get_shape())
                    if key in expected and expected[key] != stored:
                        suspects = sorted(
                            name
                            for name, value in config.to_dict().items()
                            if type(value) is int and value in expected[key] and value not in stored
                        )
                        fields = ", ".join(f"{name} {getattr(config, name)}" for name in suspects) or "its sizes"
                        return (
                            f"config.json ({fields}) does not match the weights: {key} is {stored} in "
                            f"{weights.name}, {expected[key]} by the config"
                        )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError):
        return None
    return None


PROCESSOR_FILE = "preprocessor_config.json"
CROP_SIDES = (16, 2048)  # crop sides a model can be run at: below, no face; above, no memory or position table


def load_image_processor(path: str | os.PathLike):
    """The `FaceptorImageProcessor` saved in model folder `path`, validated, or a `CommandError` naming the folder:
    no `preprocessor_config.json` (the model's crops are not known: the defaults would run it at other sizes and
    move every landmark), a file that is not a JSON object, or settings no model runs with (see
    `check_image_processor`). The rule: a model folder carries its processor; nothing falls back to defaults."""
    from ..processing.image_processing_faceptor import FaceptorImageProcessor

    path = os.fspath(path)
    settings_file = os.path.join(path, PROCESSOR_FILE)
    if not os.path.isfile(settings_file):
        raise CommandError(
            f"{path}: no {PROCESSOR_FILE}; a model folder needs the image processor it was trained "
            "with (save it with processor.save_pretrained(folder))"
        )
    try:
        with open(settings_file, encoding="utf-8") as handle:
            settings = json.load(handle)
        if not isinstance(settings, dict):
            raise ValueError(f"a JSON {type(settings).__name__}, not an object")
    except (OSError, ValueError) as error:
        raise CommandError(f"{settings_file}: not a readable JSON object ({error_summary(error)})") from None
    try:
        with quiet_transformers():
            processor = FaceptorImageProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise CommandError(f"{settings_file}: cannot load the image processor ({error_summary(error)})") from None
    problem = check_image_processor(processor)
    if problem is not None:
        raise CommandError(f"{settings_file}: {problem}")
    return processor


def check_image_processor(processor: Any) -> str | None:
    """What is wrong with an image processor's settings, or None: crop sides outside `CROP_SIDES`, a mean or std
    that is not 3 finite numbers, a std of 0 (every crop would divide by zero), box scales that are not positive."""
    low, high = CROP_SIDES
    for group in ("dense", "face"):
        size = getattr(processor, f"{group}_size", None)
        if type(size) is not int or not low <= size <= high:
            return f"{group}_size {size!r}: crop sides must be whole numbers in {low}..{high}"
        for name in ("mean", "std"):
            values = getattr(processor, f"{group}_{name}", None)
            try:
                numbers = [float(value) for value in values]
            except (TypeError, ValueError):
                return f"{group}_{name} {values!r}: expected 3 numbers"
            if len(numbers) != 3 or not all(math.isfinite(number) for number in numbers):
                return f"{group}_{name} {values!r}: expected 3 finite numbers"
            if name == "std" and min(numbers) <= 0:
                return f"{group}_std {values!r}: must be positive (a std of 0 divides every pixel by zero)"
        scale = getattr(processor, f"{group}_box_scale", None)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < 100:
            return f"{group}_box_scale {scale!r}: must be a number in (0, 100)"
    warp = getattr(processor, "parsing_warp_factor", 0)
    if not isinstance(warp, (int, float)) or isinstance(warp, bool) or not 0 <= warp < 100:
        return f"parsing_warp_factor {warp!r}: must be a number in [0, 100)"
    return None


__all__ = [
    "check_image_processor",
    "load_image_processor",
    "load_model_folder",
    "no_progress_bars",
    "quiet_transformers",
    "unreadable_weight_files",
]
