"""Faceptor (Qin et al., ECCV 2024): a FaRL ViT encoder, a transformer decoder with task-specific queries and
Layer-Attention, a pixel decoder, and output modules shared per task category."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_faceptor import FaceptorConfig, TaskSpec
from .outputs_faceptor import FaceptorOutput
from .task_query_sets import FaceptorTaskSetMixin

logger = logging.get_logger(__name__)

CachedValue = TypeVar("CachedValue")


def tag_init_scheme(module: nn.Module, scheme: str) -> nn.Module:
    """Marks every linear layer under `module` with the initialisation scheme `_init_weights` applies."""
    for submodule in module.modules():
        if isinstance(submodule, nn.Linear):
            submodule._init_scheme = scheme
    return module


class FaceptorTaskParameters(nn.ParameterDict):
    """One parameter per task name (queries, their positions, or per-task layer embeddings); `distribution`
    is the official initialisation: `"normal"` N(0, 1) or `"uniform"` U(0, 1)."""

    def __init__(self, distribution: str = "normal"):
        super().__init__()
        self.distribution = distribution


def cached_when_inferring(
    cache: dict[tuple, tuple[list[torch.Tensor], CachedValue]],
    key: tuple,
    sources: Sequence[torch.Tensor],
    compute: Callable[[], CachedValue],
) -> CachedValue:
    """`compute()`, a value derived from the parameters `sources` only, kept in `cache` while gradients are off,
    so inference (and a CUDA graph captured after a warm-up call) reuses it instead of recomputing it per call.

    Keyed by `key` and each source's device, dtype, storage and version: a weight updated in place, moved or cast
    recomputes it. The entry holds the sources, so their storage cannot be reused by another tensor meanwhile.
    Under autograd (training) or torch.compile tracing, or for weights made in inference mode (which have no
    version counter), it is simply computed."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or any(t.is_inference() for t in sources):
        return compute()
    state = tuple((t.device, t.dtype, t.data_ptr(), t._version) for t in sources)
    full_key = (*key, state, torch.is_inference_mode_enabled())
    entry = cache.get(full_key)
    if entry is None:
        for stale in [known for known in cache if known[-2] != state or len(cache) >= 8]:
            del cache[stale]  # values of replaced weights (and their storage) go; at most 8 grid sizes are kept
        entry = cache[full_key] = ([t.detach() for t in sources], compute())
    return entry[1]


