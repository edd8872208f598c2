"""Which parameters train: the two-stage Layer-Attention schedule (paper Fig. 3) and the transfer modes of
paper Table 9."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

TRAINING_MODES = ("full", "decoder", "prompt", "layer_attention", "layer_attention_official")
# FaRL's CLIP image projection is kept for loading whole checkpoints; no Faceptor loss reaches it.
UNUSED_IN_TRAINING = ("encoder.post_layernorm.", "encoder.projection.")


def _task_parameter_names(model: nn.Module, tasks: Sequence[str]) -> set[str]:
    names = set()
    for task in tasks:
        for container in ("query_features", "query_position_embeddings", "task_level_embeddings"):
            if hasattr(model.decoder, container) and task in getattr(model.decoder, container):
                names.add(f"decoder.{container}.{task}")
    return names


def trainable_parameter_names(
    model: nn.Module, mode: str, tasks: Sequence[str] | None = None, new_levels: int = 0
) -> set[str]:
    """Names of the model parameters that train in `mode`:

    - `full`: everything (paper stage 1, and full fine-tuning of Table 9);
    - `decoder`: all but the encoder (decoder fine-tuning);
    - `prompt`: only the queries (and per-task layer embeddings) of `tasks` (prompt tuning);
    - `layer_attention`: only the layer-aware embeddings (paper stage 2);
    - `layer_attention_official`: the official stage 2: the tasks' queries, the `new_levels` newest input
      projections and the layer-embedding rows (frozen older rows are kept by a gradient mask; see
      `freeze_for_mode`).
    """
    if mode not in TRAINING_MODES:
        raise ValueError(f"Unknown training mode {mode!r}; expected one of {TRAINING_MODES}.")
    names = [name for name, _ in model.named_parameters() if not name.startswith(UNUSED_IN_TRAINING)]
    if mode == "full":
        return set(names)
    if mode == "decoder":
        return {name for name in names if not name.startswith("encoder.")}
    every_task = list(model.config.task_names)
    if mode == "prompt":
        if not tasks:
            raise ValueError("Prompt tuning needs the task(s) whose queries train.")
        return _task_parameter_names(model, tasks)
    embeddings = {name for name in names if name == "decoder.level_embeddings" or ".task_level_embeddings." in name}
    if mode == "layer_attention":
        return embeddings
    if new_levels <= 0:
        raise ValueError("The official stage 2 needs the number of newly opened levels.")
    total = len(model.config.decoder_feature_layers)
    projections = {
        name
        for name in names
        if name.startswith("decoder.input_projections.") and int(name.split(".")[2]) >= total - new_levels
    }
    queries = _task_parameter_names(model, tasks or every_task) - {n for n in names if ".task_level_embeddings." in n}
    return queries | projections | embeddings


def freeze_for_mode(model: nn.Module, mode: str, tasks: Sequence[str] | None = None, new_levels: int = 0) -> list[str]:
    """Sets `requires_grad` by [`trainable_parameter_names`] and returns the trainable names. In the official
    stage 2 only the new levels' rows of the layer embeddings learn: a gradient hook zeroes the others (they
    get no weight decay either, see the optimiser's groups, so they stay exactly as they were)."""
    trainable = trainable_parameter_names(model, mode, tasks, new_levels)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    if mode == "layer_attention_official":
        old_levels = len(model.config.decoder_feature_layers) - new_levels
        embeddings = (
            [model.decoder.level_embeddings]
            if hasattr(model.decoder, "level_embeddings")
            else list(model.decoder.task_level_embeddings.values())
        )
        for parameter in embeddings:

            def keep_old_rows(gradient, old_levels=old_levels):
                gradient = gradient.clone()
                gradient[:old_levels] = 0
                return gradient

            parameter.register_hook(keep_old_rows)
    return sorted(trainable)
