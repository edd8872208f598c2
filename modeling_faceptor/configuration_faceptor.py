"""Faceptor configuration: the encoder, the dual decoder, Layer-Attention and the tasks as data."""

from __future__ import annotations

import copy
import numbers
import sys
import types
import typing
import weakref
from dataclasses import asdict, dataclass
from typing import Any

from transformers import PreTrainedConfig

from .task_kinds import TASK_KINDS, TaskKind
from .task_presets import PRESETS

# Official input sizes: dense tasks at 512 px, attribute and identity tasks at 112 px.
CATEGORY_INPUT_SIZE = {"dense": 512, "attribute": 112, "identity": 112}
LAYER_EMBEDDING_SCOPES = ("shared", "per_task")
# Sizes and counts that must be at least 1 (`projection_dim` too, unless None).
POSITIVE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size", "num_channels",
    "position_grid_size", "projection_dim", "decoder_hidden_size", "decoder_layers", "decoder_attention_heads",
    "decoder_ffn_dim", "identity_embedding_size",
)  # fmt: skip  # a table of names: packed rows read better


def _matches_type(value: Any, expected: Any) -> bool:
    """Whether a config value (as read from JSON or given in code) is of an annotated field type."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches_type(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(expected) or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches_type(item, item_type) for item in value)
    if expected is Any:
        return True
    if expected is int:  # a bool is an int to Python, never a size
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, origin or expected)


def check_field_types(config: Any, config_class: type) -> None:
    """Raises a `TypeError` naming the first field of `config_class` (its own annotations) whose value has the
    wrong type, e.g. `"hidden_size": "768"` in a hand-edited config.json."""
    namespace = vars(sys.modules[config_class.__module__])  # string annotations (postponed evaluation)
    for name, annotation in config_class.__annotations__.items():
        expected = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        value = getattr(config, name)
        if not _matches_type(value, expected):
            raise TypeError(f"config field {name!r} must be of type {annotation}, got {type(value).__name__} {value!r}")


@dataclass
class TaskSpec:
    """One task of the model.

    Args:
        name: unique name, e.g. `"age_morph2"`.
        kind: a kind of `task_kinds.TASK_KINDS`: `landmarks`, `parsing`, `age`, `classification`, `multilabel`,
            `embedding`.
        num_queries: decoder queries of the task (one per landmark, class, attribute or age); 0 for
            `embedding`, which reads the encoder directly. Defaults to `len(labels)`.
        labels: a name per query (class, attribute or landmark names); optional for landmarks and age.
        input_size: side of the square face crop the task was trained on (512 dense, 112 otherwise).
        use_layer_attention: read every level of `decoder_feature_layers` (True) or only the top
            encoder layer (False), paper Sec. 3.3.
        category: derived from `kind` (`dense`, `attribute` or `identity`); given only to be checked.
    """

    name: str
    kind: str
    num_queries: int | None = None
    labels: list[str] | None = None
    input_size: int | None = None
    use_layer_attention: bool = True
    category: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.isidentifier():
            raise ValueError(f"Task name {self.name!r} must be a non-empty identifier (letters, digits, '_').")
        if self.kind not in TASK_KINDS:
            raise ValueError(
                f"Task {self.name!r} has unknown kind {self.kind!r}; expected one of {sorted(TASK_KINDS)}."
            )
        category = TASK_KINDS[self.kind].category
        if self.category is not None and self.category != category:
            raise ValueError(
                f"Task {self.name!r}: kind {self.kind!r} belongs to category {category!r}, not {self.category!r}."
            )
        self.category = category
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"Task {self.name!r} has duplicate label names.")
        if self.num_queries is None:
            self.num_queries = 0 if category == "identity" else len(self.labels or [])
        if category == "identity":
            if self.num_queries != 0:
                raise ValueError(
                    f"Task {self.name!r} is an identity task: it reads the encoder directly and takes no queries "
                    f"(got num_queries={self.num_queries})."
                )
        elif not isinstance(self.num_queries, int) or self.num_queries <= 0:
            raise ValueError(
                f"Task {self.name!r} needs at least one query (got num_queries={self.num_queries}); "
                "give num_queries or labels."
            )
        if self.labels is not None and category != "identity" and len(self.labels) != self.num_queries:
            raise ValueError(
                f"Task {self.name!r} has {len(self.labels)} labels but {self.num_queries} queries; "
                "there must be one label per query."
            )
        if self.kind in ("classification", "parsing") and self.num_queries < 2:
            raise ValueError(f"Task {self.name!r} of kind {self.kind!r} needs at least two classes.")
        if self.input_size is None:
            self.input_size = CATEGORY_INPUT_SIZE[category]
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or self.input_size <= 0:
            raise ValueError(f"Task {self.name!r} has an invalid input_size {self.input_size!r}.")
        if not isinstance(self.use_layer_attention, bool):
            raise ValueError(
                f"Task {self.name!r}: use_layer_attention must be true or false, got {self.use_layer_attention!r}."
            )

    @classmethod
    def from_any(cls, spec: TaskSpec | dict[str, Any]) -> TaskSpec:
        if isinstance(spec, TaskSpec):
            return copy.deepcopy(spec)
        if not isinstance(spec, dict):
            raise ValueError(f"A task spec must be a TaskSpec or a dict, got {type(spec).__name__}.")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Task spec {spec.get('name')!r} has unknown fields {sorted(unknown)}.")
        if "name" not in spec or "kind" not in spec:
            raise ValueError(f"Task spec {spec!r} needs at least 'name' and 'kind'.")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def kind_info(self) -> TaskKind:
        """The entry of the task's kind in `task_kinds.TASK_KINDS` (decoding, result key, JSON form, ...)."""
        return TASK_KINDS[self.kind]


