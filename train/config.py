"""Training configuration (YAML): the model, the training mode, each task's data, n_t and alpha_t, and the
optimiser schedule. Everything is checked, by type and range, before training starts; unknown keys are errors."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import SchedulerType

from .stages import TRAINING_MODES


def _bound(value: float | None) -> str:
    """A range's end as written in messages ("" when open)."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Setting:
    """One setting's type (`int`, `float`, `bool` or `str`) and allowed values, for checking and for messages."""

    kind: type
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.choices:
            return f"one of {list(self.choices)}"
        noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[self.kind]
        low, high = _bound(self.minimum), _bound(self.maximum)
        if low and high:
            opening, closing = "(" if self.exclusive_minimum else "[", ")" if self.exclusive_maximum else "]"
            return f"{noun} in {opening}{low}, {high}{closing}"
        if low:
            return f"{noun} {'>' if self.exclusive_minimum else '>='} {low}"
        if high:
            return f"{noun} {'<' if self.exclusive_maximum else '<='} {high}"
        return noun

    def parse(self, value: Any) -> Any:
        """The value as this setting's type, or ValueError: numbers written as YAML strings (PyYAML reads
        `1e-3` as one) are parsed, booleans are never numbers, and numbers must be finite and in range."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ValueError
            return value
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):
            text = value.strip()
            number = int(text) if self.kind is int and re.fullmatch(r"[+-]?\d+", text) else float(text)
        elif isinstance(value, (int, float)):
            number = value
        else:
            raise ValueError
        if not math.isfinite(number):
            raise ValueError
        if self.kind is int:
            if float(number) != int(number):
                raise ValueError
            number = int(number)
        else:
            number = float(number)
        if self.minimum is not None and (number < self.minimum or (self.exclusive_minimum and number == self.minimum)):
            raise ValueError
        if self.maximum is not None and (number > self.maximum or (self.exclusive_maximum and number == self.maximum)):
            raise ValueError
        return number


POSITIVE_INT, COUNT = Setting(int, 1), Setting(int, 0)
POSITIVE, NON_NEGATIVE = Setting(float, 0, exclusive_minimum=True), Setting(float, 0)
FLAG = Setting(bool)

# TrainingArguments a config may set, with their types and ranges; the rest are fixed by the Faceptor recipe or the
# command line.
TRAINING_SETTINGS = {
    "max_steps": POSITIVE_INT,
    "learning_rate": POSITIVE,
    "warmup_steps": COUNT,
    "weight_decay": NON_NEGATIVE,
    "lr_scheduler_type": Setting(str, choices=tuple(scheduler.value for scheduler in SchedulerType)),
    "logging_steps": POSITIVE_INT,
    "save_steps": POSITIVE_INT,
    "save_total_limit": POSITIVE_INT,
    "seed": Setting(int, 0, 2**32 - 1),  # numpy's seed range
    "dataloader_num_workers": COUNT,
    "gradient_accumulation_steps": POSITIVE_INT,
    "max_grad_norm": NON_NEGATIVE,  # 0 turns clipping off
    "bf16": FLAG,
    "fp16": FLAG,
    "gradient_checkpointing": FLAG,
    "adam_beta1": Setting(float, 0, 1, exclusive_maximum=True),
    "adam_beta2": Setting(float, 0, 1, exclusive_maximum=True),
    "adam_epsilon": POSITIVE,
    "ddp_find_unused_parameters": FLAG,
    "head_lr_multiplier": POSITIVE,
}
TRAINING_DEFAULTS = {
    "learning_rate": 5e-5,  # paper Sec. 4.1, the encoder's rate
    "weight_decay": 0.05,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 2000,
    "logging_steps": 10,
    "save_steps": 5000,
    "seed": 2048,  # the official configs' seed
    "ddp_find_unused_parameters": False,  # untrained parameters are frozen, so every trainable one is used
}
# Settings that change what is logged or kept, not what is learnt: a run may resume with other values.
BOOKKEEPING_SETTINGS = ("logging_steps", "save_steps", "save_total_limit", "dataloader_num_workers")

MODEL_KEYS = ("preset", "pretrained", "farl", "config", "architecture", "add_tasks")
STAGE_KEYS = ("mode", "prompt_tasks", "open_layers", "copy_top_projection")
TASK_KEYS = ("samples_per_step", "weight", "data", "num_identities", "eval", "embedding_loss")
DATA_KEYS = ("reader", "root", "split")
SYNTHETIC_SETTINGS = {"num_samples": POSITIVE_INT, "num_identities": POSITIVE_INT}

# An identity (embedding) task's loss: "cosface" learns integer identity labels with a CosFace classifier (the
# paper's); "teacher" distils embeddings, each sample's label being another model's (D,) embedding of the same face,
# D the model's identity_embedding_size (`losses.teacher_embedding_loss`).
EMBEDDING_LOSSES = ("cosface", "teacher")


class TrainingConfigError(ValueError):
    """A training configuration that cannot work, named before training starts."""


@dataclass
class TaskTrainingConfig:
    name: str
    samples_per_step: int
    weight: float
    data: dict[str, Any]
    num_identities: int | None = None
    eval: dict[str, Any] | None = None  # the data scored after training: {reader, root, split}
    embedding_loss: str = "cosface"  # identity tasks: one of EMBEDDING_LOSSES


@dataclass
class TrainingConfig:
    model: dict[str, Any]
    tasks: list[TaskTrainingConfig]
    mode: str = "full"
    prompt_tasks: list[str] = field(default_factory=list)
    open_layers: list[int] = field(default_factory=list)
    copy_top_projection: bool = False
    head_lr_multiplier: float = 10.0
    training: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    @property
    def training_arguments(self) -> dict[str, Any]:
        return {**TRAINING_DEFAULTS, **self.training}


def training_fingerprint(config: TrainingConfig) -> str:
    """SHA-256 of everything in the config that shapes the trained weights (not where it was read from, nor what
    is only logged or kept), for refusing to resume a checkpoint under another config."""
    learning = {key: value for key, value in config.training_arguments.items() if key not in BOOKKEEPING_SETTINGS}
    content = {**asdict(config), "training": learning, "source": None}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise TrainingConfigError(f"{source}: {message}")


def _setting(value: Any, setting: Setting, source: str, key: str) -> Any:
    """`value` checked and converted by `setting`; a TrainingConfigError naming the key and its allowed range."""
    try:
        return setting.parse(value)
    except (TypeError, ValueError, OverflowError):
        raise TrainingConfigError(f"{source}: {key} must be {setting.describe()}, got {value!r}") from None


def _mapping(value: Any, source: str, key: str, allowed: tuple[str, ...] | set[str]) -> dict[str, Any]:
    """`value` as a mapping with only `allowed` keys (None: empty)."""
    value = {} if value is None else value
    _require(isinstance(value, dict), source, f"{key} must be a mapping, got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    _require(not unknown, source, f"unknown {key} settings {unknown} (expected {', '.join(sorted(allowed))})")
    return value


def _string(value: Any, source: str, key: str) -> str:
    _require(isinstance(value, str) and value != "", source, f"{key} must be a non-empty string, got {value!r}")
    return value


def _data_source(value: Any, where: str, key: str, check_paths: bool, synthetic: bool = True) -> dict[str, Any]:
    """A task's `data` (or `eval`): `{synthetic: {...}}` or `{reader, root, split}`, checked."""
    _require(isinstance(value, dict) and value, where, f"{key} needs {{synthetic: {{...}}}} or {{reader, root, split}}")
    if synthetic and "synthetic" in value:
        _mapping(value, where, key, ("synthetic",))
        options = _mapping(value["synthetic"], where, f"{key}.synthetic", tuple(SYNTHETIC_SETTINGS))
        return {
            "synthetic": {
                name: _setting(option, SYNTHETIC_SETTINGS[name], where, f"{key}.synthetic.{name}")
                for name, option in options.items()
            }
        }
    _mapping(value, where, key, DATA_KEYS)
    for part in DATA_KEYS:
        _require(part in value, where, f"{key} needs '{part}'")
        _string(value[part], where, f"{key}.{part}")
    if check_paths:
        _require(os.path.exists(value["root"]), where, f"{key} root {value['root']}: no such folder")
    return dict(value)


