"""ONNX export of a Faceptor model for a chosen task set, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..modeling_faceptor import FaceptorModel
from .errors import CommandError
from .model_loading import load_model_folder
from .output_files import OutputFile, disk_problem


class FaceptorTaskGraph(nn.Module):
    """`pixel_values -> (output of task 1, output of task 2, ...)`: the raw outputs of a fixed task set, the
    shape an ONNX graph needs (tensors in, a tuple of tensors out)."""

    def __init__(self, model: FaceptorModel, tasks: Sequence[str]):
        super().__init__()
        self.model = model
        self.tasks = list(tasks)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values, tasks=self.tasks).task_outputs
        return tuple(outputs[task] for task in self.tasks)


def export_onnx(
    model: FaceptorModel,
    path: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    input_size: int | None = None,
    opset: int = 18,
    check: bool = True,
    tolerance: float = 1e-4,
) -> dict[str, float]:
    """Writes an ONNX graph of `tasks` (all by default) for `input_size` crops with a dynamic batch axis, and
    with `check` runs it in onnxruntime on a batch of another size against PyTorch. Returns the largest
    absolute difference per task; raises `ValueError` if one exceeds `tolerance`."""
    if input_size is not None and input_size < 1:
        raise ValueError(f"input_size must be a positive crop side in pixels, got {input_size}")
    specs = model.resolve_tasks(tasks)
    sizes = {spec.input_size for spec in specs}
    if input_size is None:
        if len(sizes) > 1:
            raise ValueError(
                f"The tasks read crops of different sizes {sorted(sizes)}; export one size at a time "
                "(choose tasks of one size or pass input_size)."
            )
        input_size = sizes.pop()
    graph = FaceptorTaskGraph(model, [spec.name for spec in specs]).eval()
    dtype = next(model.parameters()).dtype
    example = torch.randn(2, model.config.num_channels, input_size, input_size, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python constants (task lists, masks) are expected
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=["pixel_values"],
            output_names=graph.tasks,
            dynamic_axes={"pixel_values": {0: "batch"}, **{task: {0: "batch"} for task in graph.tasks}},
            opset_version=opset,
            dynamo=False,
        )
    graph.eval()
    if not check:
        return {}
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = torch.randn(3, model.config.num_channels, input_size, input_size, dtype=dtype)
    exported = session.run(None, {"pixel_values": probe.float().numpy()})
    with torch.no_grad():
        expected = graph(probe)
    differences = {
        task: float(np.abs(result - reference.float().numpy()).max())
        for task, result, reference in zip(graph.tasks, exported, expected, strict=True)
    }
    worst = max(differences.values())
    if worst > tolerance:
        raise ValueError(f"The ONNX graph differs from PyTorch by up to {worst:.2e}: {differences}")
    return differences


def command_export(args: argparse.Namespace) -> None:
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise CommandError(f"{args.output}: no such folder {folder}")
    model = load_model_folder(args.model, FaceptorModel)
    # Written beside the output and renamed, so a failed export leaves no partial graph and no earlier one lost.
    written = OutputFile(args.output)
    if written.special:
        raise CommandError(f"{args.output}: not a regular file; an ONNX graph is written to a file")
    try:
        differences = export_onnx(model, written.path, tasks=args.tasks, input_size=args.size, check=not args.no_check)
        written.commit()
    except ValueError as error:
        raise CommandError(str(error)) from None
    except OSError as error:  # a full disk, most often: the graph and its weights are large
        raise CommandError(disk_problem(error, args.output)) from None
    finally:
        written.discard()
    print(f"wrote {args.output}")
    for task, difference in differences.items():
        print(f"  {task}: largest difference to PyTorch {difference:.2e}")
