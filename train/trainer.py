"""`FaceptorTrainer`: transformers' Trainer stepping on multi-task batches, one encoder pass per input size."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer

from ..modeling_faceptor import FaceptorModel
from .data.multitask import MultiTaskStepDataset, TaskStream, group_by_input_size
from .losses import FaceptorLoss

TRAINING_STATE_FILE = "training_state.safetensors"  # the loss module's weights, as the converter writes them
LOSS_STATE_PREFIX = "losses_module."
QUERY_SET_FOLDER = "task_query_sets"  # one safetensors per task: its `task_state_dict`
ENCODER_PREFIX = "model.encoder."
NO_DECAY_MARKERS = ("query_", "level_embeddings", "position_embedding", "class_embedding")


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
    - checkpoints are `save_pretrained` folders (plus the loss module's weights and each task's query set).
    """

    def __init__(self, *args, task_streams: Sequence[TaskStream], head_lr_multiplier: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.task_streams = list(task_streams)
        self.head_lr_multiplier = head_lr_multiplier
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
            self._task_loss_sums[name] += float(loss)
            self._task_loss_counts[name] += 1
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

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

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        module = self.accelerator.unwrap_model(model or self.model)
        load_training_weights(module, resume_from_checkpoint)


def load_training_weights(module: FaceptorTrainingModule, folder: str) -> None:
    """Loads a checkpoint folder's model weights and, if present, the loss module's, strictly."""
    weights = load_file(os.path.join(folder, "model.safetensors"))
    module.model.load_state_dict(weights, strict=True)
    path = os.path.join(folder, TRAINING_STATE_FILE)
    if os.path.exists(path):
        state = {key[len(LOSS_STATE_PREFIX) :]: value for key, value in load_file(path).items()}
        module.losses_module.load_state_dict(state, strict=True)