# Each live config's task specs with the `tasks` they were built from, by the config's id: not in the config's
# __dict__, which transformers saves and compares configs by.
_TASK_SPECS: dict[int, tuple[list[dict], dict[str, TaskSpec]]] = {}


class TaskConfigMixin:
    """What every Faceptor-family config derives from its `tasks` and encoder depth."""

    # Pipeline tasks the installed `faceptor` package registers itself (set by its __init__; empty as remote
    # code): a saved `custom_pipelines` entry for them would make transformers ask for trust_remote_code.
    local_pipeline_tasks = frozenset()

    def drop_local_pipelines(self) -> None:
        """Forgets the `custom_pipelines` entries of the pipelines registered locally."""
        pipelines = getattr(self, "custom_pipelines", None)
        if not pipelines or not self.local_pipeline_tasks:
            return
        kept = {task: info for task, info in pipelines.items() if task not in self.local_pipeline_tasks}
        if kept:
            self.custom_pipelines = kept
        else:
            del self.custom_pipelines

    @property
    def task_specs(self) -> dict[str, TaskSpec]:
        """The tasks by name, as [`TaskSpec`] objects, in config order. Built and validated once per change of
        `tasks` (a new list, or an edit of the list in place), not on every forward; the specs are shared, so treat
        them as read-only and change a task through `tasks`."""
        cached = _TASK_SPECS.get(id(self))
        if cached is None or cached[0] != self.tasks:
            if cached is None:  # the entry leaves with the config (the config's __dict__ is its saved form)
                weakref.finalize(self, _TASK_SPECS.pop, id(self), None)
            snapshot = copy.deepcopy(self.tasks)
            cached = (snapshot, {spec["name"]: TaskSpec.from_any(spec) for spec in snapshot})
            _TASK_SPECS[id(self)] = cached
        return dict(cached[1])

    @property
    def task_names(self) -> list[str]:
        return [spec["name"] for spec in self.tasks]

    @property
    def top_layer(self) -> int:
        return self.num_hidden_layers - 1


