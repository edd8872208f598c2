"""Conversion of the authors' Naive Faceptor checkpoints into [`NaiveFaceptorModel`] folders, and back.

An official Naive Faceptor checkpoint (`expreiments/naive_faceptor`, saved by the official `Solver`) is a dict
whose `state_dict` holds the DDP model: `module.backbone_module.visual.*` (FaRL's CLIP ViT, as in Faceptor),
`module.heads_module.heads.<group>.*` (one `TaskSpecificHeadsHolder` head per task-name prefix:
`RecognitionHead`, `SwinFaceHead` or `MMSEG_UPerHead`) and `module.losses_module.*` (the CosFace class matrix).
Keys are mapped by symmetric templates built for the checkpoint's groups, so one table converts both ways.

What a checkpoint does not store is inferred as the official yaml sets it, and can be given: the encoder layers
each head reads (`indices`), the tasks of a dense group when its output channels do not tell them apart (the
classifier holds all of them), and the attention head counts.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from dataclasses import dataclass, field

import torch

from ..configuration_naive_faceptor import NaiveFaceptorConfig
from ..task_presets import FULL_TASKS, OFFICIAL_TASKS
from .arguments import add_convert_naive_command
from .convert import (
    OFFICIAL_PREFIX_KIND,
    CheckpointError,
    ConversionReport,
    KeyMapper,
    _count_indices,
    _encoder_templates,
    _pack_attention,
    _split_packed_attention,
    infer_encoder_sizes,
    load_checkpoint_file,
    official_state_dict,
    save_converted_model,
)
from .errors import CommandError

HEADS = "heads_module.heads."
LOSSES = "losses_module.losses."
OFFICIAL_HEAD_TYPES = {"identity": "RecognitionHead", "attribute": "SwinFaceHead", "dense": "MMSEG_UPerHead"}


@dataclass
class NaiveConversionReport(ConversionReport):
    """A [`ConversionReport`] that also tells, per head group, its official head type and how its tasks were
    found (from the classifier names, the loss module, the official task sizes, or given)."""

    groups: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [super().summary()]
        task_groups = self.config.task_groups
        lines += [f"head {group}: {how}: {', '.join(task_groups[group])}" for group, how in self.groups.items()]
        return "\n".join(lines)


def _head_templates(group: str, category: str) -> list[tuple[str, str]]:
    """Official names of one group's head -> ours. The group name is literal, so heads whose official names
    coincide (`norm` is a LayerNorm in `RecognitionHead` and a BatchNorm in `SwinFaceHead`) map apart."""
    source, target = f"{HEADS}{group}.", f"heads.{group}."
    if category == "identity":
        pairs = [
            ("norm.{p}", "layer_norm.{p}"),
            ("head.0.weight", "fc1.weight"),
            ("head.1.{p}", "batch_norm1.{p}"),
            ("head.2.weight", "fc2.weight"),
            ("head.3.{p}", "batch_norm2.{p}"),
        ]
    elif category == "attribute":
        pairs = [
            ("conv.{n}.weight", "convs.{n}.weight"),
            ("channel_attention.mlp.1.{p}", "channel_gate.fc1.{p}"),
            ("channel_attention.mlp.3.{p}", "channel_gate.fc2.{p}"),
            ("norm.{p}", "batch_norm.{p}"),
            ("feature.0.{p}", "fc1.{p}"),
            ("feature.3.{p}", "fc2.{p}"),
            ("fcs.{task}.{p}", "classifiers.{task}.{p}"),
        ]
    else:
        pairs = [
            ("fpns.0.0.{p}", "upsample4.deconv1.{p}"),
            ("fpns.0.1.{p}", "upsample4.norm.{p}"),
            ("fpns.0.3.{p}", "upsample4.deconv2.{p}"),
            ("fpns.1.{p}", "upsample2.{p}"),
            ("head.psp_modules.{n}.1.conv.weight", "psp_convs.{n}.conv.weight"),
            ("head.psp_modules.{n}.1.bn.{p}", "psp_convs.{n}.norm.{p}"),
            ("head.bottleneck.conv.weight", "psp_bottleneck.conv.weight"),
            ("head.bottleneck.bn.{p}", "psp_bottleneck.norm.{p}"),
            ("head.lateral_convs.{n}.conv.weight", "lateral_convs.{n}.conv.weight"),
            ("head.lateral_convs.{n}.bn.{p}", "lateral_convs.{n}.norm.{p}"),
            ("head.fpn_convs.{n}.conv.weight", "fpn_convs.{n}.conv.weight"),
            ("head.fpn_convs.{n}.bn.{p}", "fpn_convs.{n}.norm.{p}"),
            ("head.fpn_bottleneck.conv.weight", "fpn_bottleneck.conv.weight"),
            ("head.fpn_bottleneck.bn.{p}", "fpn_bottleneck.norm.{p}"),
            ("head.conv_seg.{p}", "classifier.{p}"),
        ]
    return [(source + official, target + ours) for official, ours in pairs]


def official_naive_templates(config: NaiveFaceptorConfig) -> list[tuple[str, str]]:
    """Every key template of a Naive Faceptor with `config`'s task groups: encoder, then one head per group."""
    templates = _encoder_templates("backbone_module.visual.")
    for group in config.ordered_task_groups:
        templates += _head_templates(group, config.group_category(group))
    return templates


