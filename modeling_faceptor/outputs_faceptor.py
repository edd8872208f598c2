"""Output dataclass of [`FaceptorModel`]."""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class FaceptorOutput(ModelOutput):
    r"""
    Raw per-task outputs of [`FaceptorModel`], in the official code's form (before any upsampling,
    activation or decoding; the image processor's `post_process_*` methods turn them into results).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Training loss, when the caller computes one.
        task_outputs (`dict[str, torch.FloatTensor]`):
            One entry per requested task:
            - `landmarks` and `parsing` tasks: `(batch_size, num_queries, height / 4, width / 4)` maps, the
              pixel embeddings dotted with the MLP-projected task tokens (heatmap / class logits);
            - `age`, `classification` and `multilabel` tasks: `(batch_size, num_queries)` logits (age: 101);
            - `embedding` tasks: `(batch_size, identity_embedding_size)` identity features (not normalised).
        decoder_tokens (`dict[str, torch.FloatTensor]`):
            Task-specific tokens of the decoder's last layer, `(batch_size, num_queries, decoder_hidden_size)`,
            for every requested task that has queries.
        pixel_embeddings (`torch.FloatTensor`, *optional*):
            Per-pixel embeddings of the pixel decoder, `(batch_size, decoder_hidden_size, height / 4, width / 4)`,
            when a dense task was requested.
        encoder_hidden_states (`tuple[torch.FloatTensor]`, *optional*):
            With `output_hidden_states=True`: every encoder layer's output, `(batch_size, 1 + num_patches,
            hidden_size)` with the class token first.
    """

    loss: torch.FloatTensor | None = None
    task_outputs: dict[str, torch.FloatTensor] | None = None
    decoder_tokens: dict[str, torch.FloatTensor] | None = None
    pixel_embeddings: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
