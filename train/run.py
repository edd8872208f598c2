"""`faceptor train --config CFG`: builds the model, data and FaceptorTrainer from a YAML config and trains,
as one process or under `accelerate launch`."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import shutil
import sys
from collections.abc import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoModel, TrainingArguments, set_seed

from ..commands.interruption import Terminated, run_stoppable
from ..commands.model_loading import check_model_size
from ..configuration_faceptor import FaceptorConfig
from ..configuration_naive_faceptor import NaiveFaceptorConfig
from ..modeling_faceptor import FaceptorModel
from ..modeling_naive_faceptor import NaiveFaceptorModel
from ..processing.image_processing_faceptor import FaceptorImageProcessor
from .checkpoints import (
    STAGING_PREFIX,
    CheckpointError,
    check_run_record,
    earlier_run,
    move_into,
    newest_complete_checkpoint,
    remove_earlier_checkpoints,
)
from .config import TrainingConfig, TrainingConfigError, load_training_config, training_fingerprint
from .data.common import DatasetFormatError
from .data.multitask import TaskStream
from .losses import FaceptorLoss
from .stages import freeze_for_mode
from .synthetic import SyntheticTaskDataset
from .trainer import (
    LOSS_STATE_PREFIX,
    TRAINING_STATE_FILE,
    FaceptorTrainer,
    FaceptorTrainingModule,
    TrainingDivergedError,
    first_line,
)

ARCHITECTURES = {"faceptor": (FaceptorConfig, FaceptorModel), "naive": (NaiveFaceptorConfig, NaiveFaceptorModel)}


def build_model(config: TrainingConfig):
    settings = config.model
    architecture = settings.get("architecture", "faceptor")
    if architecture not in ARCHITECTURES:
        raise TrainingConfigError(f"{config.source}: model.architecture must be one of {sorted(ARCHITECTURES)}")
    config_class, model_class = ARCHITECTURES[architecture]
    if "pretrained" in settings:
        model = AutoModel.from_pretrained(settings["pretrained"])
    else:
        # Either architecture's keys: one config trains both (Naive Faceptor ignores the decoder's sizes).
        known = {field.name for classes in ARCHITECTURES.values() for field in dataclasses.fields(classes[0])}
        unknown = sorted(set(settings.get("config", {})) - known)
        if unknown:  # the config class would keep a misspelt key as an attribute and train the preset's value
            raise TrainingConfigError(f"{config.source}: model.config has unknown keys {unknown}")
        try:
            model_config = config_class.from_preset(settings["preset"], **settings.get("config", {}))
            check_model_size(model_config, "model.config")  # an absurd size: one line, not torch's allocation error
        except (TypeError, ValueError) as error:
            raise TrainingConfigError(f"{config.source}: model: {error}") from None
        model = model_class(model_config)
        if "farl" in settings:
            from ..conversion import convert_farl_state_dict, load_checkpoint_file

            checkpoint = load_checkpoint_file(settings["farl"])
            encoder, _ = convert_farl_state_dict(checkpoint.get("state_dict", checkpoint), model_config)
            missing = [
                key for key in model.load_state_dict(encoder, strict=False).missing_keys if key.startswith("encoder.")
            ]
            if missing:
                raise TrainingConfigError(f"{settings['farl']}: FaRL weights miss encoder keys {missing[:5]}")
    if not hasattr(model, "decoder") and (settings.get("add_tasks") or config.open_layers):
        raise TrainingConfigError(f"{config.source}: add_tasks and open_layers need Faceptor's task queries")
    for spec in settings.get("add_tasks", []):
        try:
            model.add_task(spec)
        except ValueError as error:
            raise TrainingConfigError(f"{config.source}: model.add_tasks: {error}") from None
    if config.open_layers:
        try:
            model.add_decoder_levels(config.open_layers, copy_top_projection=config.copy_top_projection)
        except ValueError as error:
            raise TrainingConfigError(f"{config.source}: stage.open_layers: {error}") from None
    return model


def check_sample(
    spec: dict, sample: dict, num_identities: int | None, where: str, teacher_embedding_size: int | None = None
) -> None:
    """The first sample of a task's dataset has the label shape and range the task's loss needs
    (`teacher_embedding_size`: an identity task learning a teacher's embeddings of that size)."""
    if not isinstance(sample, dict) or "pixel_values" not in sample or "labels" not in sample:
        raise TrainingConfigError(f"{where}: samples must be dicts with 'pixel_values' and 'labels'")
    pixels, labels = sample["pixel_values"], torch.as_tensor(sample["labels"])
    size = spec["input_size"]
    if tuple(pixels.shape) != (3, size, size):
        raise TrainingConfigError(f"{where}: pixel_values of shape {tuple(pixels.shape)}, expected (3, {size}, {size})")
    kind, queries = spec["kind"], spec["num_queries"]
    expected = {"landmarks": (queries, 2), "parsing": (size, size), "multilabel": (queries,)}.get(kind, ())
    if teacher_embedding_size is not None:
        expected, num_identities = (teacher_embedding_size,), None
    if tuple(labels.shape) != expected:
        raise TrainingConfigError(f"{where}: labels of shape {tuple(labels.shape)}, a {kind} task needs {expected}")
    limit = {"classification": queries, "parsing": queries, "embedding": num_identities}.get(kind)
    if limit is not None and (labels.min() < 0 or labels.max() >= limit):
        raise TrainingConfigError(f"{where}: labels outside 0..{limit - 1}")


def build_dataset(config: TrainingConfig, task, spec: dict, teacher_embedding_size: int | None = None):
    where = f"{config.source}: task {task.name!r}"
    data = task.data
    if "synthetic" in data:
        options = dict(data["synthetic"] or {})
        options.setdefault("num_identities", task.num_identities or 4)
        dataset = SyntheticTaskDataset(spec, seed=config.training_arguments["seed"], **options)
    else:
        from .data.task_dataset import build_task_dataset

        try:
            dataset = build_task_dataset(spec, data["reader"], data["root"], data["split"], train=True)
        except (DatasetFormatError, OSError) as error:
            raise TrainingConfigError(f"{where}: {first_line(error)}") from None
    if len(dataset) == 0:
        raise TrainingConfigError(f"{where}: the dataset is empty")
    identities = task.num_identities or data.get("synthetic", {}).get("num_identities", 4)
    try:
        first = dataset[0]
    except (DatasetFormatError, OSError) as error:  # a reader's own files decode lazily, at the first sample
        raise TrainingConfigError(f"{where}: the first sample cannot be read: {first_line(error)}") from None
    check_sample(spec, first, identities, where, teacher_embedding_size)
    return dataset


def freeze_untrained(model, trained: Sequence[dict]) -> None:
    """Parameters no trained task reaches get no gradient, so DDP need not look for unused ones."""
    kinds = {spec["category"] for spec in trained}
    names = {spec["name"] for spec in trained}
    if hasattr(model, "task_parameter_names"):  # Naive Faceptor: each task's own part of its group's head
        parameters = dict(model.named_parameters())
        for task in model.config.task_names:
            if task in names:
                continue
            for parameter_name, own in model.task_parameter_names(task).items():
                if own == parameters[parameter_name].numel():
                    parameters[parameter_name].requires_grad_(False)
        return
    unreached = []
    if "identity" not in kinds:
        unreached.append("identity_head.")
    if "attribute" not in kinds:
        unreached.append("attribute_head.")
    if "dense" not in kinds:
        unreached += ["pixel_decoder.", "dense_head."]
    if kinds <= {"identity"}:
        unreached.append("decoder.")
    for name, parameter in model.named_parameters():
        task = name.split(".")[2] if name.startswith(("decoder.query_", "decoder.task_level_")) else None
        if name.startswith(tuple(unreached)) or (task is not None and task not in names):
            parameter.requires_grad_(False)


def build_trainer(config: TrainingConfig, output_dir: str) -> FaceptorTrainer:
    set_seed(config.training_arguments["seed"])  # the fresh weights too must not depend on the run
    model = build_model(config)
    specs = model.config.task_specs
    missing = [task.name for task in config.tasks if task.name not in specs]
    if missing:
        raise TrainingConfigError(f"{config.source}: the model has no task {missing}; its tasks are {list(specs)}")
    trained = [specs[task.name].to_dict() for task in config.tasks]
    if not hasattr(model, "decoder") and config.mode not in ("full", "decoder"):
        raise TrainingConfigError(
            f"{config.source}: stage.mode {config.mode!r} trains task queries or layer embeddings, which Naive "
            "Faceptor does not have; use full or decoder (its heads)"
        )
    try:
        freeze_for_mode(model, config.mode, config.prompt_tasks or None, new_levels=len(config.open_layers))
    except ValueError as error:
        raise TrainingConfigError(f"{config.source}: stage: {error}") from None
    freeze_untrained(model, trained)
    teacher_tasks = [task.name for task in config.tasks if task.embedding_loss == "teacher"]
    embedding_size = model.config.identity_embedding_size
    streams = [
        TaskStream(
            task.name,
            build_dataset(config, task, spec, embedding_size if task.name in teacher_tasks else None),
            task.samples_per_step,
        )
        for task, spec in zip(config.tasks, trained, strict=True)
    ]
    identity_classes = {}
    for task, spec in zip(config.tasks, trained, strict=True):
        if spec["kind"] == "embedding" and task.name not in teacher_tasks:
            identity_classes[task.name] = task.num_identities or task.data.get("synthetic", {}).get("num_identities", 4)
    losses = FaceptorLoss(
        {spec["name"]: spec for spec in trained},
        {task.name: task.weight for task in config.tasks},
        identity_classes,
        embedding_size,
        teacher_tasks,
    )
    state_file = os.path.join(config.model.get("pretrained", ""), TRAINING_STATE_FILE)
    if "pretrained" in config.model and os.path.exists(state_file):
        state = {key.removeprefix(LOSS_STATE_PREFIX): value for key, value in load_file(state_file).items()}
        current = losses.state_dict()
        losses.load_state_dict(
            {k: v for k, v in state.items() if k in current and v.shape == current[k].shape}, strict=False
        )
    arguments = TrainingArguments(
        output_dir=output_dir,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        per_device_train_batch_size=1,  # steps are whole multi-task batches; n_t lives in the task settings
        **{"max_steps": 1000, **config.training_arguments},
    )
    for task, spec in zip(config.tasks, trained, strict=True):
        per_process = task.samples_per_step // max(arguments.world_size, 1)
        identity_head = getattr(model, "identity_head", None)  # Naive Faceptor's sits among its task heads
        trains_batch_norm = identity_head is None or identity_head.batch_norm1.weight.requires_grad
        if spec["kind"] == "embedding" and per_process < 2 and trains_batch_norm:
            raise TrainingConfigError(
                f"{config.source}: task {task.name!r}: the identity head's BatchNorm needs at least 2 samples per "
                f"process, got n_t = {task.samples_per_step} over {arguments.world_size} process(es)"
            )
    return FaceptorTrainer(
        model=FaceptorTrainingModule(model, losses),
        args=arguments,
        task_streams=streams,
        head_lr_multiplier=config.head_lr_multiplier,
        processing_class=FaceptorImageProcessor(),
        run_record={"config_sha256": training_fingerprint(config), "config": config.source},
    )


def plot_task_losses(history: list[dict], path: str) -> None:
    """One curve per task loss (and the total) against the step, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [entry for entry in history if "loss" in entry]
    if not entries:
        return
    names = sorted({key for entry in entries for key in entry if key.startswith("loss/")})
    figure, axes = plt.subplots(figsize=(8, 5))
    steps = [entry["step"] for entry in entries]
    axes.plot(steps, [entry["loss"] for entry in entries], label="total (Eq. 8)", color="black", linewidth=2)
    for name in names:
        axes.plot(steps, [entry.get(name) for entry in entries], label=name.removeprefix("loss/"))
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path + ".tmp", dpi=120, format="png")
    plt.close(figure)
    os.replace(path + ".tmp", path)


def replica_checksums(trainer: FaceptorTrainer) -> list[str]:
    """A checksum of the model weights from every process (one entry when not distributed)."""
    module = trainer.accelerator.unwrap_model(trainer.model)
    total = torch.zeros(2, dtype=torch.float64, device=trainer.args.device)
    for parameter in module.parameters():
        values = parameter.detach().double()
        total[0] += values.sum()
        total[1] += (values * values).sum()
    gathered = trainer.accelerator.gather(total[None]).cpu().tolist()
    return [f"{first:.12e}/{second:.12e}" for first, second in gathered]


def final_metrics(trainer: FaceptorTrainer, config: TrainingConfig) -> dict[str, dict[str, float]]:
    """Each task's scores after training: on its `eval` data when the config names some, else (synthetic
    data) on its training samples; identity tasks need a verification set as `eval`."""
    import numpy as np

    from .data.task_dataset import build_task_dataset
    from .evaluation import evaluate_task, evaluate_verification

    model = trainer.accelerator.unwrap_model(trainer.model).model
    results = {}
    for task, stream in zip(config.tasks, trainer.task_streams, strict=True):
        spec = model.config.task_specs[task.name]
        if spec.kind == "embedding":
            if task.eval is None:
                continue
            from .augmentation import build_eval_transform
            from .data import load_face_dataset

            pairs = load_face_dataset(task.eval["reader"], task.eval["root"], task.eval["split"])
            transform = build_eval_transform(spec.kind, spec.input_size)
            scores = evaluate_verification(model, task.name, pairs, transform, progress=False)
        else:
            if task.eval is not None:
                reader = task.eval["reader"]
                dataset = build_task_dataset(spec.to_dict(), reader, task.eval["root"], task.eval["split"], False)
            elif "synthetic" in task.data:
                reader, dataset = None, stream.dataset
            else:
                continue
            scores = evaluate_task(model, task.name, dataset, reader, progress=False)[0]
        results[task.name] = {name: float(value) for name, value in scores.items() if np.isscalar(value)}
    return results


def last_checkpoint(output_dir: str, config: TrainingConfig | None = None) -> str:
    """The newest complete checkpoint folder in `output_dir`, for `--resume` (with `config`: refused unless that
    config wrote it); says on standard error which one, and which incomplete ones it passes over."""
    checkpoint, skipped = newest_complete_checkpoint(output_dir)
    if config is not None:
        check_run_record(checkpoint, training_fingerprint(config))
    if int(os.environ.get("RANK", "0")) == 0:
        passed = f" (skipping incomplete {', '.join(skipped)})" if skipped else ""
        print(f"faceptor train: resuming from {checkpoint}{passed}", file=sys.stderr)
    return checkpoint


def prepare_output_dir(output_dir: str, config: TrainingConfig, resume: bool, overwrite: bool) -> str | None:
    """Checks `output_dir` before anything is built: a folder (or nothing yet), and not another run's unless
    resumed (that run's checkpoint is returned) or overwritten. CheckpointError otherwise."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise CheckpointError(f"--output_dir {output_dir} is a file, not a folder")
    if resume:
        return last_checkpoint(output_dir, config)
    found = earlier_run(output_dir)
    if found and not overwrite:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise CheckpointError(
            f"{output_dir} holds an earlier run ({shown}): pass --resume to continue it, --overwrite_output_dir "
            "to replace it, or choose another --output_dir"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """`faceptor train`: its exit status; Ctrl-C and SIGTERM end it with one line (130, 143), no traceback."""
    return run_stoppable(lambda: _train(argv), "faceptor train")


def _train(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="faceptor train", description="Multi-task training of Faceptor.")
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("--output_dir", "--output-dir", default=None, help="checkpoints and the final model")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint in output_dir"
    )
    parser.add_argument(
        "--overwrite_output_dir",
        "--overwrite-output-dir",
        action="store_true",
        help="start afresh in an output_dir that holds an earlier run, deleting its checkpoints",
    )
    args = parser.parse_args(argv)
    if args.resume and args.overwrite_output_dir:
        parser.error("--resume continues the earlier run and --overwrite_output_dir replaces it: pass one")
    try:
        config = load_training_config(args.config)
        output_dir = args.output_dir or os.path.join("outputs", os.path.splitext(os.path.basename(args.config))[0])
        resume = prepare_output_dir(output_dir, config, args.resume, args.overwrite_output_dir)
        trainer = build_trainer(config, output_dir)
        if args.overwrite_output_dir:
            if trainer.is_world_process_zero():
                remove_earlier_checkpoints(output_dir)
            trainer.accelerator.wait_for_everyone()
    except (TrainingConfigError, CheckpointError) as error:
        print(f"faceptor train: error: {error}", file=sys.stderr)
        return 2
    try:
        return finish_training(trainer, config, output_dir, resume)
    except (KeyboardInterrupt, Terminated):
        close_progress_bars(trainer)  # the one line that follows starts a line of its own
        raise
    except CheckpointError as error:
        print(f"faceptor train: error: {error}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        close_progress_bars(trainer)
        print(f"faceptor train: error: {error}", file=sys.stderr)
        return 1
    except DatasetFormatError as error:  # a corrupt image past the first sample, met while training
        close_progress_bars(trainer)
        print(f"faceptor train: error: {dataset_error_line(error)}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, SafetensorError) as error:
        if not is_disk_full(error):
            raise
        close_progress_bars(trainer)
        remove_partial_saves(output_dir)  # the half-written save only takes space; the whole checkpoints stay
        reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
        print(
            f"faceptor train: error: {output_dir}: the disk is full while saving ({reason}); "
            "the checkpoints saved before are whole",
            file=sys.stderr,
        )
        return 2
    finally:
        # A process group left open makes gloo's threads abort the interpreter at exit.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` says the disk is full: an OSError's errno, or the words torch and safetensors wrap it in."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(error) for words in ("No space left on device", "StorageFull", "Disk quota exceeded"))


def dataset_error_line(error: DatasetFormatError) -> str:
    """The reader's own line: a DataLoader worker re-raises it wrapped ("Caught ... in DataLoader worker process
    N." and the worker's traceback), whose last line holds it."""
    lines = str(error).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(error).__name__


def remove_partial_saves(output_dir: str) -> None:
    """Removes the staging folders of saves that failed (`tmp-...`)."""
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def close_progress_bars(trainer: FaceptorTrainer) -> None:
    """Ends the progress bar of a run stopped midway, so that what follows starts a line of its own."""
    for callback in trainer.callback_handler.callbacks:
        bar = getattr(callback, "training_bar", None)
        if bar is not None:
            bar.close()
            callback.training_bar = None


def finish_training(trainer: FaceptorTrainer, config: TrainingConfig, output_dir: str, resume: str | None) -> int:
    """Trains, saves the model, checks the replicas agree and writes the loss plot, log and metrics."""
    trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer, output_dir)
    checksums = replica_checksums(trainer)
    if trainer.is_world_process_zero() and len(checksums) > 1:
        # Every rank must hold the same weights after training; a mismatch means broken synchronisation.
        write_json(os.path.join(output_dir, "replica_checksums.json"), checksums)
        if len(set(checksums)) != 1:
            print(
                f"faceptor train: error: the {len(checksums)} processes ended with different weights", file=sys.stderr
            )
            return 1
    if trainer.is_world_process_zero():
        plot_task_losses(trainer.state.log_history, os.path.join(output_dir, "task_losses.png"))
        write_json(os.path.join(output_dir, "log_history.json"), trainer.state.log_history)
        write_json(os.path.join(output_dir, "metrics.json"), final_metrics(trainer, config))
    return 0


def write_json(path: str, value) -> None:
    """Writes JSON under a temporary name and renames it: a reader never sees half a file."""
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle, indent=1)
    os.replace(path + ".tmp", path)


def save_final_model(trainer: FaceptorTrainer, output_dir: str) -> None:
    """Saves the trained model into a staging folder and renames its files into `output_dir` once all are
    written, so a run killed while saving leaves the earlier files whole."""
    staging = os.path.join(output_dir, STAGING_PREFIX + "model")
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        move_into(staging, output_dir)