class FaceptorConfig(TaskConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a [`FaceptorModel`]: a FaRL/CLIP ViT encoder, a transformer decoder with task-specific
    queries and Layer-Attention, a pixel decoder, and one output module per task category. The defaults
    are Faceptor-Base (ViT-B/16 encoder, the official base task set).

    Args:
        hidden_size (`int`, defaults to 768): encoder width.
        num_hidden_layers (`int`, defaults to 12): encoder depth; every layer's patch features are kept.
        num_attention_heads (`int`, defaults to 12): encoder heads.
        intermediate_size (`int`, defaults to 3072): encoder MLP width.
        hidden_act (`str`, defaults to `"quick_gelu"`): encoder MLP activation (CLIP's QuickGELU).
        patch_size (`int`, defaults to 16): side of the bias-free patch convolution.
        num_channels (`int`, defaults to 3): image channels.
        position_grid_size (`int`, defaults to 32): side of the learnable positional-embedding grid,
            bicubically interpolated to each input's patch grid.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the encoder LayerNorms (computed in fp32).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth of the encoder while training, rising
            linearly over the layers (the official training uses 0.2).
        projection_dim (`int` or `None`, defaults to 512): FaRL's CLIP image projection (`ln_post` + `proj`).
            No task reads it; it is kept so FaRL/official weights load whole and the parameter count is the
            paper's, and it gives [`FaceptorModel.get_image_features`]. `None` drops it.
        decoder_hidden_size (`int`, defaults to 256): width of the decoder tokens (C_de).
        decoder_layers (`int`, defaults to 9): decoder layers, each cross-attention, self-attention, FFN.
        decoder_attention_heads (`int`, defaults to 8): decoder heads.
        decoder_ffn_dim (`int`, defaults to 2048): decoder FFN width.
        decoder_activation (`str`, defaults to `"relu"`): decoder FFN activation.
        decoder_feature_layers (`list[int]`, defaults to `[11]`): 0-based encoder layers the decoder reads
            (Layer-Attention levels), each with its own 1x1 input projection. Must contain the top layer,
            which also feeds the pixel decoder. Official stage 1: `[11]`; official stage 2:
            `[11, 1, 3, 5, 7, 9]`; the paper: `[1, 3, 5, 7, 9, 11]`.
        layer_embedding_scope (`str`, defaults to `"shared"`): `"shared"`, one layer-aware embedding per level
            for all tasks (official `level_embed`), or `"per_task"`, one set per task (the paper's L_t).
        dense_mlp_layers (`int`, defaults to 3): layers of the shared MLP that projects dense-task tokens.
        identity_embedding_size (`int`, defaults to 512): size of the identity embedding.
        tasks (`list[dict]`): the task specs (see [`TaskSpec`]); defaults to the `faceptor-base` tasks.
        initializer_range (`float`, defaults to 0.02): std of the encoder's truncated-normal init.
    """

    model_type = "faceptor"

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
    decoder_hidden_size: int = 256
    decoder_layers: int = 9
    decoder_attention_heads: int = 8
    decoder_ffn_dim: int = 2048
    decoder_activation: str = "relu"
    decoder_feature_layers: list[int] | None = None
    layer_embedding_scope: str = "shared"
    dense_mlp_layers: int = 3
    identity_embedding_size: int = 512
    tasks: list[dict] | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        check_field_types(self, FaceptorConfig)
        if self.decoder_feature_layers is None:
            self.decoder_feature_layers = [self.num_hidden_layers - 1]
        if self.tasks is None:
            self.tasks = [dict(spec) for spec in PRESETS["faceptor-base"]["tasks"]]
        self.tasks = [TaskSpec.from_any(spec).to_dict() for spec in self.tasks]
        self.decoder_feature_layers = [int(layer) for layer in self.decoder_feature_layers]
        super().__post_init__(**kwargs)
        self.drop_local_pipelines()
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Raises a `ValueError` naming the first inconsistency of the configuration."""
        for name in POSITIVE_FIELDS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"config field {name!r} must be at least 1, got {value}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}.")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must lie in [0, 1), got {self.drop_path_rate}.")
        if not self.initializer_range >= 0:
            raise ValueError(f"initializer_range must not be negative, got {self.initializer_range}.")
        names = [spec["name"] for spec in self.tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"Duplicate task names in the config: {duplicates}.")
        for width, heads, what in (
            (self.hidden_size, self.num_attention_heads, "encoder"),
            (self.decoder_hidden_size, self.decoder_attention_heads, "decoder"),
        ):
            if heads <= 0 or width % heads:
                raise ValueError(f"The {what} width {width} is not divisible by its {heads} attention heads.")
        if self.decoder_hidden_size % 4:
            raise ValueError("decoder_hidden_size must be divisible by 4 (sine position embedding of x and y).")
        top = self.num_hidden_layers - 1
        layers = self.decoder_feature_layers
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"decoder_feature_layers must be a non-empty list without repeats, got {layers}.")
        if any(not 0 <= layer <= top for layer in layers):
            raise ValueError(f"decoder_feature_layers {layers} must lie in 0..{top} (0-based encoder layers).")
        if top not in layers:
            raise ValueError(
                f"decoder_feature_layers {layers} must contain the top encoder layer {top}: it feeds the "
                "pixel decoder and the tasks that do not use Layer-Attention."
            )
        if self.layer_embedding_scope not in LAYER_EMBEDDING_SCOPES:
            raise ValueError(
                f"layer_embedding_scope must be one of {LAYER_EMBEDDING_SCOPES}, got {self.layer_embedding_scope!r}."
            )
        if self.dense_mlp_layers < 1:
            raise ValueError("dense_mlp_layers must be at least 1.")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> FaceptorConfig:
        """A saved config (config.json) must list its tasks: the preset's tasks would silently mislabel the
        queries of a model trained on others."""
        if config_dict.get("tasks") is None and kwargs.get("tasks") is None:
            raise ValueError(
                "the config has no 'tasks' list; a saved Faceptor config names its tasks (save it again with "
                "save_pretrained, or add the task specs)"
            )
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FaceptorConfig:
        """A named configuration: `"faceptor-base"` (7 tasks) or `"faceptor-full"` (13 tasks, paper Table 2)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available: {sorted(PRESETS)}.")
        values: dict[str, Any] = {key: copy.deepcopy(list(value)) for key, value in PRESETS[name].items()}
        values["tasks"] = [dict(spec) for spec in values["tasks"]]
        values.update(overrides)
        return cls(**values)


__all__ = ["FaceptorConfig", "TaskSpec"]
