"""Naive Faceptor configuration: the shared encoder, one standardized output head per task group, and the tasks.

Naive Faceptor (paper Sec. 3.1, Fig. 1c) is the baseline generalist: the Faceptor encoder and, instead of the
decoder and its task queries, one standardized head per task group: a UperNet for dense tasks (FaRL's
downstream head), SwinFace's face analysis subnet for attribute tasks and SwinFace's recognition subnet for
identity tasks. Tasks of a group share one head; an attribute group gives each task its own last linear
layer, and a dense group gives each task its own slice of the head's output channels.

This file travels to the Hub as remote code: it imports only transformers and files of this folder.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PreTrainedConfig

from .configuration_faceptor import TaskConfigMixin, TaskSpec
from .task_presets import PRESETS

# The official layers of the official 12-layer encoder (yaml `indices`, 0-based block outputs).
OFFICIAL_DENSE_FEATURE_LAYERS = [3, 5, 7, 11]
OFFICIAL_ATTRIBUTE_FEATURE_LAYERS = [5, 7, 9, 11]
OFFICIAL_NUM_LAYERS = 12
# The dense head's pyramid has four levels and the attribute head four convolutions, one per layer read.
NUM_HEAD_FEATURE_LAYERS = 4


def scaled_layers(official: list[int], num_layers: int) -> list[int]:
    """The official 12-layer indices moved to a `num_layers`-deep encoder at the same relative depth."""
    if num_layers == OFFICIAL_NUM_LAYERS:
        return list(official)
    return [max(0, round((layer + 1) * num_layers / OFFICIAL_NUM_LAYERS) - 1) for layer in official]


def official_task_groups(tasks: list[dict]) -> dict[str, list[str]]:
    """The official grouping: one head per task-name prefix (`task_name.split("_")[0]`, as
    `TaskSpecificHeadsHolder` picks the head), e.g. `affect_affectnet` and `affect_rafdb` share the `affect`
    head. A prefix whose tasks fall in several categories is split into `<prefix>_<category>` groups."""
    by_prefix: dict[str, list[dict]] = {}
    for spec in tasks:
        by_prefix.setdefault(spec["name"].split("_")[0], []).append(spec)
    groups: dict[str, list[str]] = {}
    for prefix, specs in by_prefix.items():
        categories = list(dict.fromkeys(spec["category"] for spec in specs))
        for category in categories:
            name = prefix if len(categories) == 1 else f"{prefix}_{category}"
            groups[name] = [spec["name"] for spec in specs if spec["category"] == category]
    return groups


class NaiveFaceptorConfig(TaskConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a [`NaiveFaceptorModel`]: the FaRL/CLIP ViT encoder of [`FaceptorConfig`] and one
    standardized head per task group. The defaults are the official Naive Faceptor (ViT-B/16, the seven
    Faceptor-Base tasks, `expreiments/naive_faceptor/train_recog_age_biattr_affect_parsing_align.yaml`): 178.9M
    parameters (paper Table 3).

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, patch_size,
        num_channels, position_grid_size, layer_norm_eps, drop_path_rate, projection_dim, initializer_range:
            the encoder, exactly as in [`FaceptorConfig`].
        dense_feature_layers (`list[int]`, defaults to `[3, 5, 7, 11]`): the four 0-based encoder layers the
            dense heads read, turned into a 4x / 2x / 1x / 0.5x pyramid (FaRL's `_make_fpns`). `None`: the
            official layers moved to the encoder's depth.
        dense_channels (`int`, defaults to 512): UperNet width (mmseg `channels`).
        dense_pool_scales (`list[int]`, defaults to `[1, 2, 3, 6]`): the pooling pyramid's output sizes.
        dense_dropout (`float`, defaults to 0.1): channel dropout before the UperNet classifier.
        attribute_feature_layers (`list[int]`, defaults to `[5, 7, 9, 11]`): the four encoder layers an
            attribute head convolves. `None`: the official layers moved to the encoder's depth.
        attribute_hidden_size (`int`, defaults to 512): width of the attribute head (SwinFace `out_features`);
            each of the four convolutions gives a quarter of it.
        attribute_kernel_size (`int`, defaults to 3): side of those convolutions.
        attribute_reduction_ratio (`int`, defaults to 16): channel-attention (CBAM) bottleneck ratio.
        attribute_dropout (`float`, defaults to 0.5): dropout after each layer of the attribute MLP.
        identity_feature_layer (`int`, defaults to the top layer): the encoder layer the identity heads pool.
        identity_embedding_size (`int`, defaults to 512): size of the identity embedding.
        tasks (`list[dict]`): the task specs (see [`TaskSpec`]); defaults to the `faceptor-base` tasks.
        task_groups (`dict[str, list[str]]`): which tasks share one head: group name -> task names, in the order
            of their output slices. Every task is in exactly one group and a group's tasks share a category.
            `None`: the official grouping by task-name prefix (see `official_task_groups`).
    """

    model_type = "naive_faceptor"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "quick_gelu"
    patch_size: int = 16
    num_channels: int = 3
    position_grid_size: int = 32
    layer_norm_eps: float = 1e-5
    drop_path_rate: float = 0.0
    projection_dim: int | None = 512
    dense_feature_layers: list[int] | None = None
    dense_channels: int = 512
    dense_pool_scales: list[int] | None = None
    dense_dropout: float = 0.1
    attribute_feature_layers: list[int] | None = None
    attribute_hidden_size: int = 512
    attribute_kernel_size: int = 3
    attribute_reduction_ratio: int = 16
    attribute_dropout: float = 0.5
    identity_feature_layer: int | None = None
    identity_embedding_size: int = 512
    tasks: list[dict] | None = None
    task_groups: dict[str, list[str]] | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.tasks is None:
            self.tasks = [dict(spec) for spec in PRESETS["faceptor-base"]["tasks"]]
        self.tasks = [TaskSpec.from_any(spec).to_dict() for spec in self.tasks]
        if self.dense_feature_layers is None:
            self.dense_feature_layers = scaled_layers(OFFICIAL_DENSE_FEATURE_LAYERS, self.num_hidden_layers)
        if self.attribute_feature_layers is None:
            self.attribute_feature_layers = scaled_layers(OFFICIAL_ATTRIBUTE_FEATURE_LAYERS, self.num_hidden_layers)
        if self.identity_feature_layer is None:
            self.identity_feature_layer = self.num_hidden_layers - 1
        if self.dense_pool_scales is None:
            self.dense_pool_scales = [1, 2, 3, 6]
        self.dense_feature_layers = [int(layer) for layer in self.dense_feature_layers]
        self.attribute_feature_layers = [int(layer) for layer in self.attribute_feature_layers]
        self.dense_pool_scales = [int(scale) for scale in self.dense_pool_scales]
        if self.task_groups is None:
            self.task_groups = official_task_groups(self.tasks)
        if not isinstance(self.task_groups, dict):
            raise ValueError(f"task_groups must map group names to task names, got {type(self.task_groups).__name__}.")
        self.task_groups = {str(group): list(names) for group, names in self.task_groups.items()}
        super().__post_init__(**kwargs)
        self.drop_local_pipelines()
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Raises a `ValueError` naming the first inconsistency of the configuration."""
        names = [spec["name"] for spec in self.tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"Duplicate task names in the config: {duplicates}.")
        if self.num_attention_heads <= 0 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"The encoder width {self.hidden_size} is not divisible by its {self.num_attention_heads} heads."
            )
        top = self.num_hidden_layers - 1
        for what, layers in (
            ("dense_feature_layers", self.dense_feature_layers),
            ("attribute_feature_layers", self.attribute_feature_layers),
        ):
            if len(layers) != NUM_HEAD_FEATURE_LAYERS:
                raise ValueError(f"{what} must name {NUM_HEAD_FEATURE_LAYERS} encoder layers, got {layers}.")
            if any(not 0 <= layer <= top for layer in layers):
                raise ValueError(f"{what} {layers} must lie in 0..{top} (0-based encoder layers).")
        if not 0 <= self.identity_feature_layer <= top:
            raise ValueError(f"identity_feature_layer {self.identity_feature_layer} must lie in 0..{top}.")
        if not self.dense_pool_scales or any(scale < 1 for scale in self.dense_pool_scales):
            raise ValueError(f"dense_pool_scales must be positive sizes, got {self.dense_pool_scales}.")
        if self.attribute_hidden_size % NUM_HEAD_FEATURE_LAYERS:
            raise ValueError("attribute_hidden_size must be divisible by 4 (one quarter per convolution).")
        if self.attribute_hidden_size // self.attribute_reduction_ratio < 1:
            raise ValueError("attribute_hidden_size // attribute_reduction_ratio must be at least 1.")
        if self.attribute_kernel_size % 2 != 1:
            raise ValueError("attribute_kernel_size must be odd (the official 'same' padding).")
        categories = {spec["name"]: spec["category"] for spec in self.tasks}
        grouped = [name for group in self.task_groups.values() for name in group]
        unknown = sorted(set(grouped) - set(categories))
        if unknown:
            raise ValueError(f"task_groups names tasks the config does not have: {unknown}.")
        twice = sorted({name for name in grouped if grouped.count(name) > 1})
        if twice:
            raise ValueError(f"Tasks {twice} are in more than one task group.")
        missing = [name for name in names if name not in grouped]
        if missing:
            raise ValueError(f"Tasks {missing} are in no task group.")
        for group, members in self.task_groups.items():
            if not group.isidentifier():
                raise ValueError(f"Task group name {group!r} must be an identifier (letters, digits, '_').")
            if not members:
                raise ValueError(f"Task group {group!r} is empty.")
            kinds = sorted({categories[name] for name in members})
            if len(kinds) > 1:
                raise ValueError(
                    f"Task group {group!r} mixes the categories {kinds}; a standardized head serves one category."
                )

    @property
    def ordered_task_groups(self) -> dict[str, list[str]]:
        """The task groups in the order of their first task in `tasks` (a saved config's JSON sorts the keys)."""
        position = {name: index for index, name in enumerate(self.task_names)}
        return dict(sorted(self.task_groups.items(), key=lambda item: min(position[name] for name in item[1])))

    def group_of(self, task_name: str) -> str:
        """The name of the task group (head) that serves `task_name`."""
        for group, members in self.task_groups.items():
            if task_name in members:
                return group
        raise ValueError(f"The config has no task {task_name!r}; its tasks are {self.task_names}.")

    def group_category(self, group: str) -> str:
        return self.task_specs[self.task_groups[group][0]].category

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> NaiveFaceptorConfig:
        """The tasks of a Faceptor preset (`"faceptor-base"`, the paper's Naive Faceptor, or `"faceptor-full"`)
        under standardized heads, grouped as the official code groups them unless `task_groups` is given."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available: {sorted(PRESETS)}.")
        values: dict[str, Any] = {"tasks": [copy.deepcopy(dict(spec)) for spec in PRESETS[name]["tasks"]]}
        values.update(overrides)
        return cls(**values)


__all__ = ["NaiveFaceptorConfig", "official_task_groups"]