class FaceptorLayerNorm(nn.LayerNorm):
    """LayerNorm in the input's dtype. PyTorch's kernels accumulate the statistics in float32 for bf16 and fp16
    inputs, so this equals FaRL's float32 LayerNorm up to the output's rounding, without the casts around it."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        return F.layer_norm(hidden_states, self.normalized_shape, self.weight.to(dtype), self.bias.to(dtype), self.eps)


class FaceptorChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a `(batch, channels, height, width)` map (ConvNeXt style)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mean = hidden_states.mean(1, keepdim=True)
        variance = (hidden_states - mean).pow(2).mean(1, keepdim=True)
        hidden_states = (hidden_states - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * hidden_states + self.bias[:, None, None]


class FaceptorDropPath(nn.Module):
    """Stochastic depth: drops a sample's residual branch with probability `drop_prob` while training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class FaceptorAttention(nn.Module):
    """Multi-head attention with separate query, key and value inputs, through the transformers attention
    interface (eager or SDPA)."""

    def __init__(self, config: FaceptorConfig, embed_dim: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self._packed_cache: dict[tuple, tuple] = {}

    def packed_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The query, key and value projections as one `(3 * embed_dim, embed_dim)` weight and its bias: self-attention
        projects with one matrix product. The checkpoint keeps the three layers; the packed copy is cached."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        sources = [tensor for layer in projections for tensor in (layer.weight, layer.bias)]
        return cached_when_inferring(
            self._packed_cache, (), sources, lambda: (torch.cat(sources[0::2]), torch.cat(sources[1::2]))
        )

    def forward(
        self,
        query_states: torch.Tensor,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        level_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the output and the attention weights (`None` unless the attention function computes them,
        as eager does). `level_embeddings` `(query_length, num_levels, embed_dim)`, when given, are each query's
        layer-aware embeddings of the key levels, whose keys lie in `num_levels` equal consecutive blocks. Since
        k_proj(F + P + L) = k_proj(F + P) + W_k L, they enter as a per-query, per-level logit term q (W_k L)^T
        (paper Sec. 3.3), so queries of several tasks share one attention call."""
        batch_size, query_length, _ = query_states.shape
        key_length = key_states.shape[1]
        if query_states is key_states and key_states is value_states:
            weight, bias = self.packed_qkv()
            packed = F.linear(query_states, weight, bias).view(batch_size, query_length, 3, self.num_heads, -1)
            query, key, value = packed.permute(2, 0, 3, 1, 4).unbind(0)  # views: no copy before attention
        else:
            query = self.q_proj(query_states).view(batch_size, query_length, self.num_heads, -1).transpose(1, 2)
            key = self.k_proj(key_states).view(batch_size, key_length, self.num_heads, -1).transpose(1, 2)
            value = self.v_proj(value_states).view(batch_size, key_length, self.num_heads, -1).transpose(1, 2)
        if level_embeddings is not None:
            num_levels = level_embeddings.shape[1]
            level_keys = F.linear(level_embeddings, self.k_proj.weight)
            level_keys = level_keys.view(query_length, num_levels, self.num_heads, self.head_dim).permute(2, 0, 1, 3)
            logit_terms = torch.einsum("bhqd,hqld->bhql", query, level_keys) * self.scaling
            logit_terms = logit_terms.repeat_interleave(key_length // num_levels, dim=-1)
            attention_mask = logit_terms if attention_mask is None else logit_terms + attention_mask
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0
        )
        return self.out_proj(attn_output.reshape(batch_size, query_length, -1)), attn_weights


class FaceptorEncoderEmbeddings(nn.Module):
    """Bias-free patch convolution, class token, and a positional embedding learnt on a fixed grid and
    interpolated (bicubic) to each input's patch grid, so 112 px and 512 px faces share it."""

    def __init__(self, config: FaceptorConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid_size = config.position_grid_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1 + config.position_grid_size**2, config.hidden_size))
        self._position_cache: dict[tuple, tuple] = {}

    def interpolated_position_embedding(self, height: int, width: int) -> torch.Tensor:
        """`(1 + height * width, hidden_size)`: the class position, then the grid resized to `height x width`."""
        if (height, width) == (self.grid_size, self.grid_size):
            return self.position_embedding
        return cached_when_inferring(
            self._position_cache,
            (height, width),
            self.position_embedding,
            lambda: self._interpolate_position_embedding(height, width),
        )

    def _interpolate_position_embedding(self, height: int, width: int) -> torch.Tensor:
        class_position, grid = self.position_embedding[:1], self.position_embedding[1:]
        grid = grid.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return torch.cat([class_position, grid.flatten(2)[0].t()], dim=0)

    def embed_patches(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """`(batch, height * width, hidden_size)` patch embeddings and the patch grid: the stride-`patch_size`
        convolution as one matrix product over the flattened patches (its weight used as stored), which GPUs
        run as a GEMM instead of a slow implicit convolution."""
        batch_size, channels = pixel_values.shape[:2]
        patch = self.patch_size
        height, width = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
        patches = pixel_values.reshape(batch_size, channels, height, patch, width, patch)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch_size, height * width, channels * patch * patch)
        return F.linear(patches, self.patch_embedding.weight.flatten(1)), (height, width)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        patches, (height, width) = self.embed_patches(pixel_values)
        class_token = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        embeddings = torch.cat([class_token, patches], dim=1)
        embeddings = embeddings + self.interpolated_position_embedding(height, width).to(patches.dtype)
        return embeddings, (height, width)


class FaceptorEncoderMLP(nn.Module):
    def __init__(self, config: FaceptorConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class FaceptorEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm ViT block (CLIP's residual attention block)."""

    def __init__(self, config: FaceptorConfig, drop_path: float = 0.0):
        super().__init__()
        self.layer_norm1 = FaceptorLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = FaceptorAttention(config, config.hidden_size, config.num_attention_heads)
        self.layer_norm2 = FaceptorLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = FaceptorEncoderMLP(config)
        self.drop_path = FaceptorDropPath(drop_path)
        tag_init_scheme(self, "vit")

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the layer's output and its attention weights (`None` under SDPA)."""
        normed = self.layer_norm1(hidden_states)
        attended, attn_weights = self.self_attn(normed, normed, normed)
        hidden_states = hidden_states + self.drop_path(attended)
        return hidden_states + self.drop_path(self.mlp(self.layer_norm2(hidden_states))), attn_weights


class FaceptorEncoder(nn.Module):
    """FaRL/CLIP ViT that keeps every layer's output (paper Eq. 1)."""

    def __init__(self, config: FaceptorConfig):
        super().__init__()
        self.config = config
        self.embeddings = FaceptorEncoderEmbeddings(config)
        self.pre_layernorm = FaceptorLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        drop_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(FaceptorEncoderLayer(config, rate) for rate in drop_rates)
        if config.projection_dim is not None:
            self.post_layernorm = FaceptorLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.projection = tag_init_scheme(
                nn.Linear(config.hidden_size, config.projection_dim, bias=False), "clip_projection"
            )

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False) -> BaseModelOutput:
        """`hidden_states` always holds the embeddings' output (after `pre_layernorm`) and every layer's output,
        each `(batch, 1 + h * w, hidden_size)` with the class token first: the decoder and the heads read several
        layers. `attentions`, with `output_attentions`, holds every layer's weights when the attention function
        computes them (eager), else `None`."""
        hidden_states, _ = self.embeddings(pixel_values)
        hidden_states = self.pre_layernorm(hidden_states)
        all_hidden_states, all_attentions = [hidden_states], []
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states)
            all_hidden_states.append(hidden_states)
            all_attentions.append(attn_weights)
        attentions = None
        if output_attentions:
            if any(weights is None for weights in all_attentions):
                logger.warning_once(
                    f"`output_attentions=True` returns no attention weights under the "
                    f"{self.config._attn_implementation!r} attention implementation; load the model with "
                    '`attn_implementation="eager"` (or call `model.set_attn_implementation("eager")`) for them.'
                )
            else:
                attentions = tuple(all_attentions)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=tuple(all_hidden_states), attentions=attentions
        )


