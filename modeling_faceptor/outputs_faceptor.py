"""Output dataclass of [`FaceptorModel`] and [`NaiveFaceptorModel`]."""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class FaceptorOutput(ModelOutput):
    r"""
    Outputs of [`FaceptorModel`] and [`NaiveFaceptorModel`]: the encoder's last hidden state, as every transformers
    model gives first, and the raw per-task outputs in the official code's form (before any upsampling, activation or
    decoding; the image processor's `post_process` turns them into results).

    With `return_dict=False` the model returns `to_tuple()`: the fields that are not `None`, in the order below, with
    each dict replaced by the tuple of its values (in the order of the requested tasks), so the tuple holds tensors
    and tuples of tensors only: `(last_hidden_state, task_outputs, decoder_tokens, pixel_embeddings, hidden_states,
    attentions)`, without the absent ones (Naive Faceptor: `(last_hidden_state, task_outputs, ...)`).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Training loss, when the caller computes one (the models never set it).
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, hidden_size)`):
            Output of the encoder's last layer, class token first (FaRL/CLIP's, before `post_layernorm`).
        task_outputs (`dict[str, torch.FloatTensor]`):
            One entry per requested task:
            - `landmarks` and `parsing` tasks: `(batch_size, num_queries, height / 4, width / 4)` maps, the
              pixel embeddings dotted with the MLP-projected task tokens (heatmap / class logits);
            - `age`, `classification` and `multilabel` tasks: `(batch_size, num_queries)` logits (age: 101);
            - `embedding` tasks: `(batch_size, identity_embedding_size)` identity features (not normalised).
        decoder_tokens (`dict[str, torch.FloatTensor]`, *optional*):
            Task-specific tokens of the decoder's last layer, `(batch_size, num_queries, decoder_hidden_size)`,
            for every requested task that has queries (`None` for Naive Faceptor, which has no decoder).
        pixel_embeddings (`torch.FloatTensor`, *optional*):
            Per-pixel embeddings of the pixel decoder, `(batch_size, decoder_hidden_size, height / 4, width / 4)`,
            when a dense task was requested.
        hidden_states (`tuple[torch.FloatTensor]`, *optional*):
            With `output_hidden_states=True`: the embeddings' output (after `pre_layernorm`) and every encoder
            layer's output, `num_hidden_layers + 1` tensors of shape `(batch_size, 1 + num_patches, hidden_size)`
            with the class token first; `hidden_states[i + 1]` is layer `i`'s output, as in CLIP's vision model.
        attentions (`tuple[torch.FloatTensor]`, *optional*):
            With `output_attentions=True` and eager attention: every encoder layer's attention weights after the
            softmax, `num_hidden_layers` tensors of shape `(batch_size, num_attention_heads, 1 + num_patches,
            1 + num_patches)`. `None` under SDPA, which does not compute them.
    """

    loss: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    task_outputs: dict[str, torch.FloatTensor] | None = None
    decoder_tokens: dict[str, torch.FloatTensor] | None = None
    pixel_embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    def to_tuple(self) -> tuple:
        # Tracing, export and tuple users index tensors, so each per-task dict becomes the tuple of its values.
        return tuple(tuple(value.values()) if isinstance(value, dict) else value for value in super().to_tuple())
