"""Training configuration (YAML): the model, the training mode, each task's data, n_t and alpha_t, and the
optimiser schedule. Everything is checked before training starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .stages import TRAINING_MODES

# TrainingArguments a config may set; the rest are fixed by the Faceptor recipe or the command line.
TRAINING_KEYS = {
    "max_steps", "learning_rate", "warmup_steps", "weight_decay", "lr_scheduler_type", "logging_steps",
    "save_steps", "save_total_limit", "seed", "dataloader_num_workers", "gradient_accumulation_steps",
    "max_grad_norm", "bf16", "fp16", "gradient_checkpointing", "adam_beta1", "adam_beta2", "adam_epsilon",
    "ddp_find_unused_parameters",
}  # fmt: skip
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


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise TrainingConfigError(f"{source}: {message}")


def parse_training_config(raw: dict[str, Any], source: str = "<dict>", check_paths: bool = True) -> TrainingConfig:
    """Checks the structure of a config dict and, with `check_paths`, that every file and folder it names
    exists (values that need the model are checked by the runner)."""
    _require(isinstance(raw, dict), source, "the config must be a mapping")
    unknown = set(raw) - {"model", "stage", "tasks", "training"}
    _require(not unknown, source, f"unknown sections {sorted(unknown)} (expected model, stage, tasks, training)")
    model = raw.get("model") or {}
    starts = [key for key in ("preset", "pretrained") if key in model]
    _require(len(starts) == 1, source, "model needs exactly one of 'preset' or 'pretrained'")
    if "pretrained" in model and check_paths:
        _require(Path(model["pretrained"]).is_dir(), source, f"model.pretrained {model['pretrained']}: no such folder")
    if "farl" in model and check_paths:
        _require(Path(model["farl"]).exists(), source, f"model.farl {model['farl']}: no such file")
    stage = raw.get("stage") or {}
    mode = stage.get("mode", "full")
    _require(mode in TRAINING_MODES, source, f"stage.mode {mode!r} is not one of {TRAINING_MODES}")
    tasks_raw = raw.get("tasks") or {}
    _require(isinstance(tasks_raw, dict) and tasks_raw, source, "tasks must map task names to their settings")
    tasks = []
    for name, settings in tasks_raw.items():
        where = f"{source}: task {name!r}"
        _require(isinstance(settings, dict), where, "settings must be a mapping")
        extra = set(settings) - {"samples_per_step", "weight", "data", "num_identities", "eval", "embedding_loss"}
        _require(not extra, where, f"unknown settings {sorted(extra)}")
        samples = settings.get("samples_per_step")
        _require(
            isinstance(samples, int) and samples > 0,
            where,
            f"samples_per_step (n_t) must be a positive integer, got {samples!r}",
        )
        weight = settings.get("weight", 1.0)
        _require(
            isinstance(weight, (int, float)) and weight >= 0, where, f"weight (alpha_t) must be >= 0, got {weight!r}"
        )
        data = settings.get("data")
        _require(
            isinstance(data, dict) and len(data) >= 1, where, "needs data: {synthetic: {...}} or {reader, root, split}"
        )
        if "synthetic" not in data:
            for key in ("reader", "root", "split"):
                _require(key in data, where, f"data needs '{key}'")
            if check_paths:
                _require(os.path.exists(data["root"]), where, f"data root {data['root']}: no such folder")
        evaluation = settings.get("eval")
        if evaluation is not None:
            for key in ("reader", "root", "split"):
                _require(isinstance(evaluation, dict) and key in evaluation, where, f"eval needs '{key}'")
            if check_paths:
                _require(os.path.exists(evaluation["root"]), where, f"eval root {evaluation['root']}: no such folder")
        embedding_loss = settings.get("embedding_loss", "cosface")
        _require(
            embedding_loss in EMBEDDING_LOSSES,
            where,
            f"embedding_loss must be one of {EMBEDDING_LOSSES}, got {embedding_loss!r}",
        )
        tasks.append(
            TaskTrainingConfig(
                name, samples, float(weight), data, settings.get("num_identities"), evaluation, embedding_loss
            )
        )
    _require(sum(task.weight for task in tasks) > 0, source, "at least one task needs a positive weight")
    training = raw.get("training") or {}
    extra = set(training) - TRAINING_KEYS - {"head_lr_multiplier"}
    _require(not extra, source, f"unknown training settings {sorted(extra)}")
    training = dict(training)
    head_lr_multiplier = float(training.pop("head_lr_multiplier", 10.0))
    return TrainingConfig(
        model=model,
        tasks=tasks,
        mode=mode,
        prompt_tasks=list(stage.get("prompt_tasks", [])),
        open_layers=[int(layer) for layer in stage.get("open_layers", [])],
        copy_top_projection=bool(stage.get("copy_top_projection", False)),
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
    except yaml.YAMLError as error:
        raise TrainingConfigError(f"{path}: not valid YAML ({error})") from None
    return parse_training_config(raw, str(path), check_paths)