def is_official_naive_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether official tensors (without `module.`) are a Naive Faceptor's (`TaskSpecificHeadsHolder`) rather
    than a Faceptor's (`DecoderNewHolder`)."""
    return any(key.startswith(HEADS) for key in state_dict)


# ----------------------------------------------------------------------------------------------- inference


def _official_groups(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """The head groups of an official state dict in their order, each with its category."""
    groups = list(dict.fromkeys(key[len(HEADS) :].split(".", 1)[0] for key in state_dict if key.startswith(HEADS)))
    categories = {}
    for group in groups:
        stem = HEADS + group + "."
        if stem + "head.conv_seg.weight" in state_dict:
            categories[group] = "dense"
        elif any(key.startswith(stem + "fcs.") for key in state_dict):
            categories[group] = "attribute"
        elif stem + "head.3.weight" in state_dict:
            categories[group] = "identity"
        else:
            raise CheckpointError(
                f"head {group!r}: not one of the official {sorted(OFFICIAL_HEAD_TYPES.values())} "
                f"(keys: {[key for key in state_dict if key.startswith(stem)][:5]})"
            )
    return categories


def _spec(name: str, kind: str | None, num_queries: int | None) -> dict:
    """An official task's spec (with its labels) when its name and size match one, else a plain spec."""
    known = OFFICIAL_TASKS.get(name)
    if known is not None:
        known_size = known.get("num_queries", len(known.get("labels") or []))
        if num_queries is None or known["kind"] == "embedding" or known_size == num_queries:
            return copy.deepcopy(dict(known))
    if kind is None:
        prefix = name.split("_")[0]
        if prefix not in OFFICIAL_PREFIX_KIND:
            raise CheckpointError(
                f"task {name!r}: its kind cannot be told from the checkpoint; give its spec in task_groups, "
                f"e.g. {{'name': {name!r}, 'kind': 'landmarks', 'num_queries': {num_queries}}}"
            )
        kind = OFFICIAL_PREFIX_KIND[prefix]
    spec = {"name": name, "kind": kind}
    if kind != "embedding":
        spec["num_queries"] = num_queries
    return spec


def _dense_tasks(group: str, channels: int) -> list[dict]:
    """The official tasks of a dense group: those with the group's prefix, in the official order, whose
    channels add up to the classifier's; an error unless exactly one such choice exists."""
    candidates = [spec for spec in FULL_TASKS if spec["name"].split("_")[0] == group and spec["kind"] != "embedding"]
    sizes = [spec.get("num_queries", len(spec.get("labels") or [])) for spec in candidates]
    choices = [
        subset
        for count in range(1, len(candidates) + 1)
        for subset in itertools.combinations(range(len(candidates)), count)
        if sum(sizes[index] for index in subset) == channels
    ]
    if len(choices) != 1:
        found = "no" if not choices else f"{len(choices)}"
        raise CheckpointError(
            f"dense head {group!r} has {channels} output channels and {found} matching set of official tasks: "
            f"give its tasks (names or specs, in channel order) in task_groups={{{group!r}: [...]}}"
        )
    return [copy.deepcopy(dict(candidates[index])) for index in choices[0]]


def _group_tasks(
    group: str, category: str, state_dict: dict[str, torch.Tensor], given: list | None
) -> tuple[list[dict], str]:
    """A group's task specs and how they were found."""
    stem = HEADS + group + "."
    if category == "attribute":
        names = list(
            dict.fromkeys(
                key[len(stem + "fcs.") :].rsplit(".", 1)[0] for key in state_dict if key.startswith(stem + "fcs.")
            )
        )
        sizes = {name: state_dict[stem + f"fcs.{name}.weight"].shape[0] for name in names}
    if given is not None:
        specs = []
        for entry in given:
            if isinstance(entry, dict):
                specs.append(copy.deepcopy(entry))
                continue
            if category == "identity":
                specs.append(_spec(entry, "embedding", None))
            elif category == "attribute":
                specs.append(_spec(entry, None, sizes.get(entry)))
            elif len(given) == 1:
                specs.append(_spec(entry, None, state_dict[stem + "head.conv_seg.weight"].shape[0]))
            elif entry in OFFICIAL_TASKS:
                specs.append(copy.deepcopy(dict(OFFICIAL_TASKS[entry])))
            else:
                raise CheckpointError(
                    f"task {entry!r} of dense group {group!r}: give its spec (kind, num_queries), the channels "
                    "of a group's tasks are not stored apart"
                )
        return specs, "given"
    if category == "attribute":
        return [_spec(name, None, sizes[name]) for name in names], "classifier names"
    if category == "identity":
        losses = [
            match[1]
            for key in state_dict
            if (match := re.match(re.escape(LOSSES) + r"([A-Za-z0-9_]+)\.", key)) and match[1].split("_")[0] == group
        ]
        official = [spec["name"] for spec in FULL_TASKS if spec["kind"] == "embedding"]
        official = [name for name in official if name.split("_")[0] == group]
        name = (losses or official or [group])[0]
        return [_spec(name, "embedding", None)], "loss module" if losses else "official task names"
    channels = state_dict[stem + "head.conv_seg.weight"].shape[0]
    return _dense_tasks(group, channels), "official task sizes"


def infer_official_naive_config(
    state_dict: dict[str, torch.Tensor],
    encoder_heads: int | None = None,
    task_groups: dict[str, list] | None = None,
    dense_feature_layers: list[int] | None = None,
    attribute_feature_layers: list[int] | None = None,
    identity_feature_layer: int | None = None,
    dense_pool_scales: list[int] | None = None,
) -> tuple[NaiveFaceptorConfig, dict[str, str]]:
    """The [`NaiveFaceptorConfig`] of an official Naive Faceptor state dict, and how each group's tasks were
    found. Sizes are read off the tensors; what is not stored takes the official value: the layers the heads
    read (`[3, 5, 7, 11]`, `[5, 7, 9, 11]`, the top layer; for other depths the same relative depth), the
    pooling scales `[1, 2, 3, 6]`, FaRL's encoder heads (width / 64, 16 for the 1280-wide ViT-H).

    `task_groups` gives the tasks of some (or all) groups: task names, or full task specs for tasks that are not
    official; needed for a dense group whose channel count matches no single set of official tasks."""
    visual = "backbone_module.visual."
    if visual + "conv1.weight" not in state_dict:
        raise CheckpointError("not an official Naive Faceptor checkpoint: no 'backbone_module.visual.conv1.weight'")
    encoder = infer_encoder_sizes(state_dict, encoder_heads)
    categories = _official_groups(state_dict)
    unknown = sorted(set(task_groups or {}) - set(categories))
    if unknown:
        raise CheckpointError(f"task_groups names groups the checkpoint has no head for: {unknown}")
    tasks, groups, found = [], {}, {}
    sizes: dict[str, set] = {}
    for group, category in categories.items():
        specs, how = _group_tasks(group, category, state_dict, (task_groups or {}).get(group))
        tasks += specs
        groups[group] = [spec["name"] for spec in specs]
        found[group] = f"{OFFICIAL_HEAD_TYPES[category]} ({how})"
        stem = HEADS + group + "."
        if category == "dense":
            sizes.setdefault("dense_channels", set()).add(state_dict[stem + "head.conv_seg.weight"].shape[1])
            sizes.setdefault("pools", set()).add(_count_indices(state_dict, stem + "head.psp_modules."))
        elif category == "attribute":
            conv = state_dict[stem + "conv.0.weight"]
            hidden = state_dict[stem + "norm.weight"].shape[0]
            sizes.setdefault("attribute_hidden_size", set()).add(hidden)
            sizes.setdefault("attribute_kernel_size", set()).add(conv.shape[-1])
            reduced = state_dict[stem + "channel_attention.mlp.1.weight"].shape[0]
            sizes.setdefault("attribute_reduction_ratio", set()).add(hidden // reduced)
        else:
            sizes.setdefault("identity_embedding_size", set()).add(state_dict[stem + "head.3.weight"].shape[0])
    for name, values in sizes.items():
        if len(values) > 1:
            raise CheckpointError(f"heads of one kind differ in {name} ({sorted(values)}); the config shares it")
    values = dict(
        **encoder,
        dense_feature_layers=dense_feature_layers,
        attribute_feature_layers=attribute_feature_layers,
        identity_feature_layer=identity_feature_layer,
        tasks=tasks,
        task_groups=groups,
    )
    pools = sizes.pop("pools", None)
    if pools:
        count = next(iter(pools))
        if dense_pool_scales is None and count != 4:
            raise CheckpointError(f"{count} pooling scales: pass them (dense_pool_scales), the official has 4")
        if dense_pool_scales is not None and len(dense_pool_scales) != count:
            raise CheckpointError(f"{len(dense_pool_scales)} pooling scales given for {count} in the checkpoint")
    values["dense_pool_scales"] = dense_pool_scales
    values.update({name: next(iter(found_values)) for name, found_values in sizes.items()})
    try:
        return NaiveFaceptorConfig(**values), found
    except ValueError as error:
        raise CheckpointError(f"the inferred configuration is invalid: {error}") from None


# ----------------------------------------------------------------------------------------------- mapping


def _mapper(config: NaiveFaceptorConfig) -> KeyMapper:
    return KeyMapper(official_naive_templates(config))


def convert_official_naive_state_dict(
    state_dict: dict[str, torch.Tensor], config: NaiveFaceptorConfig, keep_loss_weights: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], NaiveConversionReport]:
    """Official tensors -> `(our state dict, loss-module tensors, report)`. Every key is mapped, kept aside
    (loss module) or reported with why; an unknown key is an error, never silently dropped."""
    report = NaiveConversionReport(config=config)
    mapper = _mapper(config)
    state_dict = _split_packed_attention(state_dict)
    ours, losses, unknown = {}, {}, []
    for key, value in state_dict.items():
        if key.startswith("losses_module."):
            if keep_loss_weights:
                losses[key] = value
                report.kept_aside.append(key)
            else:
                report.dropped[key] = "loss module (training only; keep with keep_loss_weights)"
            continue
        if key == "backbone_module.visual.proj":
            value = value.t().contiguous()
        target = mapper.to_ours(key)
        if target is None:
            unknown.append(key)
        else:
            ours[target] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} official keys the converter does not know: {unknown[:10]}")
    return ours, losses, report