def _task(name: Any, settings: Any, source: str, check_paths: bool) -> TaskTrainingConfig:
    _require(isinstance(name, str), source, f"task names must be strings, got {name!r}")
    where = f"{source}: task {name!r}"
    settings = _mapping(settings, where, "task", TASK_KEYS)
    _require("samples_per_step" in settings, where, f"needs samples_per_step (n_t), {POSITIVE_INT.describe()}")
    samples = _setting(settings["samples_per_step"], POSITIVE_INT, where, "samples_per_step (n_t)")
    weight = _setting(settings.get("weight", 1.0), NON_NEGATIVE, where, "weight (alpha_t)")
    identities = settings.get("num_identities")
    if identities is not None:
        identities = _setting(identities, POSITIVE_INT, where, "num_identities")
    _require("data" in settings, where, "needs data: {synthetic: {...}} or {reader, root, split}")
    data = _data_source(settings["data"], where, "data", check_paths)
    evaluation = settings.get("eval")
    if evaluation is not None:
        evaluation = _data_source(evaluation, where, "eval", check_paths, synthetic=False)
    embedding_loss = _setting(
        settings.get("embedding_loss", "cosface"), Setting(str, choices=EMBEDDING_LOSSES), where, "embedding_loss"
    )
    return TaskTrainingConfig(name, samples, weight, data, identities, evaluation, embedding_loss)


