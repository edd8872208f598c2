"""Storage of the two generalist designs for a task list (paper Table 1 and Table 3): Faceptor (one encoder, one
decoder, shared output modules and a query set per task: 1B + 1D + N Q) against Naive Faceptor (one encoder and a
standardized head per task group: 1B + N O). Both models are built on the meta device, so nothing is allocated.

`faceptor compare-params [PRESET | TASK ...]` prints the table (see `add_compare_params_command`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import torch

from ..configuration_faceptor import FaceptorConfig, TaskSpec
from ..configuration_naive_faceptor import NaiveFaceptorConfig
from ..task_presets import OFFICIAL_TASKS, PRESETS
from .arguments import add_compare_params_command
from .errors import CommandError, error_summary

# New tasks whose cost the table shows, one per category.
EXAMPLE_NEW_TASKS = (
    {"name": "new_landmarks", "kind": "landmarks", "num_queries": 68},
    {"name": "new_expression", "kind": "classification", "num_queries": 7},
    {"name": "new_identity", "kind": "embedding"},
)


def resolve_task_list(tasks: str | Sequence[str | dict] | None) -> tuple[list[dict], str]:
    """Task specs and a title from a preset name, official task names or task specs (default: faceptor-base)."""
    if tasks is None or (not isinstance(tasks, str) and len(tasks) == 0):
        tasks = "faceptor-base"
    if isinstance(tasks, str):
        if tasks in PRESETS:
            return [dict(spec) for spec in PRESETS[tasks]["tasks"]], tasks
        tasks = [tasks]
    if len(tasks) == 1 and isinstance(tasks[0], str) and tasks[0] in PRESETS:
        return resolve_task_list(tasks[0])
    specs = []
    for task in tasks:
        if isinstance(task, dict):
            specs.append(TaskSpec.from_any(task).to_dict())
        elif task in OFFICIAL_TASKS:
            specs.append(dict(OFFICIAL_TASKS[task]))
        else:
            raise ValueError(
                f"Unknown task {task!r}: give a preset ({', '.join(PRESETS)}), official task names "
                f"({', '.join(OFFICIAL_TASKS)}) or task specs."
            )
    return specs, "custom task list"


def _count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _faceptor_counts(specs: list[dict]) -> dict:
    from ..modeling_faceptor import FaceptorModel

    config = FaceptorConfig(tasks=specs)
    with torch.device("meta"):
        model = FaceptorModel(config)
    per_task = {name: sum(t.numel() for t in model.task_state_dict(name).values()) for name in config.task_names}
    children = {name: _count(module) for name, module in model.named_children()}
    shared = {
        "encoder": children.get("encoder", 0),
        "decoder (without queries)": children.get("decoder", 0) - sum(per_task.values()),
        "pixel decoder": children.get("pixel_decoder", 0),
        "output modules": sum(children.get(name, 0) for name in ("dense_head", "attribute_head", "identity_head")),
    }
    new_task = {}
    for example in EXAMPLE_NEW_TASKS:
        with torch.device("meta"):
            grown = FaceptorModel(config)
            new_task[example["name"]] = grown.add_task(example)
    return {"shared": shared, "per_task": per_task, "total": _count(model), "new_task": new_task}


def _one_head_per_task(specs: list[dict]) -> dict[str, list[str]]:
    return {spec["name"]: [spec["name"]] for spec in specs}


def _naive_counts(specs: list[dict], one_head_per_task: bool) -> dict:
    from ..modeling_naive_faceptor import NaiveFaceptorModel

    config = NaiveFaceptorConfig(tasks=specs, task_groups=_one_head_per_task(specs) if one_head_per_task else None)
    with torch.device("meta"):
        model = NaiveFaceptorModel(config)
    per_task = {name: sum(model.task_parameter_names(name).values()) for name in config.task_names}
    group_shared = {
        group: _count(model.heads[group]) - sum(per_task[name] for name in members)
        for group, members in config.ordered_task_groups.items()
        if len(members) > 1
    }
    new_task, joined = {}, {}
    for example in EXAMPLE_NEW_TASKS:
        spec = TaskSpec.from_any(example)
        grown = NaiveFaceptorConfig(tasks=[*specs, example], task_groups={**config.task_groups, spec.name: [spec.name]})
        with torch.device("meta"):
            new_task[spec.name] = _count(NaiveFaceptorModel(grown).heads[spec.name])
        categories = {config.group_category(group) for group in config.task_groups}
        if spec.category not in categories:
            continue
        if spec.category == "attribute":
            joined[spec.name] = config.attribute_hidden_size * spec.num_queries + spec.num_queries
        elif spec.category == "dense":
            joined[spec.name] = (config.dense_channels + 1) * spec.num_queries
    return {
        "shared": {"encoder": _count(model.encoder)},
        "group_shared": group_shared,
        "groups": config.ordered_task_groups,
        "per_task": per_task,
        "total": _count(model),
        "new_task": new_task,
        "joined": joined,
    }


def format_count(count: int | None) -> str:
    if count is None:
        return "-"
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    if count >= 1e3:
        return f"{count / 1e3:.1f}K"
    return str(count)


def compare_parameters(
    tasks: str | Sequence[str | dict] | None = "faceptor-base", one_head_per_task: bool = False
) -> str:
    """The storage table of paper Tables 1 and 3 for a task list: shared parameters, each task's own, the total
    and what one more task costs, for Faceptor (stage-1 architecture, shared layer embeddings) and Naive Faceptor
    (the official heads at their official sizes).

    `tasks`: a preset name (`"faceptor-base"`, the paper's Table 3 setting, or `"faceptor-full"`), a list of
    official task names, or task specs (dicts of [`TaskSpec`] fields). Naive Faceptor's tasks share heads by name
    prefix as the official code groups them (e.g. `affect_affectnet` and `affect_rafdb` share one attribute head
    with a linear layer each); `one_head_per_task=True` gives every task its own head (paper Table 1's N O)."""
    specs, title = resolve_task_list(tasks)
    faceptor, naive = _faceptor_counts(specs), _naive_counts(specs, one_head_per_task)
    rows: list[tuple[str, int | None, int | None] | str] = ["shared"]
    for name, count in faceptor["shared"].items():
        if count:
            rows.append((f"  {name}", count, naive["shared"].get(name)))
    for group, count in naive["group_shared"].items():
        members = ", ".join(naive["groups"][group])
        rows.append((f"  head {group} (shared by {members})", None, count))
    rows.append("per task (its own parameters)")
    for spec in specs:
        spec = TaskSpec.from_any(spec)
        size = "" if spec.kind == "embedding" else f", {spec.num_queries}"
        rows.append(
            (f"  {spec.name} ({spec.kind}{size})", faceptor["per_task"][spec.name], naive["per_task"][spec.name])
        )
    rows.append(("total", faceptor["total"], naive["total"]))
    rows.append("one more task (its own query set / its own head)")
    for example in EXAMPLE_NEW_TASKS:
        spec = TaskSpec.from_any(example)
        size = "" if spec.kind == "embedding" else f", {spec.num_queries}"
        rows.append((f"  + {spec.kind}{size}", faceptor["new_task"][spec.name], naive["new_task"][spec.name]))
        if spec.name in naive["joined"]:
            rows.append((f"    (Naive: joining an existing {spec.category} head)", None, naive["joined"][spec.name]))
    width = max(len(row[0]) for row in rows if isinstance(row, tuple))
    names = ", ".join(spec["name"] for spec in specs)
    grouping = "one head per task" if one_head_per_task else "heads shared by task-name prefix, as the official code"
    lines = [
        f"Parameters for {len(specs)} tasks ({title}): {names}",
        f"Faceptor: 1 encoder + 1 decoder + a query set per task; Naive Faceptor: 1 encoder + standardized heads "
        f"({grouping})",
        f"{'':<{width}}  {'Faceptor':>10}  {'Naive':>10}",
    ]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
        else:
            label, left, right = row
            lines.append(f"{label:<{width}}  {format_count(left):>10}  {format_count(right):>10}")
    ratio = naive["total"] / faceptor["total"]
    lines.append(f"Naive Faceptor has {ratio:.2f}x Faceptor's parameters ({ratio - 1:+.0%}).")
    return "\n".join(lines)


def load_config(name_or_path: str):
    if name_or_path in PRESETS:
        return FaceptorConfig.from_preset(name_or_path)
    if os.path.isdir(name_or_path):
        # Without this check transformers reads a folder with no config.json as the default (preset) config.
        if not os.path.isfile(os.path.join(name_or_path, "config.json")):
            raise CommandError(f"{name_or_path}: not a model folder (no config.json)")
        try:
            with open(os.path.join(name_or_path, "config.json"), encoding="utf-8") as handle:
                model_type = json.load(handle).get("model_type")
            if model_type != FaceptorConfig.model_type:
                raise ValueError(f"model_type {model_type!r}; summary counts Faceptor models")
            return FaceptorConfig.from_pretrained(name_or_path)
        except (OSError, ValueError, TypeError, AttributeError) as error:
            raise CommandError(f"{name_or_path}: not a Faceptor model folder ({error_summary(error)})") from None
    raise CommandError(f"{name_or_path}: neither a preset ({', '.join(PRESETS)}) nor a model folder")


def parameter_summary(config) -> list[tuple[str, int]]:
    """Parameter counts per component and per task's own parameters, built on the meta device."""
    from ..modeling_faceptor import FaceptorModel

    with torch.device("meta"):
        model = FaceptorModel(config)
    rows = [(name, sum(p.numel() for p in module.parameters())) for name, module in model.named_children()]
    for spec in config.task_specs.values():
        own = sum(
            container[spec.name].numel()
            for container in (
                model.decoder.query_features,
                model.decoder.query_position_embeddings,
                getattr(model.decoder, "task_level_embeddings", {}),
            )
            if spec.name in container
        )
        rows.append((f"  task {spec.name} ({spec.kind}, {spec.num_queries} queries)", own))
    return rows


def command_summary(args: argparse.Namespace) -> None:
    model, name = args.model, args.model
    if model is None:  # as predict and demo: the bundled demo model
        from ..demo_model import demo_model_path

        try:
            model = demo_model_path()
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        name = f"the bundled demo model ({model})"
    config = load_config(model)
    rows = parameter_summary(config)
    total = sum(count for name, count in rows if not name.startswith("  "))
    width = max(len(name) for name, _ in rows)
    print(f"{name}: {total / 1e6:.1f}M parameters")
    for name, count in rows:
        print(f"{name:<{width}}  {count / 1e6:>8.3f}M")


def _command_compare_params(args: argparse.Namespace) -> None:
    try:
        print(compare_parameters(args.tasks or None, one_head_per_task=args.one_head_per_task))
    except ValueError as error:
        raise CommandError(str(error)) from None


__all__ = ["add_compare_params_command", "compare_parameters", "resolve_task_list"]
