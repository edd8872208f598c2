"""Conversion of the authors' Faceptor checkpoints and of FaRL weights into [`FaceptorModel`] folders.

The official checkpoint (`checkpoint_rank0_iter_50000.pth.tar`) is a dict whose `state_dict` holds the DDP
model: `module.backbone_module.visual.*` (FaRL's CLIP ViT), `module.heads_module.decoder.*` (queries, level
embeddings, input projections, decoder layers), `module.heads_module.interpreters.*` (the shared output
modules) and `module.losses_module.*` (e.g. the CosFace class matrix). Key names are mapped by symmetric
templates, so the same table converts both ways.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..configuration_faceptor import FaceptorConfig
from ..processing.image_processing_faceptor import FaceptorImageProcessor
from ..task_presets import OFFICIAL_TASKS
from .errors import CommandError

# Task-name prefixes of the official code and the kind each stands for.
OFFICIAL_PREFIX_KIND = {
    "recog": "embedding",
    "age": "age",
    "biattr": "multilabel",
    "affect": "classification",
    "parsing": "parsing",
    "align": "landmarks",
}
# Layers that the official stage 2 adds (`new_levels`) when the encoder has 12 layers.
OFFICIAL_NEW_LEVELS = [1, 3, 5, 7, 9]


class CheckpointError(ValueError):
    """A file that is not the checkpoint it should be, named with what is wrong."""


@dataclass
class ConversionReport:
    """What a conversion did: the config it inferred and every key it did not carry over, with why."""

    config: FaceptorConfig
    dropped: dict[str, str] = field(default_factory=dict)
    kept_aside: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.config.tasks)} tasks: {', '.join(self.config.task_names)}"]
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"dropped {count} keys: {reason}" for reason, count in sorted(reasons.items())]
        if self.kept_aside:
            lines.append(f"kept {len(self.kept_aside)} loss-module keys in training_state.safetensors")
        return "\n".join(lines)


def _encoder_templates(prefix: str) -> list[tuple[str, str]]:
    """FaRL/CLIP `VisualTransformer` names under `prefix` -> ours. `in_proj` arrives split into q/k/v."""
    block = prefix + "transformer.resblocks.{n}."
    return [
        (prefix + "conv1.weight", "encoder.embeddings.patch_embedding.weight"),
        (prefix + "class_embedding", "encoder.embeddings.class_embedding"),
        (prefix + "positional_embedding", "encoder.embeddings.position_embedding"),
        (prefix + "ln_pre.{p}", "encoder.pre_layernorm.{p}"),
        (prefix + "ln_post.{p}", "encoder.post_layernorm.{p}"),
        (prefix + "proj", "encoder.projection.weight"),
        (block + "attn.{qkv}_proj.{p}", "encoder.layers.{n}.self_attn.{qkv}_proj.{p}"),
        (block + "attn.out_proj.{p}", "encoder.layers.{n}.self_attn.out_proj.{p}"),
        (block + "ln_1.{p}", "encoder.layers.{n}.layer_norm1.{p}"),
        (block + "ln_2.{p}", "encoder.layers.{n}.layer_norm2.{p}"),
        (block + "mlp.c_fc.{p}", "encoder.layers.{n}.mlp.fc1.{p}"),
        (block + "mlp.c_proj.{p}", "encoder.layers.{n}.mlp.fc2.{p}"),
    ]


_DECODER = "heads_module.decoder."
_INTERPRETERS = "heads_module.interpreters."
OFFICIAL_TEMPLATES = _encoder_templates("backbone_module.visual.") + [
    (_DECODER + "query_feat.{task}.weight", "decoder.query_features.{task}"),
    (_DECODER + "query_embed.{task}.weight", "decoder.query_position_embeddings.{task}"),
    (_DECODER + "level_embed.weight", "decoder.level_embeddings"),
    (_DECODER + "input_proj.{n}.{p}", "decoder.input_projections.{n}.{p}"),
    (_DECODER + "adapt_pos2d.0.{p}", "decoder.anchor_position.fc1.{p}"),
    (_DECODER + "adapt_pos2d.2.{p}", "decoder.anchor_position.fc2.{p}"),
    (
        _DECODER + "transformer_cross_attention_layers.{n}.multihead_attn.{qkv}_proj.{p}",
        "decoder.layers.{n}.cross_attn.{qkv}_proj.{p}",
    ),
    (
        _DECODER + "transformer_cross_attention_layers.{n}.multihead_attn.out_proj.{p}",
        "decoder.layers.{n}.cross_attn.out_proj.{p}",
    ),
    (_DECODER + "transformer_cross_attention_layers.{n}.norm.{p}", "decoder.layers.{n}.cross_attn_layer_norm.{p}"),
    (
        _DECODER + "transformer_self_attention_layers.{n}.self_attn.{qkv}_proj.{p}",
        "decoder.layers.{n}.self_attn.{qkv}_proj.{p}",
    ),
    (
        _DECODER + "transformer_self_attention_layers.{n}.self_attn.out_proj.{p}",
        "decoder.layers.{n}.self_attn.out_proj.{p}",
    ),
    (_DECODER + "transformer_self_attention_layers.{n}.norm.{p}", "decoder.layers.{n}.self_attn_layer_norm.{p}"),
    (_DECODER + "transformer_ffn_layers.{n}.linear1.{p}", "decoder.layers.{n}.fc1.{p}"),
    (_DECODER + "transformer_ffn_layers.{n}.linear2.{p}", "decoder.layers.{n}.fc2.{p}"),
    (_DECODER + "transformer_ffn_layers.{n}.norm.{p}", "decoder.layers.{n}.final_layer_norm.{p}"),
    (_INTERPRETERS + "feature_v2.norm.{p}", "identity_head.layer_norm.{p}"),
    (_INTERPRETERS + "feature_v2.head.0.weight", "identity_head.fc1.weight"),
    (_INTERPRETERS + "feature_v2.head.1.{p}", "identity_head.batch_norm1.{p}"),
    (_INTERPRETERS + "feature_v2.head.2.weight", "identity_head.fc2.weight"),
    (_INTERPRETERS + "feature_v2.head.3.{p}", "identity_head.batch_norm2.{p}"),
    (_INTERPRETERS + "value.fc.{p}", "attribute_head.fc.{p}"),
    (_INTERPRETERS + "map_v2.mask_map.0.{p}", "pixel_decoder.upsample1.{p}"),
    (_INTERPRETERS + "map_v2.mask_map.1.{p}", "pixel_decoder.norm.{p}"),
    (_INTERPRETERS + "map_v2.mask_map.3.{p}", "pixel_decoder.upsample2.{p}"),
    (_INTERPRETERS + "map_v2.mask_embed.layers.{n}.{p}", "dense_head.layers.{n}.{p}"),
]

# The same FaRL weights as shared on the Hub in Transformers' `CLIPModel` layout.
CLIP_TEMPLATES = [
    ("vision_model.embeddings.patch_embedding.weight", "encoder.embeddings.patch_embedding.weight"),
    ("vision_model.embeddings.class_embedding", "encoder.embeddings.class_embedding"),
    ("vision_model.embeddings.position_embedding.weight", "encoder.embeddings.position_embedding"),
    ("vision_model.pre_layrnorm.{p}", "encoder.pre_layernorm.{p}"),
    ("vision_model.post_layernorm.{p}", "encoder.post_layernorm.{p}"),
    ("visual_projection.weight", "encoder.projection.weight"),
    ("vision_model.encoder.layers.{n}.self_attn.{qkv}_proj.{p}", "encoder.layers.{n}.self_attn.{qkv}_proj.{p}"),
    ("vision_model.encoder.layers.{n}.self_attn.out_proj.{p}", "encoder.layers.{n}.self_attn.out_proj.{p}"),
    ("vision_model.encoder.layers.{n}.layer_norm1.{p}", "encoder.layers.{n}.layer_norm1.{p}"),
    ("vision_model.encoder.layers.{n}.layer_norm2.{p}", "encoder.layers.{n}.layer_norm2.{p}"),
    ("vision_model.encoder.layers.{n}.mlp.fc1.{p}", "encoder.layers.{n}.mlp.fc1.{p}"),
    ("vision_model.encoder.layers.{n}.mlp.fc2.{p}", "encoder.layers.{n}.mlp.fc2.{p}"),
]

_FIELD_PATTERNS = {
    "n": r"\d+",
    "p": r"weight|bias|running_mean|running_var|num_batches_tracked",
    "qkv": r"q|k|v",
    "task": r"[A-Za-z0-9_]+",
}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, expression in _FIELD_PATTERNS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{expression})")
    return re.compile(pattern + r"\Z")


class KeyMapper:
    """Renames keys by `(source, target)` templates with `{n}`, `{p}`, `{qkv}`, `{task}` fields, both ways."""

    def __init__(self, templates: list[tuple[str, str]]):
        self.forward_rules = [(_compile(source), target) for source, target in templates]
        self.backward_rules = [(_compile(target), source) for source, target in templates]

    @staticmethod
    def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
        for pattern, template in rules:
            match = pattern.match(key)
            if match:
                return template.format(**match.groupdict())
        return None

    def to_ours(self, key: str) -> str | None:
        return self._rename(key, self.forward_rules)

    def to_source(self, key: str) -> str | None:
        return self._rename(key, self.backward_rules)


def map_keys(mapper: KeyMapper, tensors: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Every tensor under our name; a key no template knows is an error, never silently dropped."""
    mapped, unknown = {}, []
    for key, value in tensors.items():
        target = mapper.to_ours(key)
        if target is None:
            unknown.append(key)
        else:
            mapped[target] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} {what} keys the converter does not know: {unknown[:10]}")
    return mapped