def parse_training_config(raw: dict[str, Any], source: str = "<dict>", check_paths: bool = True) -> TrainingConfig:
    """Checks a config dict by type and range (unknown keys are errors) and, with `check_paths`, that every file
    and folder it names exists (values that need the model are checked by the runner)."""
    _require(isinstance(raw, dict), source, "the config must be a mapping")
    unknown = set(raw) - {"model", "stage", "tasks", "training"}
    _require(not unknown, source, f"unknown sections {sorted(unknown)} (expected model, stage, tasks, training)")
    model = _mapping(raw.get("model"), source, "model", MODEL_KEYS)
    starts = [key for key in ("preset", "pretrained") if key in model]
    _require(len(starts) == 1, source, "model needs exactly one of 'preset' or 'pretrained'")
    for key in ("preset", "pretrained", "farl", "architecture"):
        if key in model:
            _string(model[key], source, f"model.{key}")
    _require(
        "pretrained" not in model or "config" not in model,
        source,
        "model.config sets a preset's sizes; a pretrained model keeps its own config",
    )
    _require(isinstance(model.get("config", {}), dict), source, "model.config must map config keys to values")
    add_tasks = model.get("add_tasks") or []
    _require(
        isinstance(add_tasks, list) and all(isinstance(spec, dict) for spec in add_tasks),
        source,
        "model.add_tasks must be a list of task specs (mappings)",
    )
    if "pretrained" in model and check_paths:
        _require(Path(model["pretrained"]).is_dir(), source, f"model.pretrained {model['pretrained']}: no such folder")
    if "farl" in model and check_paths:
        _require(Path(model["farl"]).exists(), source, f"model.farl {model['farl']}: no such file")
    stage = _mapping(raw.get("stage"), source, "stage", STAGE_KEYS)
    mode = _setting(stage.get("mode", "full"), Setting(str, choices=TRAINING_MODES), source, "stage.mode")
    prompt_tasks = stage.get("prompt_tasks") or []
    _require(
        isinstance(prompt_tasks, list) and all(isinstance(task, str) for task in prompt_tasks),
        source,
        f"stage.prompt_tasks must be a list of task names, got {prompt_tasks!r}",
    )
    open_layers = stage.get("open_layers") or []
    _require(isinstance(open_layers, list), source, f"stage.open_layers must be a list of layers, got {open_layers!r}")
    open_layers = [_setting(layer, COUNT, source, "stage.open_layers[]") for layer in open_layers]
    copy_top_projection = _setting(stage.get("copy_top_projection", False), FLAG, source, "stage.copy_top_projection")
    tasks_raw = raw.get("tasks") or {}
    _require(isinstance(tasks_raw, dict) and tasks_raw, source, "tasks must map task names to their settings")
    tasks = [_task(name, settings, source, check_paths) for name, settings in tasks_raw.items()]
    _require(sum(task.weight for task in tasks) > 0, source, "at least one task needs a positive weight")
    trained = {task.name for task in tasks}
    strays = [task for task in prompt_tasks if task not in trained]
    _require(
        not strays,
        source,
        f"stage.prompt_tasks {strays} are not trained by this config (its tasks: {sorted(trained)}): "
        "their queries would learn nothing",
    )
    training = _mapping(raw.get("training"), source, "training", set(TRAINING_SETTINGS))
    training = {
        key: _setting(value, TRAINING_SETTINGS[key], source, f"training.{key}") for key, value in training.items()
    }
    head_lr_multiplier = training.pop("head_lr_multiplier", 10.0)
    return TrainingConfig(
        model=model,
        tasks=tasks,
        mode=mode,
        prompt_tasks=list(prompt_tasks),
        open_layers=open_layers,
        copy_top_projection=copy_top_projection,
        head_lr_multiplier=head_lr_multiplier,
        training=training,
        source=source,
    )


def load_training_config(path: str | os.PathLike, check_paths: bool = True) -> TrainingConfig:
    path = Path(path)
    if not path.is_file():
        raise TrainingConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        message = " ".join(str(error).split())  # PyYAML's message spans lines; the error is one line
        raise TrainingConfigError(f"{path}: not valid YAML ({message})") from None
    return parse_training_config(raw, str(path), check_paths)
