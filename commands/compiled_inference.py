"""The model's forward at fixed batch shapes: each call padded to `batch_size` rows and run through `torch.compile`
(on CUDA with autotuned kernels and CUDA graphs), so one compiled graph serves every batch of a crop size, the last
smaller batch included; the outputs are sliced back to the real rows. `faceptor predict` installs it on CUDA."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# On CUDA: Triton kernels tuned per shape plus CUDA graphs (the batch-1 forward is launch-bound without them).
CUDA_COMPILE_MODE = "max-autotune"
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the torch.compile modes that replay CUDA graphs


def default_compile_mode(device: torch.device | str | None) -> str | None:
    """The `torch.compile` mode for a device: autotuning with CUDA graphs on CUDA, inductor's default elsewhere."""
    return CUDA_COMPILE_MODE if torch.device(device or "cpu").type == "cuda" else None


def slice_rows(value: Any, rows: int, padded_rows: int, copy: bool) -> Any:
    """`value` (a tensor, or a model output, dict, tuple or list of them) with every tensor whose first dimension
    is `padded_rows` cut to its first `rows`; `copy` clones them (CUDA-graph outputs are reused by the next call)."""
    if isinstance(value, torch.Tensor):
        if value.ndim and value.shape[0] == padded_rows:
            value = value[:rows]
            return value.clone() if copy else value
        return value
    if isinstance(value, dict):
        items = {key: slice_rows(item, rows, padded_rows, copy) for key, item in value.items()}
        return items if type(value) is dict else type(value)(**items)
    if isinstance(value, (tuple, list)):
        return type(value)(slice_rows(item, rows, padded_rows, copy) for item in value)
    return value


class FixedShapeForward:
    """Stands in for a model's `forward(pixel_values, tasks=None)`: batches of at most `batch_size` rows are padded
    with copies of their last row (each row's outputs depend on that row alone in inference) and run compiled;
    bigger or empty batches, other arguments and training run the eager forward. `announce` gets one line per new
    input shape and task list, with the time its first (compiling) call took."""

    def __init__(
        self,
        forward: Callable[..., Any],
        batch_size: int,
        mode: str | None = None,
        backend: str = "inductor",
        announce: Callable[[str], None] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.eager = forward
        self.batch_size = batch_size
        self.copy_outputs = mode in CUDA_GRAPH_MODES
        self.compiled = torch.compile(forward, mode=mode, backend=backend, dynamic=False)
        self.announce = announce
        self.seen: set[tuple] = set()

    def __call__(self, pixel_values: torch.Tensor, tasks: str | list[str] | None = None, **kwargs: Any) -> Any:
        module = getattr(self.eager, "__self__", None)
        rows = pixel_values.shape[0] if isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 4 else 0
        training = isinstance(module, nn.Module) and module.training
        if kwargs or training or not 0 < rows <= self.batch_size:
            return self.eager(pixel_values, tasks=tasks, **kwargs)
        if rows < self.batch_size:
            padding = pixel_values[-1:].expand(self.batch_size - rows, -1, -1, -1)
            pixel_values = torch.cat([pixel_values, padding])
        key = (tuple(pixel_values.shape), pixel_values.dtype, pixel_values.device, _task_key(tasks))
        first = key not in self.seen
        start = time.perf_counter()
        if self.copy_outputs:
            torch.compiler.cudagraph_mark_step_begin()  # this call's outputs are copied out before the next one
        outputs = self.compiled(pixel_values, tasks=tasks)
        if first:
            self.seen.add(key)
            if self.announce is not None:
                shape = " x ".join(str(size) for size in key[0])
                self.announce(f"compiled the model for {shape} inputs in {time.perf_counter() - start:.1f} s")
        return slice_rows(outputs, rows, self.batch_size, self.copy_outputs)


def _task_key(tasks: str | list[str] | None) -> tuple[str, ...] | None:
    return None if tasks is None else (tasks,) if isinstance(tasks, str) else tuple(tasks)


def install_fixed_shape_forward(
    model: nn.Module,
    batch_size: int,
    mode: str | None = None,
    backend: str = "inductor",
    announce: Callable[[str], None] | None = None,
) -> FixedShapeForward:
    """Replaces `model.forward` (on this instance only: the weights, their names and `state_dict` are unchanged)
    with a `FixedShapeForward` around it; whoever calls the model, e.g. the pipeline, gets the compiled path."""
    runner = FixedShapeForward(model.forward, batch_size, mode=mode, backend=backend, announce=announce)
    model.forward = runner
    return runner