OFFICIAL_KEYS = KeyMapper(OFFICIAL_TEMPLATES)
CLIP_KEYS = KeyMapper(CLIP_TEMPLATES)


# ----------------------------------------------------------------------------------------------- loading


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Loads a torch checkpoint safely (`weights_only=True`) or a safetensors file, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
        found = next((candidate for candidate in candidates if candidate.exists()), None)
        if found is None:
            raise CheckpointError(f"{path}: folder has neither model.safetensors nor pytorch_model.bin")
        path = found
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types for truncated headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused, the pickle needs more than tensors and plain containers to load "
            f"(weights_only=True): {str(error).splitlines()[0]}"
        ) from None
    except Exception as error:  # torch's readers raise many types (EOFError, IndexError, ...) on bad bytes
        raise CheckpointError(f"{path}: not a readable torch checkpoint, truncated or corrupt ({error})") from None


def official_state_dict(checkpoint: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights of an official checkpoint, without the DDP `module.` prefix."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source}: expected a dict, got {type(checkpoint).__name__}")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{source}: 'state_dict' is a {type(state_dict).__name__}, not a dict of tensors")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if len(tensors) != len(state_dict):
        raise CheckpointError(f"{source}: 'state_dict' holds non-tensor entries")
    for required in ("backbone_module.visual.conv1.weight", "heads_module."):
        if not any(key.startswith(required) for key in tensors):
            raise CheckpointError(
                f"{source}: not an official Faceptor checkpoint, no '{required}*' key "
                "(expected 'state_dict' with 'module.backbone_module.visual.*' and 'module.heads_module.*')"
            )
    return tensors