def to_official_naive_state_dict(
    state_dict: dict[str, torch.Tensor], config: NaiveFaceptorConfig
) -> dict[str, torch.Tensor]:
    """Our state dict -> the official layout (without `module.`), the inverse of
    [`convert_official_naive_state_dict`]."""
    mapper = _mapper(config)
    official = {}
    for key, value in state_dict.items():
        source = mapper.to_source(key)
        if source is None:
            raise CheckpointError(f"no official name for {key}")
        official[source] = value
    official = _pack_attention(official)
    if "backbone_module.visual.proj" in official:
        official["backbone_module.visual.proj"] = official["backbone_module.visual.proj"].t().contiguous()
    return official


def convert_official_naive_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    keep_loss_weights: bool = False,
    encoder_heads: int | None = None,
    task_groups: dict[str, list] | None = None,
    dense_feature_layers: list[int] | None = None,
    attribute_feature_layers: list[int] | None = None,
    identity_feature_layer: int | None = None,
    dense_pool_scales: list[int] | None = None,
    overwrite: bool = False,
) -> NaiveConversionReport:
    """Converts an official Naive Faceptor checkpoint into a `save_pretrained` folder (a [`NaiveFaceptorModel`]
    and the image processor). With `keep_loss_weights`, the loss module's tensors (the CosFace class matrix)
    are written beside the model as `training_state.safetensors` under their official names. The report tells
    what was dropped and, per head group, how its tasks were found."""
    state_dict = official_state_dict(load_checkpoint_file(checkpoint_path), str(checkpoint_path))
    if not is_official_naive_state_dict(state_dict):
        raise CheckpointError(
            f"{checkpoint_path}: not a Naive Faceptor checkpoint (no 'heads_module.heads.*' keys); "
            "convert a Faceptor checkpoint with convert_official_checkpoint"
        )
    config, found = infer_official_naive_config(
        state_dict,
        encoder_heads=encoder_heads,
        task_groups=task_groups,
        dense_feature_layers=dense_feature_layers,
        attribute_feature_layers=attribute_feature_layers,
        identity_feature_layer=identity_feature_layer,
        dense_pool_scales=dense_pool_scales,
    )
    ours, losses, report = convert_official_naive_state_dict(state_dict, config, keep_loss_weights)
    from ..modeling_naive_faceptor import NaiveFaceptorModel

    save_converted_model(NaiveFaceptorModel, config, ours, losses, output_dir, overwrite, inputs=[checkpoint_path])
    report.groups = found
    return report


# ----------------------------------------------------------------------------------------------- command line


def _command_convert_naive(args) -> None:
    try:
        report = convert_official_naive_checkpoint(
            args.checkpoint,
            args.output_dir,
            keep_loss_weights=args.keep_loss_weights,
            encoder_heads=args.encoder_heads,
            task_groups=dict(args.task_group) if args.task_group else None,
            dense_feature_layers=args.dense_layers,
            attribute_feature_layers=args.attribute_layers,
            identity_feature_layer=args.identity_layer,
            overwrite=args.overwrite,
        )
    except (ValueError, TypeError) as error:  # CheckpointError, or a config the options make inconsistent
        raise CommandError(str(error).splitlines()[0]) from None
    print(f"wrote {args.output_dir}")
    print(report.summary())


__all__ = [
    "NaiveConversionReport",
    "add_convert_naive_command",
    "convert_official_naive_checkpoint",
    "convert_official_naive_state_dict",
    "infer_official_naive_config",
    "is_official_naive_state_dict",
    "official_naive_templates",
    "to_official_naive_state_dict",
]
