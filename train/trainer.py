"""`FaceptorTrainer`: transformers' Trainer stepping on multi-task batches, one encoder pass per input size."""

from __future__ import annotations

import math
import os
import pickle
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..modeling_faceptor import FaceptorModel
from .checkpoints import STAGING_PREFIX, CheckpointError, commit_checkpoint, write_run_record
from .data.multitask import MultiTaskStepDataset, TaskStream, group_by_input_size
from .losses import FaceptorLoss

TRAINING_STATE_FILE = "training_state.safetensors"  # the loss module's weights, as the converter writes them
LOSS_STATE_PREFIX = "losses_module."
QUERY_SET_FOLDER = "task_query_sets"  # one safetensors per task: its `task_state_dict`
ENCODER_PREFIX = "model.encoder."
NO_DECAY_MARKERS = ("query_", "level_embeddings", "position_embedding", "class_embedding")
# What a damaged or hostile checkpoint file raises on loading (torch.load refuses pickled code with weights_only).
UNREADABLE_CHECKPOINT_ERRORS = (pickle.UnpicklingError, SafetensorError, EOFError, OSError, RuntimeError, ValueError)


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm stopped being finite: training stops before the weights change."""


def first_line(error: BaseException) -> str:
    """An exception's message as one line (torch's and transformers' messages span many)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class FaceptorTrainingModule(nn.Module):
    """The model and its training loss in one module, so that DDP synchronises the CosFace class matrix
    with the model. `forward(task_batches)` runs the encoder once per input size and returns the Eq. 8 total
    and each task's loss."""

    def __init__(self, model: FaceptorModel, losses_module: FaceptorLoss):
        super().__init__()
        self.model = model
        self.losses_module = losses_module

    @property
    def config(self):
        return self.model.config

    def forward(self, task_batches: Mapping[str, Mapping[str, torch.Tensor]]) -> dict:
        outputs, labels = {}, {}
        for names in group_by_input_size(task_batches).values():
            pixel_values = torch.cat([task_batches[name]["pixel_values"] for name in names])
            rows, start = {}, 0
            for name in names:
                count = len(task_batches[name]["pixel_values"])
                rows[name], start = slice(start, start + count), start + count
                labels[name] = task_batches[name]["labels"]
            outputs.update(self.model(pixel_values, tasks=names, task_samples=rows).task_outputs)
        total, per_task = self.losses_module(outputs, labels)
        return {"loss": total, "task_losses": {name: loss.detach() for name, loss in per_task.items()}}

    def train(self, mode: bool = True) -> FaceptorTrainingModule:
        """As `nn.Module.train`, except that frozen BatchNorm layers keep their running statistics (a frozen
        part of the model must not drift through its buffers)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                parameter.requires_grad for parameter in module.parameters()
            ):
                module.eval()
        return self

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)


class FaceptorTrainer(Trainer):
    """Trains a [`FaceptorTrainingModule`] on several tasks at once (paper Sec. 4.1):

    - every step takes n_t samples of each task ([`MultiTaskStepDataset`], sharded over ranks by the trainer);
    - the encoder runs once per input-size group;
    - the encoder learns at `learning_rate`, everything else at `head_lr_multiplier` x (10 in the paper);
    - each task's loss is logged beside the total (`loss/<task>`);
    - checkpoints are `save_pretrained` folders (plus the loss module's weights and each task's query set),
      written as `tmp-checkpoint-N` and renamed when whole, with `run_record` (the config's fingerprint) inside;
    - a loss or gradient norm that is not finite stops training (`TrainingDivergedError`) before the step.
    """

    def __init__(
        self,
        *args,
        task_streams: Sequence[TaskStream],
        head_lr_multiplier: float = 10.0,
        run_record: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.task_streams = list(task_streams)
        self.head_lr_multiplier = head_lr_multiplier
        self.run_record = run_record or {}
        self._staging_dir: str | None = None
        self._nonfinite_losses: dict[str, float] = {}
        self._task_loss_sums: dict[str, float] = defaultdict(float)
        self._task_loss_counts: dict[str, int] = defaultdict(int)
        self.task_loss_history: list[dict] = []

    def get_train_dataloader(self) -> DataLoader:
        dataset = MultiTaskStepDataset(
            self.task_streams, seed=self.args.seed, rank=self.args.process_index, world_size=self.args.world_size
        )
        # The dataset shards over ranks itself, so the loader is not handed to accelerate for splitting.
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        for name, loss in outputs["task_losses"].items():
            value = float(loss)
            self._task_loss_sums[name] += value
            self._task_loss_counts[name] += 1
            if not math.isfinite(value):
                self._nonfinite_losses[name] = value
        total = float(outputs["loss"].detach())
        if not math.isfinite(total):
            self._nonfinite_losses.setdefault("total", total)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def _get_grad_norm(self, model, grad_norm=None):
        """The gradient norm, checked with this step's losses on every process before the optimiser steps: a
        non-finite one stops training on all of them alike (under fp16 the grad scaler skips such steps itself)."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        norm = float(grad_norm) if grad_norm is not None else 0.0
        bad_norm = not math.isfinite(norm) and not self.args.fp16
        flags = torch.tensor([float(bool(self._nonfinite_losses)), float(bad_norm)], device=self.args.device)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        losses, self._nonfinite_losses = self._nonfinite_losses, {}
        step = self.state.global_step + 1
        if flags[0] > 0:
            found = ", ".join(f"{name} {value}" for name, value in losses.items()) or "on another process"
            raise TrainingDivergedError(
                f"the loss is not finite at step {step} ({found}); stopped before updating the weights "
                "(check the task weights, learning rate and labels)"
            )
        if flags[1] > 0:
            raise TrainingDivergedError(
                f"the gradient norm is not finite ({norm}) at step {step}; stopped before updating the weights "
                "(lower the learning rate or the task weights, or set max_grad_norm)"
            )
        return grad_norm

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._task_loss_counts:
            for name, total in self._task_loss_sums.items():
                logs[f"loss/{name}"] = round(total / self._task_loss_counts[name], 6)
            self.task_loss_history.append({"step": self.state.global_step, **logs})
            self._task_loss_sums.clear()
            self._task_loss_counts.clear()
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, model=None):
        """AdamW over two learning rates (encoder x1, the rest x `head_lr_multiplier`); no weight decay on
        biases, norms, embeddings and queries."""
        if self.optimizer is not None:
            return self.optimizer
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = defaultdict(list)
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            decays = parameter.ndim >= 2 and not any(marker in name for marker in NO_DECAY_MARKERS)
            groups[(name.startswith(ENCODER_PREFIX), decays)].append(parameter)
        base = self.args.learning_rate
        parameter_groups = [
            {
                "params": parameters,
                "lr": base if in_encoder else base * self.head_lr_multiplier,
                "weight_decay": self.args.weight_decay if decays else 0.0,
            }
            for (in_encoder, decays), parameters in groups.items()
        ]
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_class(parameter_groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        module = self.accelerator.unwrap_model(self.model)
        module.model.save_pretrained(output_dir, safe_serialization=True)
        losses = {
            LOSS_STATE_PREFIX + key: value.detach().cpu().contiguous()
            for key, value in module.losses_module.state_dict().items()
        }
        if losses:
            save_file(losses, os.path.join(output_dir, TRAINING_STATE_FILE))
        for task in module.model.config.task_names:
            query_set = module.model.task_state_dict(task)
            if query_set:
                os.makedirs(os.path.join(output_dir, QUERY_SET_FOLDER), exist_ok=True)
                tensors = {key: value.cpu().contiguous() for key, value in query_set.items()}
                save_file(tensors, os.path.join(output_dir, QUERY_SET_FOLDER, f"{task}.safetensors"))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is saved, the Trainer writes it into its staging folder (see `_save_checkpoint`).
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Saves the checkpoint as transformers does, but into `tmp-checkpoint-N/checkpoint-N`, adds the run
        record, and renames it to `checkpoint-N` only when every process has written its part: a killed run
        leaves no incomplete `checkpoint-N`."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)  # what a killed run left half written
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_run_record(os.path.join(staging, name), self.run_record)
            commit_checkpoint(os.path.join(staging, name), os.path.join(run_dir, name))
            os.rmdir(staging)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        module = self.accelerator.unwrap_model(model or self.model)
        try:
            load_training_weights(module, resume_from_checkpoint)
        except UNREADABLE_CHECKPOINT_ERRORS as error:
            raise unreadable_checkpoint(resume_from_checkpoint, "weights", error) from None

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except UNREADABLE_CHECKPOINT_ERRORS as error:
            raise unreadable_checkpoint(checkpoint, "optimizer state", error) from None

    def _load_scaler(self, checkpoint: str | None) -> None:
        try:
            super()._load_scaler(checkpoint)
        except UNREADABLE_CHECKPOINT_ERRORS as error:
            raise unreadable_checkpoint(checkpoint, "grad-scaler state", error) from None

    def _load_rng_state(self, checkpoint: str | None) -> None:
        try:
            super()._load_rng_state(checkpoint)
        except UNREADABLE_CHECKPOINT_ERRORS as error:
            raise unreadable_checkpoint(checkpoint, "random-number state", error) from None


def unreadable_checkpoint(checkpoint: str | None, what: str, error: BaseException) -> CheckpointError:
    """The one-line error for a checkpoint file that does not load. torch's refusal of pickled objects advises
    loading the file unsafely; the message here says what happened instead."""
    if isinstance(error, pickle.UnpicklingError):
        reason = "it holds pickled objects other than tensors (possibly code), refused unrun"
    else:
        reason = first_line(error)
    return CheckpointError(f"{checkpoint}: its {what} cannot be loaded: {reason}")


def load_training_weights(module: FaceptorTrainingModule, folder: str) -> None:
    """Loads a checkpoint folder's model weights and, if present, the loss module's, strictly."""
    weights = load_file(os.path.join(folder, "model.safetensors"))
    module.model.load_state_dict(weights, strict=True)
    path = os.path.join(folder, TRAINING_STATE_FILE)
    if os.path.exists(path):
        state = {key[len(LOSS_STATE_PREFIX) :]: value for key, value in load_file(path).items()}
        module.losses_module.load_state_dict(state, strict=True)