# ----------------------------------------------------------------------------------------------- tensors


def resize_position_embedding(position_embedding: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Bicubic resize of a `(1 + g*g, width)` positional embedding to `(1 + grid_size**2, width)`, the class
    position kept, as the official `_resize_pe`."""
    old_grid = math.isqrt(position_embedding.shape[0] - 1)
    if old_grid**2 + 1 != position_embedding.shape[0]:
        raise CheckpointError(f"positional embedding of {position_embedding.shape[0]} rows is not 1 + a square")
    if old_grid == grid_size:
        return position_embedding
    width = position_embedding.shape[1]
    grid = position_embedding[1:].reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), (grid_size, grid_size), mode="bicubic", align_corners=False)
    grid = grid.reshape(width, -1).t().to(position_embedding.dtype)
    return torch.cat([position_embedding[:1], grid], dim=0)


def _split_packed_attention(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`nn.MultiheadAttention`'s packed `in_proj_weight`/`in_proj_bias` -> `q_proj`/`k_proj`/`v_proj`."""
    result = {}
    for key, value in state_dict.items():
        stem, _, name = key.rpartition(".")
        if name in ("in_proj_weight", "in_proj_bias"):
            kind = name.removeprefix("in_proj_")
            for letter, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                result[f"{stem}.{letter}_proj.{kind}"] = chunk.clone()
        else:
            result[key] = value
    return result


def _pack_attention(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `_split_packed_attention`."""
    result, packed = {}, {}
    for key, value in state_dict.items():
        match = re.match(r"(.*)\.(q|k|v)_proj\.(weight|bias)\Z", key)
        if match:
            packed.setdefault((match[1], match[3]), {})[match[2]] = value
        else:
            result[key] = value
    for (stem, kind), parts in packed.items():
        result[f"{stem}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return result


# ----------------------------------------------------------------------------------------------- official


def _task_specs_from_official(state_dict: dict[str, torch.Tensor]) -> list[dict]:
    """Tasks in the official order: identity task(s) first (they have no queries), then the decoder's."""
    decoder_tasks = [
        key[len(_DECODER + "query_feat.") : -len(".weight")]
        for key in state_dict
        if key.startswith(_DECODER + "query_feat.")
    ]
    specs = []
    if any(key.startswith(_INTERPRETERS + "feature_v2.") for key in state_dict):
        loss_names = [
            match[1] for key in state_dict if (match := re.match(r"losses_module\.losses\.(recog[^.]*)\.", key))
        ]
        for name in dict.fromkeys(loss_names or ["recog_ms1mv3"]):
            specs.append({"name": name, "kind": "embedding"})
    for name in decoder_tasks:
        num_queries = state_dict[f"{_DECODER}query_feat.{name}.weight"].shape[0]
        known = OFFICIAL_TASKS.get(name)
        if known is not None and known.get("num_queries", len(known.get("labels") or [])) == num_queries:
            specs.append(copy.deepcopy(dict(known)))
            continue
        prefix = name.split("_")[0]
        if prefix not in OFFICIAL_PREFIX_KIND:
            raise CheckpointError(
                f"task {name!r}: unknown official task prefix {prefix!r}; "
                f"expected one of {sorted(OFFICIAL_PREFIX_KIND)}"
            )
        specs.append({"name": name, "kind": OFFICIAL_PREFIX_KIND[prefix], "num_queries": num_queries})
    return specs


def _count_indices(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(match[1]) for key in state_dict if (match := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    return max(indices) + 1 if indices else 0


def infer_encoder_sizes(
    state_dict: dict[str, torch.Tensor], encoder_heads: int | None = None, prefix: str = "backbone_module.visual."
) -> dict[str, int | None]:
    """The encoder's config values read off an official (or FaRL) state dict. Head counts are not visible in
    the weights: the default is FaRL's (width / 64, 16 for the 1280-wide ViT-H)."""
    patch_weight = state_dict[prefix + "conv1.weight"]
    hidden_size = patch_weight.shape[0]
    projection = state_dict.get(prefix + "proj")
    if encoder_heads is None:
        encoder_heads = 16 if hidden_size == 1280 else max(hidden_size // 64, 1)
    return {
        "hidden_size": hidden_size,
        "num_hidden_layers": _count_indices(state_dict, prefix + "transformer.resblocks."),
        "num_attention_heads": encoder_heads,
        "intermediate_size": state_dict[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "patch_size": patch_weight.shape[-1],
        "num_channels": patch_weight.shape[1],
        "position_grid_size": math.isqrt(state_dict[prefix + "positional_embedding"].shape[0] - 1),
        "projection_dim": None if projection is None else projection.shape[1],
    }


def infer_official_config(
    state_dict: dict[str, torch.Tensor],
    encoder_heads: int | None = None,
    decoder_heads: int = 8,
    new_feature_layers: list[int] | None = None,
) -> FaceptorConfig:
    """The [`FaceptorConfig`] of an official state dict, every size read off the tensor shapes.

    Attention head counts are not visible in the weights: the encoder's default is FaRL's (width / 64, 16 for
    the 1280-wide ViT-H), the decoder's the official 8. The layers of stage 2's extra levels are not stored
    either: the default is the official `[1, 3, 5, 7, 9]`.
    """
    encoder = infer_encoder_sizes(state_dict, encoder_heads)
    num_layers = encoder["num_hidden_layers"]
    decoder_width = None
    for key in (_DECODER + "level_embed.weight", _DECODER + "adapt_pos2d.0.weight"):
        if key in state_dict:
            decoder_width = state_dict[key].shape[-1]
            break
    num_levels = _count_indices(state_dict, _DECODER + "input_proj.")
    num_new_levels = _count_indices(state_dict, _DECODER + "new_input_proj.")
    top = num_layers - 1
    feature_layers = [top] if num_levels == 1 else list(range(num_layers))[-num_levels:]
    if num_levels not in (0, 1) and num_levels != num_layers:
        raise CheckpointError(f"cannot tell which {num_levels} encoder layers 'input_proj' reads")
    if num_new_levels:
        if new_feature_layers is None:
            if num_new_levels != len(OFFICIAL_NEW_LEVELS) or num_layers != 12:
                raise CheckpointError(
                    f"{num_new_levels} stage-2 levels on a {num_layers}-layer encoder: pass their layers "
                    "(new_feature_layers / --new-feature-layers)"
                )
            new_feature_layers = OFFICIAL_NEW_LEVELS
        if len(new_feature_layers) != num_new_levels:
            raise CheckpointError(f"{len(new_feature_layers)} new feature layers given for {num_new_levels} levels")
        feature_layers = feature_layers + list(new_feature_layers)
    values = dict(
        **encoder,
        decoder_feature_layers=feature_layers or [top],
        layer_embedding_scope="shared",
        tasks=_task_specs_from_official(state_dict),
    )
    if decoder_width is not None:
        values.update(
            decoder_hidden_size=decoder_width,
            decoder_layers=_count_indices(state_dict, _DECODER + "transformer_ffn_layers."),
            decoder_attention_heads=decoder_heads,
            decoder_ffn_dim=state_dict[_DECODER + "transformer_ffn_layers.0.linear1.weight"].shape[0],
        )
    mask_embed = _count_indices(state_dict, _INTERPRETERS + "map_v2.mask_embed.layers.")
    if mask_embed:
        values["dense_mlp_layers"] = mask_embed
    if _INTERPRETERS + "feature_v2.head.3.weight" in state_dict:
        values["identity_embedding_size"] = state_dict[_INTERPRETERS + "feature_v2.head.3.weight"].shape[0]
    return FaceptorConfig(**values)


def _normalise_official(state_dict: dict[str, torch.Tensor], report: ConversionReport) -> dict[str, torch.Tensor]:
    """Brings the official layout to one key per tensor of ours: packed attention split, stage-2 levels
    appended to the stage-1 ones, the Norm2d's tied `ln` copy dropped, 1x1 convolutions and the CLIP
    projection reshaped to linear layers."""
    state_dict = _split_packed_attention(state_dict)
    result = {}
    num_levels = _count_indices(state_dict, _DECODER + "input_proj.")
    new_level_embed = state_dict.get(_DECODER + "new_level_embed.weight")
    for key, value in state_dict.items():
        if key == _DECODER + "new_level_embed.weight":
            continue
        if key == _DECODER + "level_embed.weight" and new_level_embed is not None:
            value = torch.cat([value, new_level_embed], dim=0)
        match = re.match(re.escape(_DECODER) + r"new_input_proj\.(\d+)\.(.*)", key)
        if match:
            key = f"{_DECODER}input_proj.{num_levels + int(match[1])}.{match[2]}"
        if re.match(re.escape(_DECODER) + r"input_proj\.\d+\.weight\Z", key) and value.ndim == 4:
            value = value.flatten(1)
        if key == "backbone_module.visual.proj":
            value = value.t().contiguous()
        if key.startswith(_INTERPRETERS + "map_v2.mask_map.1.ln."):
            twin = key.replace(".ln.", ".")
            if twin in state_dict and not torch.equal(state_dict[twin], value):
                raise CheckpointError(f"{key} differs from {twin}; the official Norm2d ties them")
            report.dropped[key] = "tied copy of the pixel decoder's channel LayerNorm"
            continue
        result[key] = value
    return result


def convert_official_state_dict(
    state_dict: dict[str, torch.Tensor], config: FaceptorConfig, keep_loss_weights: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], ConversionReport]:
    """Official tensors -> `(our state dict, loss-module tensors, report)`. Every key is either mapped,
    kept aside (loss module) or reported with why; an unknown key is an error, never silently dropped."""
    report = ConversionReport(config=config)
    model_tensors, losses = {}, {}
    for key, value in _normalise_official(state_dict, report).items():
        if key.startswith("losses_module."):
            if keep_loss_weights:
                losses[key] = value
                report.kept_aside.append(key)
            else:
                report.dropped[key] = "loss module (training only; keep with keep_loss_weights)"
            continue
        model_tensors[key] = value
    return map_keys(OFFICIAL_KEYS, model_tensors, "official"), losses, report


def to_official_state_dict(state_dict: dict[str, torch.Tensor], config: FaceptorConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the official layout (without the `module.` prefix), the inverse of
    [`convert_official_state_dict`]: the first decoder level is stage 1's, the others stage 2's."""
    official = {}
    for key, value in state_dict.items():
        source = OFFICIAL_KEYS.to_source(key)
        if source is None:
            raise CheckpointError(f"no official name for {key}")
        official[source] = value
    official = _pack_attention(official)
    official["backbone_module.visual.proj"] = official["backbone_module.visual.proj"].t().contiguous()
    for key in [key for key in official if re.match(re.escape(_DECODER) + r"input_proj\.\d+\.weight\Z", key)]:
        official[key] = official[key][:, :, None, None]
    if len(config.decoder_feature_layers) > 1:
        levels = official.pop(_DECODER + "level_embed.weight")
        official[_DECODER + "level_embed.weight"] = levels[:1]
        official[_DECODER + "new_level_embed.weight"] = levels[1:]
        for key in [key for key in official if key.startswith(_DECODER + "input_proj.")]:
            index, rest = key[len(_DECODER + "input_proj.") :].split(".", 1)
            if int(index) >= 1:
                official[f"{_DECODER}new_input_proj.{int(index) - 1}.{rest}"] = official.pop(key)
    for name in ("weight", "bias"):
        source = _INTERPRETERS + f"map_v2.mask_map.1.{name}"
        if source in official:
            official[_INTERPRETERS + f"map_v2.mask_map.1.ln.{name}"] = official[source]
    return official


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


@contextlib.contextmanager
def staged_output_folder(
    output_dir: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yields a new folder beside `output_dir` to write a model into, renamed to `output_dir` once the block ends
    without error (removed otherwise), so a failed conversion leaves neither a half-written model nor a lost
    earlier one. Refuses an `output_dir` that holds one of the `inputs`, is a file, or is a non-empty folder
    (unless `overwrite`)."""
    if Path(output_dir).is_symlink():  # renaming would move the link, and the model land beside its target
        raise CheckpointError(f"{output_dir}: is a link (to {os.readlink(output_dir)}); give the folder itself")
    output_dir = Path(output_dir).absolute()
    for source in inputs:
        if _is_within(Path(source), output_dir):
            raise CheckpointError(f"{output_dir}: holds the input {source}; write the model to another folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise CheckpointError(f"{output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"{output_dir}: folder exists and is not empty; pass --overwrite to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0o700 would make the model private to its writer
    try:
        yield staging
        if output_dir.exists():
            aside = staging.with_name(staging.name.replace(".partial-", ".replaced-"))
            os.rename(output_dir, aside)
            os.rename(staging, output_dir)
            shutil.rmtree(aside)
        else:
            os.rename(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """A `CheckpointError` naming the tensors of `model` that hold NaN or inf: they would be written silently."""
    from ..modeling_faceptor import check_loaded_weights

    try:
        check_loaded_weights(model, [], source)
    except ValueError as error:
        raise CheckpointError(f"{error}; refusing to write them") from None


def save_converted_model(
    model_class,
    config,
    state_dict: dict[str, torch.Tensor],
    losses: dict[str, torch.Tensor],
    output_dir,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
) -> None:
    """Writes a `model_class(config)` holding exactly `state_dict` (every parameter and buffer required, all
    finite; built on the meta device, so no throw-away initialisation runs) as a `save_pretrained` folder with
    the default image processor, and the loss module's tensors, if any, as `training_state.safetensors`; in a
    temporary folder renamed when complete (see [`staged_output_folder`])."""
    from safetensors.torch import save_file

    with torch.device("meta"):
        model = model_class(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(
            f"converted weights do not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    check_finite_weights(model, "converted weights")
    with staged_output_folder(output_dir, overwrite, inputs) as staging:
        model.eval().save_pretrained(staging)
        FaceptorImageProcessor().save_pretrained(staging)
        if losses:
            tensors = {key: value.contiguous() for key, value in losses.items()}
            save_file(tensors, staging / "training_state.safetensors")


def convert_official_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    keep_loss_weights: bool = False,
    encoder_heads: int | None = None,
    decoder_heads: int = 8,
    new_feature_layers: list[int] | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """Converts an official Faceptor checkpoint (stage 1 or stage 2) into a `save_pretrained` folder, which must
    not exist yet or be empty unless `overwrite`.

    With `keep_loss_weights`, the loss module's tensors (e.g. the CosFace class matrix) are written beside
    the model as `training_state.safetensors` under their official names, for resuming training.
    """
    state_dict = official_state_dict(load_checkpoint_file(checkpoint_path), str(checkpoint_path))
    if any(key.startswith("heads_module.heads.") for key in state_dict):
        raise CheckpointError(
            f"{checkpoint_path}: a Naive Faceptor checkpoint; convert it with `faceptor convert official-naive`"
        )
    config = infer_official_config(state_dict, encoder_heads, decoder_heads, new_feature_layers)
    ours, losses, report = convert_official_state_dict(state_dict, config, keep_loss_weights)
    from ..modeling_faceptor import FaceptorModel

    save_converted_model(FaceptorModel, config, ours, losses, output_dir, overwrite, inputs=[checkpoint_path])
    return report


def _farl_layout(state_dict: dict[str, torch.Tensor]) -> tuple[KeyMapper, dict[str, torch.Tensor], str]:
    """The key mapper, the vision tensors and the layout name of a FaRL checkpoint in either layout."""
    if any(key.startswith("visual.") for key in state_dict):
        vision = {key: value for key, value in state_dict.items() if key.startswith("visual.")}
        vision = _split_packed_attention(vision)
        if "visual.proj" in vision:
            vision["visual.proj"] = vision["visual.proj"].t().contiguous()
        return KeyMapper(_encoder_templates("visual.")), vision, "FaRL (CLIP visual.*)"
    if any(key.startswith("vision_model.") for key in state_dict):
        vision = {
            key: value
            for key, value in state_dict.items()
            if key.startswith("vision_model.") or key == "visual_projection.weight"
        }
        vision.pop("vision_model.embeddings.position_ids", None)
        return CLIP_KEYS, vision, "Transformers CLIPModel (vision_model.*)"
    raise CheckpointError("not a FaRL checkpoint: no 'visual.*' (FaRL/CLIP) or 'vision_model.*' (CLIPModel) keys")


def convert_farl_state_dict(
    state_dict: dict[str, torch.Tensor], config: FaceptorConfig
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """FaRL vision weights -> our encoder's state dict (positional grid resized to `position_grid_size`),
    and the dropped keys with why (the text tower)."""
    mapper, vision, _ = _farl_layout(state_dict)
    dropped = {
        key: "index buffer, recomputed" if key.endswith("position_ids") else "text tower / logit scale (unused)"
        for key in state_dict
        if key.endswith("position_ids") or not key.startswith(("visual.", "vision_model.", "visual_projection."))
    }
    encoder = map_keys(mapper, vision, "FaRL")
    positions = "encoder.embeddings.position_embedding"
    encoder[positions] = resize_position_embedding(encoder[positions], config.position_grid_size)
    return encoder, dropped


def infer_farl_config(
    state_dict: dict[str, torch.Tensor], preset: str = "faceptor-base", **overrides
) -> FaceptorConfig:
    """A preset's decoder and tasks on the encoder sizes read off FaRL weights (either layout)."""
    mapper, vision, _ = _farl_layout(state_dict)
    ours = {mapper.to_ours(key): value for key, value in vision.items() if mapper.to_ours(key)}
    patch = ours["encoder.embeddings.patch_embedding.weight"]
    hidden_size = patch.shape[0]
    num_layers = 1 + max(int(key.split(".")[2]) for key in ours if key.startswith("encoder.layers."))
    projection = ours.get("encoder.projection.weight")
    values = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=16 if hidden_size == 1280 else max(hidden_size // 64, 1),
        intermediate_size=ours["encoder.layers.0.mlp.fc1.weight"].shape[0],
        patch_size=patch.shape[-1],
        num_channels=patch.shape[1],
        projection_dim=None if projection is None else projection.shape[0],
        decoder_feature_layers=[num_layers - 1],
    )
    values.update(overrides)
    return FaceptorConfig.from_preset(preset, **values)


def convert_farl(
    farl_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str = "faceptor-base",
    overwrite: bool = False,
    **overrides,
) -> ConversionReport:
    """A FaRL checkpoint (`FaRL-Base-Patch16-LAIONFace20M-ep64.pth`, or the same weights as a Transformers
    `CLIPModel` file or folder) -> a Faceptor model folder whose encoder is FaRL and whose decoder, queries
    and output modules are freshly initialised: the starting point of training (paper Sec. 4.1). The folder
    must not exist yet or be empty unless `overwrite`."""
    from ..modeling_faceptor import FaceptorModel

    checkpoint = load_checkpoint_file(farl_path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{farl_path}: expected a dict of tensors, got {type(checkpoint).__name__}")
    config = infer_farl_config(state_dict, preset, **overrides)
    encoder, dropped = convert_farl_state_dict(state_dict, config)
    model = FaceptorModel(config).eval()
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    missing_encoder = [key for key in missing if key.startswith("encoder.")]
    if missing_encoder or unexpected:
        raise CheckpointError(
            f"FaRL weights do not fit the encoder: missing {missing_encoder[:10]}, unexpected {unexpected[:10]}"
        )
    check_finite_weights(model, f"{farl_path}")
    with staged_output_folder(output_dir, overwrite, inputs=[farl_path]) as staging:
        model.save_pretrained(staging)
        FaceptorImageProcessor().save_pretrained(staging)
    return ConversionReport(config=config, dropped=dropped)


# ---------------------------------------------------------------------------------------------- CLI


def command_convert(args: argparse.Namespace) -> None:
    try:
        if args.source == "official":
            report = convert_official_checkpoint(
                args.checkpoint,
                args.output_dir,
                keep_loss_weights=args.keep_loss_weights,
                encoder_heads=args.encoder_heads,
                decoder_heads=args.decoder_heads,
                new_feature_layers=args.new_feature_layers,
                overwrite=args.overwrite,
            )
        else:
            overrides = {} if args.encoder_heads is None else {"num_attention_heads": args.encoder_heads}
            report = convert_farl(
                args.checkpoint, args.output_dir, preset=args.preset, overwrite=args.overwrite, **overrides
            )
    except (ValueError, TypeError) as error:  # CheckpointError, or a config the options make inconsistent
        raise CommandError(str(error).splitlines()[0]) from None
    print(f"wrote {args.output_dir}")
    print(report.summary())