class FaceptorAnchorPositionEmbedding(nn.Module):
    """Key positions of the decoder: a sine embedding of each patch centre (its "anchor", normalised to
    (0, 1)) mapped by a 2-layer MLP, as the official `cross_pos_embed="anchor"`."""

    def __init__(self, hidden_size: int, temperature: float = 10000.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.temperature = temperature
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self._cache: dict[tuple, tuple] = {}

    def sine_embedding(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """`(height * width, hidden_size)`: sine/cosine of y (first half) and x (second half)."""
        num_features = self.hidden_size // 2
        y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        y, x = torch.meshgrid(y, x, indexing="ij")
        frequencies = torch.arange(num_features, device=device, dtype=torch.float32)
        frequencies = self.temperature ** (2 * (frequencies // 2) / num_features)

        def encode(coordinate: torch.Tensor) -> torch.Tensor:
            angles = (coordinate * (2 * math.pi))[..., None] / frequencies
            return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

        return torch.cat([encode(y), encode(x)], dim=-1).flatten(0, 1)

    def forward(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`(height * width, hidden_size)`, cached per grid size, device and dtype while inferring."""

        def compute() -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(self.sine_embedding(height, width, device).to(dtype))))

        sources = [self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias]
        return cached_when_inferring(self._cache, (height, width, torch.device(device), dtype), sources, compute)


class FaceptorDecoderLayer(GradientCheckpointingLayer):
    """Cross-attention to the encoder features, self-attention among the task's queries, FFN; each
    followed by a residual and a LayerNorm (post-norm), in the official order."""

    def __init__(self, config: FaceptorConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.cross_attn = FaceptorAttention(config, width, config.decoder_attention_heads)
        self.cross_attn_layer_norm = nn.LayerNorm(width)
        self.self_attn = FaceptorAttention(config, width, config.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, config.decoder_ffn_dim)
        self.activation = ACT2FN[config.decoder_activation]
        self.fc2 = nn.Linear(config.decoder_ffn_dim, width)
        self.final_layer_norm = nn.LayerNorm(width)
        tag_init_scheme(self, "fan_in")

    def forward(
        self,
        hidden_states: torch.Tensor,
        query_position: torch.Tensor,
        memory: torch.Tensor,
        memory_keys: torch.Tensor,
        cross_attention_mask: torch.Tensor | None = None,
        self_attention_mask: torch.Tensor | None = None,
        level_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`hidden_states` `(B, Q, C)`, `query_position` `(Q, C)`, `memory` `(B, M, C)` values and
        `memory_keys` `(B, M, C)`: the memory plus its position and layer-aware embeddings (paper Eq. 7). When
        several tasks decode together, the masks keep each task to its own levels and queries and
        `level_embeddings` carries per-task layer embeddings (see `FaceptorAttention`)."""
        attended, _ = self.cross_attn(
            hidden_states + query_position, memory_keys, memory, cross_attention_mask, level_embeddings
        )
        hidden_states = self.cross_attn_layer_norm(hidden_states + attended)
        positioned = hidden_states + query_position
        attended, _ = self.self_attn(positioned, positioned, hidden_states, self_attention_mask)
        hidden_states = self.self_attn_layer_norm(hidden_states + attended)
        hidden_states = self.final_layer_norm(hidden_states + self.fc2(self.activation(self.fc1(hidden_states))))
        return hidden_states


class FaceptorDecoder(nn.Module):
    """Transformer decoder of task-specific queries over projected encoder features from several layers.

    Layer-Attention (paper Sec. 3.3): each level of `config.decoder_feature_layers` has its own 1x1 input
    projection; its keys carry the anchor position embedding plus a layer-aware embedding, either one per
    level shared by all tasks (`layer_embedding_scope="shared"`, the official `level_embed`) or one set per
    task (`"per_task"`, the paper's L_t). A task with `use_layer_attention=False` reads the top level only.
    """

    def __init__(self, config: FaceptorConfig):
        super().__init__()
        self.config = config
        width = config.decoder_hidden_size
        self.feature_layers = list(config.decoder_feature_layers)
        self.input_projections = tag_init_scheme(
            nn.ModuleList(nn.Linear(config.hidden_size, width) for _ in self.feature_layers), "caffe2_xavier"
        )
        self.anchor_position = FaceptorAnchorPositionEmbedding(width)
        if config.layer_embedding_scope == "shared":
            self.level_embeddings = nn.Parameter(torch.zeros(len(self.feature_layers), width))
        else:
            self.task_level_embeddings = FaceptorTaskParameters("normal")
        self.query_features = FaceptorTaskParameters("normal")
        self.query_position_embeddings = FaceptorTaskParameters("uniform")
        self.layers = nn.ModuleList(FaceptorDecoderLayer(config) for _ in range(config.decoder_layers))

    def add_task_parameters(
        self, spec: TaskSpec, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> list[nn.Parameter]:
        """Creates the task's queries, query positions and (per-task scope) layer embeddings, uninitialised."""
        if spec.num_queries == 0:
            return []
        width = self.config.decoder_hidden_size
        created = {
            self.query_features: torch.empty(spec.num_queries, width, device=device, dtype=dtype),
            self.query_position_embeddings: torch.empty(spec.num_queries, width, device=device, dtype=dtype),
        }
        if self.config.layer_embedding_scope == "per_task":
            created[self.task_level_embeddings] = torch.empty(
                len(self.feature_layers), width, device=device, dtype=dtype
            )
        parameters = []
        for container, value in created.items():
            container[spec.name] = nn.Parameter(value)
            parameters.append(container[spec.name])
        return parameters

    def levels_for(self, spec: TaskSpec) -> list[int]:
        """Indices into `feature_layers` that the task reads."""
        if spec.use_layer_attention:
            return list(range(len(self.feature_layers)))
        return [self.feature_layers.index(self.config.num_hidden_layers - 1)]

    def layer_embeddings(self, task_name: str) -> torch.Tensor:
        """`(num_levels, C)` layer-aware embeddings the task adds to its keys."""
        if self.config.layer_embedding_scope == "shared":
            return self.level_embeddings
        return self.task_level_embeddings[task_name]

    def project(self, patch_features: dict[int, torch.Tensor], levels: Iterable[int]) -> dict[int, torch.Tensor]:
        """Projects the encoder features `(B, h*w, hidden_size)` of the given level indices to `(B, h*w, C)`."""
        return {level: self.input_projections[level](patch_features[self.feature_layers[level]]) for level in levels}

    def forward(
        self, spec: TaskSpec, projected: dict[int, torch.Tensor], anchor_position: torch.Tensor
    ) -> torch.Tensor:
        """Decodes one task from projected levels and the `(h*w, C)` anchor positions; returns its tokens
        `(B, num_queries, C)`."""
        levels = self.levels_for(spec)
        layer_embeddings = self.layer_embeddings(spec.name)
        memory = torch.cat([projected[level] for level in levels], dim=1)
        key_positions = torch.cat([anchor_position + layer_embeddings[level] for level in levels], dim=0)
        memory_keys = memory + key_positions
        batch_size = memory.shape[0]
        hidden_states = self.query_features[spec.name].unsqueeze(0).expand(batch_size, -1, -1)
        query_position = self.query_position_embeddings[spec.name]
        for layer in self.layers:
            hidden_states = layer(hidden_states, query_position, memory, memory_keys)
        return hidden_states

    def forward_tasks(
        self, specs: Sequence[TaskSpec], projected: dict[int, torch.Tensor], anchor_position: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Decodes several tasks in one pass: their queries concatenated, self-attention kept within each task
        by a block mask, cross-attention kept to each task's levels by a mask, and per-task layer embeddings
        as per-query logit terms. Equals calling `forward` per task (up to float rounding)."""
        if len(specs) == 1:
            return {specs[0].name: self(specs[0], projected, anchor_position)}
        levels = sorted({level for spec in specs for level in self.levels_for(spec)})
        memory = torch.cat([projected[level] for level in levels], dim=1)
        batch_size, dtype, device = memory.shape[0], memory.dtype, memory.device
        if self.config.layer_embedding_scope == "shared":
            key_positions = torch.cat([anchor_position + self.level_embeddings[level] for level in levels], dim=0)
            level_embeddings = None
        else:
            key_positions = anchor_position.repeat(len(levels), 1)
            # Rows picked one by one (views), not indexed by a list: that would copy a CPU index tensor to the device.
            level_embeddings = torch.cat(
                [
                    torch.stack([self.task_level_embeddings[spec.name][level] for level in levels])[None].expand(
                        spec.num_queries, -1, -1
                    )
                    for spec in specs
                ]
            )
        memory_keys = memory + key_positions
        sizes = [spec.num_queries for spec in specs]
        # Additive float masks (the eager and SDPA attention functions both add them to the logits), filled on the
        # device from Python values: no host tensor is copied over, so the forward can be captured in a CUDA graph.
        blocked = torch.finfo(dtype).min
        same_task = torch.block_diag(*(torch.ones(size, size, dtype=torch.bool, device=device) for size in sizes))
        self_attention_mask = torch.zeros(same_task.shape, dtype=dtype, device=device)
        self_attention_mask = self_attention_mask.masked_fill(~same_task, blocked)[None, None]
        reads = [[level in self.levels_for(spec) for level in levels] for spec in specs]
        cross_attention_mask = None
        if not all(all(row) for row in reads):
            keys_per_level = anchor_position.shape[0]
            cross_attention_mask = torch.cat(
                [
                    torch.cat(
                        [
                            torch.full((size, keys_per_level), 0.0 if read else blocked, dtype=dtype, device=device)
                            for read in row
                        ],
                        dim=1,
                    )
                    for size, row in zip(sizes, reads, strict=True)
                ]
            )[None, None]
        hidden_states = torch.cat([self.query_features[spec.name] for spec in specs])[None].expand(batch_size, -1, -1)
        query_position = torch.cat([self.query_position_embeddings[spec.name] for spec in specs])
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                query_position,
                memory,
                memory_keys,
                cross_attention_mask,
                self_attention_mask,
                level_embeddings,
            )
        return dict(zip([spec.name for spec in specs], hidden_states.split(sizes, dim=1), strict=True))


class FaceptorPixelDecoder(nn.Module):
    """Upsamples the projected top-layer features 4x into per-pixel embeddings (paper Eq. 5): two 2x2
    transposed convolutions with a channel LayerNorm and GELU between them."""

    def __init__(self, config: FaceptorConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.upsample1 = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)
        self.norm = FaceptorChannelLayerNorm(width)
        self.upsample2 = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.upsample2(F.gelu(self.norm(self.upsample1(features))))


class FaceptorDenseHead(nn.Module):
    """Shared output module of dense tasks: an MLP aligns the task tokens with the pixel embeddings, and
    their dot product gives one map per query."""

    def __init__(self, config: FaceptorConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(config.dense_mlp_layers))

    def forward(self, task_tokens: torch.Tensor, pixel_embeddings: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            task_tokens = layer(task_tokens)
            if index < len(self.layers) - 1:
                task_tokens = F.relu(task_tokens)
        return torch.einsum("bqc,bchw->bqhw", task_tokens, pixel_embeddings)


class FaceptorAttributeHead(nn.Module):
    """Shared output module of attribute tasks: one linear layer maps each task token to one value."""

    def __init__(self, config: FaceptorConfig):
        super().__init__()
        self.fc = nn.Linear(config.decoder_hidden_size, 1)

    def forward(self, task_tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(task_tokens).squeeze(-1)


class FaceptorIdentityHead(nn.Module):
    """Shared output module of identity tasks (SwinFace's FC-BN-FC-BN): LayerNorm, average pool over the
    top layer's patch tokens, then Linear-BN-Linear-BN."""

    def __init__(self, config: FaceptorConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.fc1 = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.batch_norm1 = nn.BatchNorm1d(config.hidden_size, eps=2e-5)
        self.fc2 = nn.Linear(config.hidden_size, config.identity_embedding_size, bias=False)
        self.batch_norm2 = nn.BatchNorm1d(config.identity_embedding_size, eps=2e-5)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        pooled = self.layer_norm(patch_features).mean(dim=1)
        return self.batch_norm2(self.fc2(self.batch_norm1(self.fc1(pooled))))


def check_loaded_weights(
    model: nn.Module, missing_keys: Iterable[str], source: str, allow_missing_weights: bool = False
) -> None:
    """Raises a `ValueError` naming the tensors a loaded model lacks (freshly initialised, unless
    `allow_missing_weights`) or holds with non-finite values (NaN or inf)."""
    missing = sorted(missing_keys)
    if missing and not allow_missing_weights:
        raise ValueError(
            f"{source}: {len(missing)} tensors missing from the weights: {', '.join(missing[:5])}"
            + (", ..." if len(missing) > 5 else "")
            + " (pass allow_missing_weights=True to initialise them randomly)"
        )
    non_finite = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all()
    ]
    if non_finite:
        raise ValueError(
            f"{source}: {len(non_finite)} tensors hold NaN or infinite values: {', '.join(non_finite[:5])}"
            + (", ..." if len(non_finite) > 5 else "")
        )


class CheckedLoadingMixin:
    """`from_pretrained` as transformers' (missing tensors initialised, listed in `output_loading_info` and warned
    about by name), which also records the missing tensors' names on the model (`_missing_keys_at_load`): the
    face-perception pipeline refuses such a model, as the CLI's loader does (see [`check_loaded_weights`]).
    Listed before `PreTrainedModel` in a model's bases."""

    @classmethod
    def from_pretrained(cls, *args: Any, allow_missing_weights: bool = True, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`; `allow_missing_weights=False` raises a `ValueError` naming any tensor
        missing from the checkpoint or holding NaN or inf instead of warning."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        # Read by the pipeline, which gives answers and so refuses a model that was not wholly loaded.
        model._missing_keys_at_load = sorted(loading_info["missing_keys"])
        if not allow_missing_weights:
            source = str(args[0]) if args else str(kwargs.get("pretrained_model_name_or_path"))
            check_loaded_weights(model, loading_info["missing_keys"], source)
        return (model, loading_info) if output_loading_info else model

    def refuse_if_incomplete(self, allow_missing_weights: bool = False) -> None:
        """A `ValueError` naming the tensors `from_pretrained` did not find in the checkpoint (unless
        `allow_missing_weights`) or that hold NaN or inf: what answers are given with must be wholly loaded."""
        source = getattr(self, "name_or_path", "") or type(self).__name__
        check_loaded_weights(self, getattr(self, "_missing_keys_at_load", []), source, allow_missing_weights)


class FaceptorPreTrainedModel(CheckedLoadingMixin, PreTrainedModel):
    config: FaceptorConfig
    config_class = FaceptorConfig
    base_model_prefix = "faceptor"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["FaceptorEncoderLayer", "FaceptorDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation: FaRL's for the encoder, Mask2Former's "fan_in" for the decoder
        layers, Caffe2 Xavier for the input projections, PyTorch defaults for the output modules.

        Each module is initialised from its own parameters only (transformers skips parents whose direct
        parameters are all loaded), so layers carry their scheme as a tag set at construction."""
        scheme = getattr(module, "_init_scheme", None)
        if isinstance(module, FaceptorTaskParameters):
            for parameter in module.values():
                if module.distribution == "uniform":
                    init.uniform_(parameter, 0.0, 1.0)
                else:
                    init.normal_(parameter)
        elif isinstance(module, FaceptorEncoderEmbeddings):
            scale = self.config.hidden_size**-0.5
            init.trunc_normal_(module.patch_embedding.weight, std=self.config.initializer_range)
            init.normal_(module.class_embedding, std=scale)
            init.normal_(module.position_embedding, std=scale)
        elif isinstance(module, FaceptorDecoder) and self.config.layer_embedding_scope == "shared":
            init.normal_(module.level_embeddings)
        elif isinstance(module, nn.Linear) and scheme is not None:
            if scheme == "vit":
                init.trunc_normal_(module.weight, std=self.config.initializer_range)
            elif scheme == "clip_projection":
                init.normal_(module.weight, std=self.config.hidden_size**-0.5)
            elif scheme == "fan_in":
                init.normal_(module.weight, std=module.in_features**-0.5)
            elif scheme == "caffe2_xavier":
                init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            # PyTorch's default reset, through the init functions that spare loaded weights.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                receptive_field = module.weight[0, 0].numel()
                fan_in = module.weight.shape[0 if isinstance(module, nn.ConvTranspose2d) else 1] * receptive_field
                init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d, FaceptorChannelLayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm1d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)


class FaceptorTaskModelMixin:
    """What [`FaceptorModel`] and [`NaiveFaceptorModel`] share around their FaRL encoder (`self.encoder`): the tasks
    by name, the input check, the patch embedding as input embeddings and FaRL's CLIP image features."""

    @property
    def task_specs(self) -> dict[str, TaskSpec]:
        return self.config.task_specs

    def forward_groups(
        self,
        inputs: Mapping[str, torch.Tensor | None],
        tasks: str | Sequence[str] | None,
        run: Callable[[torch.Tensor, list[str]], FaceptorOutput],
    ) -> FaceptorOutput:
        """The forward on the image processor's crop groups (`inputs`: "dense", "face", "parsing" crops of the
        same faces, or None): each task reads its kind's group (the dense crops when its group was not given),
        `run(crops, task_names)` once per group needed, the outputs merged in task order. The encoder's outputs
        are those of the dense crops when a task read them, else of the first group run."""
        specs = self.resolve_tasks(tasks)
        by_input: dict[str, list[str]] = {}
        for spec in specs:
            group = spec.kind_info.crop_group
            by_input.setdefault(group if inputs.get(group) is not None else "dense", []).append(spec.name)
        if "dense" in by_input and inputs.get("dense") is None:
            raise ValueError(f"Tasks {by_input['dense']} read pixel_values, which was not given.")
        outputs = {group: run(inputs[group], names) for group, names in by_input.items()}
        encoder = outputs.get("dense", next(iter(outputs.values())))
        task_group = {name: group for group, names in by_input.items() for name in names}
        tokens = {group: output.decoder_tokens or {} for group, output in outputs.items()}
        decoder_tokens = {
            spec.name: tokens[task_group[spec.name]][spec.name]
            for spec in specs
            if spec.name in tokens[task_group[spec.name]]
        }
        has_decoder = any(output.decoder_tokens is not None for output in outputs.values())  # Naive Faceptor: none
        return FaceptorOutput(
            last_hidden_state=encoder.last_hidden_state,
            task_outputs={spec.name: outputs[task_group[spec.name]].task_outputs[spec.name] for spec in specs},
            decoder_tokens=decoder_tokens if has_decoder else None,
            pixel_embeddings=next(
                (out.pixel_embeddings for out in (encoder, *outputs.values()) if out.pixel_embeddings is not None), None
            ),
            hidden_states=encoder.hidden_states,
            attentions=encoder.attentions,
        )

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding convolution, as ViT-style models give."""
        return self.encoder.embeddings.patch_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.embeddings.patch_embedding = value

    def resolve_tasks(self, tasks: str | Sequence[str] | None = None) -> list[TaskSpec]:
        """The specs of the requested tasks (all tasks when `None`); a `ValueError` names any unknown one."""
        specs = self.task_specs
        if tasks is None:
            return list(specs.values())
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        if not names:
            raise ValueError("No task requested: pass task names, or tasks=None for all tasks.")
        unknown = [name for name in names if name not in specs]
        if unknown:
            raise ValueError(f"The model has no task {unknown}; its tasks are {list(specs)}.")
        return [specs[name] for name in dict.fromkeys(names)]

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = getattr(pixel_values, "shape", type(pixel_values).__name__)
            raise ValueError(f"pixel_values must be a (batch, channels, height, width) tensor, got {shape}.")
        channels, height, width = pixel_values.shape[1:]
        if channels != self.config.num_channels:
            raise ValueError(f"pixel_values has {channels} channels; the model expects {self.config.num_channels}.")
        patch = self.config.patch_size
        if height % patch or width % patch or height == 0 or width == 0:
            raise ValueError(f"Image size {height}x{width} must be a positive multiple of the patch size {patch}.")

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        FaRL's CLIP image embedding as `pooler_output` `(batch, projection_dim)`: the class token of the top layer
        through `post_layernorm` and `projection`, as CLIP's `get_image_features`; `last_hidden_state` is the top
        layer's output, and `hidden_states` / `attentions` follow [`FaceptorModel.forward`]'s.
        """
        if self.config.projection_dim is None:
            raise ValueError("This model has no image projection (config.projection_dim is None).")
        self._check_pixel_values(pixel_values)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pixel_values = pixel_values.to(self.encoder.embeddings.patch_embedding.weight.dtype)
        encoder_outputs = self.encoder(pixel_values, output_attentions=output_attentions)
        last_hidden_state = encoder_outputs.last_hidden_state
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=self.encoder.projection(self.encoder.post_layernorm(last_hidden_state[:, 0])),
            hidden_states=encoder_outputs.hidden_states if output_hidden_states else None,
            attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class FaceptorModel(FaceptorTaskSetMixin, FaceptorTaskModelMixin, FaceptorPreTrainedModel):
    """Faceptor: one encoder pass, then every requested task decoded from its queries.

    Example:

    ```python
    >>> import torch
    >>> from faceptor import FaceptorConfig, FaceptorModel
    >>> model = FaceptorModel(FaceptorConfig.from_preset("faceptor-base")).eval()
    >>> out = model(torch.randn(1, 3, 112, 112), tasks=["age_morph2", "affect_rafdb"])
    >>> out.task_outputs["age_morph2"].shape
    torch.Size([1, 101])
    ```
    """

    def __init__(self, config: FaceptorConfig):
        super().__init__(config)
        self.encoder = FaceptorEncoder(config)
        self.decoder = FaceptorDecoder(config)
        for spec in config.task_specs.values():
            self.decoder.add_task_parameters(spec)
            self._ensure_output_module(spec.category)
        self.post_init()

    def _ensure_output_module(self, category: str) -> list[nn.Module]:
        """Creates the shared output module(s) of a task category once; returns what was created."""
        wanted = {
            "dense": {"pixel_decoder": FaceptorPixelDecoder, "dense_head": FaceptorDenseHead},
            "attribute": {"attribute_head": FaceptorAttributeHead},
            "identity": {"identity_head": FaceptorIdentityHead},
        }[category]
        created = []
        for attribute, module_class in wanted.items():
            if not hasattr(self, attribute):
                setattr(self, attribute, module_class(self.config))
                created.append(getattr(self, attribute))
        return created

    def add_task(self, spec: TaskSpec | dict) -> int:
        """Adds a new-coming task (paper Sec. 1): only its queries, their position embeddings and, with
        per-task layer embeddings, its layer embeddings; plus a category's output module if the model had
        none. Returns the number of parameters added."""
        spec = TaskSpec.from_any(spec)
        if spec.name in self.task_specs:
            raise ValueError(f"The model already has a task named {spec.name!r}.")
        reference = self.encoder.embeddings.class_embedding
        new_modules = self._ensure_output_module(spec.category)
        new_parameters = self.decoder.add_task_parameters(spec, device=reference.device, dtype=reference.dtype)
        for module in new_modules:
            module.to(device=reference.device, dtype=reference.dtype)
            module.apply(self._init_weights)
        with torch.no_grad():
            for container in (
                self.decoder.query_features,
                self.decoder.query_position_embeddings,
                getattr(self.decoder, "task_level_embeddings", None),
            ):
                if container is not None and spec.name in container:
                    parameter = container[spec.name]
                    parameter.uniform_(0.0, 1.0) if container.distribution == "uniform" else parameter.normal_()
        self.config.tasks = [*self.config.tasks, spec.to_dict()]
        added = sum(p.numel() for p in new_parameters) + sum(
            p.numel() for module in new_modules for p in module.parameters()
        )
        return added

    def task_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The parameters that belong to task `name` alone (its query set), under their model names."""
        if name not in self.task_specs:
            raise ValueError(f"The model has no task {name!r}; its tasks are {self.config.task_names}.")
        containers = ("query_features", "query_position_embeddings", "task_level_embeddings")
        return {
            f"decoder.{container}.{name}": getattr(self.decoder, container)[name].detach()
            for container in containers
            if hasattr(self.decoder, container) and name in getattr(self.decoder, container)
        }

    def add_decoder_levels(self, layers: Sequence[int], copy_top_projection: bool = False) -> int:
        """Opens more encoder layers to Layer-Attention (stage 2 of the paper's training, Fig. 3): each gets a
        1x1 input projection (Caffe2-Xavier init, or a copy of the top layer's with `copy_top_projection`)
        and a layer-aware embedding row (N(0, 1)), shared or per task as the config says. Returns the number
        of parameters added."""
        layers = [int(layer) for layer in layers]
        current = self.config.decoder_feature_layers
        clash = [layer for layer in layers if layer in current]
        if clash or len(set(layers)) != len(layers):
            raise ValueError(f"Layers {clash or layers} are already read by the decoder or repeated.")
        if any(not 0 <= layer < self.config.num_hidden_layers for layer in layers):
            raise ValueError(f"Layers {layers} must lie in 0..{self.config.num_hidden_layers - 1}.")
        reference = self.decoder.input_projections[current.index(self.config.top_layer)]
        added = 0
        for _ in layers:
            projection = tag_init_scheme(
                nn.Linear(self.config.hidden_size, self.config.decoder_hidden_size), "caffe2_xavier"
            )
            projection.to(device=reference.weight.device, dtype=reference.weight.dtype)
            with torch.no_grad():
                if copy_top_projection:
                    projection.load_state_dict(reference.state_dict())
                else:
                    nn.init.kaiming_uniform_(projection.weight, a=1)
                    nn.init.zeros_(projection.bias)
            self.decoder.input_projections.append(projection)
            added += sum(p.numel() for p in projection.parameters())

        def grown(parameter: torch.Tensor) -> nn.Parameter:
            rows = torch.randn(len(layers), parameter.shape[1], device=parameter.device, dtype=parameter.dtype)
            return nn.Parameter(torch.cat([parameter.detach(), rows], dim=0))

        if self.config.layer_embedding_scope == "shared":
            self.decoder.level_embeddings = grown(self.decoder.level_embeddings)
            added += len(layers) * self.config.decoder_hidden_size
        else:
            for name in list(self.decoder.task_level_embeddings):
                self.decoder.task_level_embeddings[name] = grown(self.decoder.task_level_embeddings[name])
                added += len(layers) * self.config.decoder_hidden_size
        self.config.decoder_feature_layers = [*current, *layers]
        self.decoder.feature_layers = list(self.config.decoder_feature_layers)
        return added

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        tasks: str | Sequence[str] | None = None,
        task_samples: Mapping[str, slice] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        pixel_values_face: torch.Tensor | None = None,
        pixel_values_parsing: torch.Tensor | None = None,
    ) -> FaceptorOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised face crops; height and width multiples of the patch size. With `pixel_values_face` or
            `pixel_values_parsing`, the crops of the tasks that read neither (the dense crops).
        pixel_values_face (`torch.FloatTensor`, *optional*):
            The face-group crops (112 px) of the same faces, read by the attribute and identity tasks, as the image
            processor returns them when called without tasks: `model(**processor(images))` returns every task.
        pixel_values_parsing (`torch.FloatTensor`, *optional*):
            Tanh-warped parsing crops of the same faces, read by the parsing tasks.
        tasks (`str` or `list[str]`, *optional*):
            Tasks to decode (all the model's tasks by default).
        task_samples (`dict[str, slice]`, *optional*):
            The batch rows each task decodes (all rows by default). Multi-task training puts several tasks'
            samples of one input size in one batch, so the encoder runs once and each task reads its own rows.
        output_hidden_states (`bool`, *optional*):
            Also return the embeddings' and every encoder layer's output (`config.output_hidden_states` by default).
        return_dict (`bool`, *optional*):
            Return a [`FaceptorOutput`] (`config.return_dict` by default) rather than its `to_tuple()`.
        output_attentions (`bool`, *optional*):
            Also return every encoder layer's attention weights (`config.output_attentions` by default); they need
            eager attention (`attn_implementation="eager"`), SDPA does not compute them.

        Given several crop groups, the encoder runs once per group that a requested task reads; `task_outputs` and
        `decoder_tokens` hold every task, and the encoder's outputs (`last_hidden_state`, `pixel_embeddings`,
        `hidden_states`, `attentions`) are those of `pixel_values` when a task read them, else the first group run.
        """
        if pixel_values_face is not None or pixel_values_parsing is not None:
            inputs = {"dense": pixel_values, "face": pixel_values_face, "parsing": pixel_values_parsing}
            if task_samples:
                raise ValueError("task_samples selects rows of one input; pass pixel_values alone with it.")
            return_dict = return_dict if return_dict is not None else self.config.return_dict
            output = self.forward_groups(
                inputs,
                tasks,
                lambda crops, names: self._forward_crops(
                    crops, names, None, output_hidden_states, True, output_attentions
                ),
            )
            return output if return_dict else output.to_tuple()
        if pixel_values is None:
            raise ValueError("pixel_values is required (the face crops, as the image processor returns them).")
        return self._forward_crops(
            pixel_values, tasks, task_samples, output_hidden_states, return_dict, output_attentions
        )

    def _decoder_tokens(
        self,
        specs: Sequence[TaskSpec],
        projected: Mapping[int, torch.Tensor],
        anchor_position: torch.Tensor,
        task_samples: Mapping[str, slice] | None,
    ) -> dict[str, torch.Tensor]:
        """The transformer decoder's task tokens of the decoded tasks: all tasks' queries in one pass, or with
        `task_samples` each task on its own rows (multi-task training)."""
        if not task_samples:
            return self.decoder.forward_tasks(specs, projected, anchor_position)
        tokens = {}
        for spec in specs:
            rows = task_samples.get(spec.name, slice(None))
            own_levels = {level: features[rows] for level, features in projected.items()}
            tokens[spec.name] = self.decoder(spec, own_levels, anchor_position)
        return tokens

    def _task_heads(
        self,
        specs: Sequence[TaskSpec],
        decoder_tokens: Mapping[str, torch.Tensor],
        patch_features: Mapping[int, torch.Tensor],
        pixel_embeddings: torch.Tensor | None,
        task_samples: Mapping[str, slice],
    ) -> dict[str, torch.Tensor]:
        """Each task's raw output through the output module its category shares."""
        task_outputs = {}
        for spec in specs:
            rows = task_samples.get(spec.name, slice(None))
            if spec.category == "identity":
                task_outputs[spec.name] = self.identity_head(patch_features[self.config.top_layer][rows])
            elif spec.category == "dense":
                task_outputs[spec.name] = self.dense_head(decoder_tokens[spec.name], pixel_embeddings[rows])
            else:
                task_outputs[spec.name] = self.attribute_head(decoder_tokens[spec.name])
        return task_outputs

    def _forward_crops(
        self,
        pixel_values: torch.Tensor,
        tasks: str | Sequence[str] | None,
        task_samples: Mapping[str, slice] | None,
        output_hidden_states: bool | None,
        return_dict: bool | None,
        output_attentions: bool | None,
    ) -> FaceptorOutput | tuple:
        self._check_pixel_values(pixel_values)
        specs = self.resolve_tasks(tasks)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pixel_values = pixel_values.to(self.encoder.embeddings.patch_embedding.weight.dtype)
        height, width = (size // self.config.patch_size for size in pixel_values.shape[-2:])

        decoded = [spec for spec in specs if spec.category != "identity"]
        # Only the levels some requested task reads are projected.
        levels = sorted({level for spec in decoded for level in self.decoder.levels_for(spec)})
        encoder_outputs = self.encoder(pixel_values, output_attentions=output_attentions)
        # hidden_states[0] is the embeddings' output: layer i's patch tokens are hidden_states[i + 1][:, 1:].
        patch_features = {
            index: layer_output[:, 1:] for index, layer_output in enumerate(encoder_outputs.hidden_states[1:])
        }

        projected = self.decoder.project(patch_features, levels)
        pixel_embeddings = None
        if any(spec.category == "dense" for spec in specs):
            top = projected[self.decoder.feature_layers.index(self.config.top_layer)]
            pixel_embeddings = self.pixel_decoder(
                top.transpose(1, 2).reshape(top.shape[0], top.shape[2], height, width)
            )
        decoder_tokens = {}
        if decoded:
            anchor_position = self.decoder.anchor_position(height, width, pixel_values.device, pixel_values.dtype)
            decoder_tokens = self._decoder_tokens(decoded, projected, anchor_position, task_samples)
        task_outputs = self._task_heads(specs, decoder_tokens, patch_features, pixel_embeddings, task_samples or {})

        output = FaceptorOutput(
            last_hidden_state=encoder_outputs.last_hidden_state,
            task_outputs=task_outputs,
            decoder_tokens=decoder_tokens,
            pixel_embeddings=pixel_embeddings,
            hidden_states=encoder_outputs.hidden_states if output_hidden_states else None,
            attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


FaceptorConfig.register_for_auto_class()
FaceptorModel.register_for_auto_class("AutoModel")

__all__ = ["FaceptorModel", "FaceptorPreTrainedModel", "check_loaded_weights"]
