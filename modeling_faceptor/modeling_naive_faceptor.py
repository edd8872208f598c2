"""Naive Faceptor (Qin et al., ECCV 2024, Sec. 3.1): the Faceptor encoder shared by all tasks, and one
standardized output head per task group (paper Fig. 1c), as the official `TaskSpecificHeadsHolder`:

- dense tasks: UperNet over four encoder layers made into a feature pyramid (FaRL's downstream head, the official
  `MMSEG_UPerHead`: FaRL's `_make_fpns` and mmsegmentation's `UPerHead`);
- attribute tasks: SwinFace's face analysis subnet (official `SwinFaceHead`): a convolution per encoder layer,
  CBAM channel attention, max pooling, BatchNorm, a 2-layer MLP and one linear layer per task;
- identity tasks: SwinFace's recognition subnet (official `RecognitionHead`), the same as Faceptor's.

The official code uses SyncBatchNorm in the dense heads; here it is `nn.BatchNorm2d`, the same computation at
inference and on one device.

This file travels to the Hub as remote code: it imports only torch, transformers and files of this folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_naive_faceptor import NaiveFaceptorConfig
from .modeling_faceptor import (
    CheckedLoadingMixin,
    FaceptorEncoder,
    FaceptorIdentityHead,
    FaceptorPreTrainedModel,
    FaceptorTaskModelMixin,
)
from .outputs_faceptor import FaceptorOutput


class NaiveFaceptorConvNormReLU(nn.Module):
    """Convolution (no bias), BatchNorm, ReLU: mmcv's `ConvModule` as UperNet builds it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.conv._init_scheme = "kaiming_fan_out"
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(hidden_states)))


class NaiveFaceptorUpsample4(nn.Module):
    """4x upsampling of the first pyramid level: 2x2 transposed convolution, BatchNorm, GELU, 2x2 transposed
    convolution (FaRL's `fpn1`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.deconv1 = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        self.norm = nn.BatchNorm2d(channels)
        self.deconv2 = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.deconv2(F.gelu(self.norm(self.deconv1(hidden_states))))


class NaiveFaceptorDenseHead(nn.Module):
    """UperNet over four encoder layers (official `MMSEG_UPerHead`). The layers become a pyramid at 4x, 2x, 1x
    and 0.5x the patch grid; a pooling pyramid (PSP) summarises the coarsest level; the levels are merged top
    down (FPN), brought to the finest resolution, fused, and classified by a 1x1 convolution into the channels
    of all the group's tasks. Output: `(batch, sum of the group's num_queries, 4 h, 4 w)` for an `h x w` patch
    grid, i.e. a quarter of the input resolution."""

    def __init__(self, config: NaiveFaceptorConfig, num_outputs: int):
        super().__init__()
        width, channels = config.hidden_size, config.dense_channels
        self.pool_scales = list(config.dense_pool_scales)
        self.upsample4 = NaiveFaceptorUpsample4(width)
        self.upsample2 = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)
        self.psp_convs = nn.ModuleList(NaiveFaceptorConvNormReLU(width, channels, 1) for _ in self.pool_scales)
        self.psp_bottleneck = NaiveFaceptorConvNormReLU(width + len(self.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(NaiveFaceptorConvNormReLU(width, channels, 1) for _ in range(3))
        self.fpn_convs = nn.ModuleList(NaiveFaceptorConvNormReLU(channels, channels, 3) for _ in range(3))
        self.fpn_bottleneck = NaiveFaceptorConvNormReLU(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(config.dense_dropout)
        self.classifier = nn.Conv2d(channels, num_outputs, kernel_size=1)

    @staticmethod
    def _resize(hidden_states: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(hidden_states, size=size, mode="bilinear", align_corners=False)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """`features`: four `(batch, hidden_size, h, w)` encoder layers, finest pyramid level first."""
        pyramid = [
            self.upsample4(features[0]),
            self.upsample2(features[1]),
            features[2],
            F.max_pool2d(features[3], kernel_size=2, stride=2),
        ]
        top = pyramid[-1]
        pooled = [top] + [
            self._resize(conv(F.adaptive_avg_pool2d(top, scale)), top.shape[2:])
            for scale, conv in zip(self.pool_scales, self.psp_convs, strict=True)
        ]
        laterals = [conv(level) for conv, level in zip(self.lateral_convs, pyramid[:-1], strict=True)]
        laterals.append(self.psp_bottleneck(torch.cat(pooled, dim=1)))
        for index in range(len(laterals) - 1, 0, -1):
            laterals[index - 1] = laterals[index - 1] + self._resize(laterals[index], laterals[index - 1].shape[2:])
        outputs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals[:-1], strict=True)]
        outputs.append(laterals[-1])
        size = outputs[0].shape[2:]
        outputs = [outputs[0]] + [self._resize(output, size) for output in outputs[1:]]
        fused = self.fpn_bottleneck(torch.cat(outputs, dim=1))
        return self.classifier(self.dropout(fused))


class NaiveFaceptorChannelGate(nn.Module):
    """CBAM channel attention: an MLP of the average- and the max-pooled channels, summed, gates the map."""

    def __init__(self, channels: int, reduction_ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction_ratio)
        self.fc2 = nn.Linear(channels // reduction_ratio, channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        def mlp(pooled: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(pooled)))

        gate = mlp(hidden_states.mean(dim=(2, 3))) + mlp(hidden_states.amax(dim=(2, 3)))
        return hidden_states * torch.sigmoid(gate)[:, :, None, None]


class NaiveFaceptorAttributeHead(nn.Module):
    """SwinFace's face analysis subnet (official `SwinFaceHead`): a convolution per encoder layer (each a quarter
    of the width, concatenated), channel attention, ReLU, global max pooling, BatchNorm, a 2-layer MLP with
    dropout, and one linear layer per task of the group."""

    def __init__(self, config: NaiveFaceptorConfig, task_outputs: Mapping[str, int]):
        super().__init__()
        width, hidden = config.hidden_size, config.attribute_hidden_size
        kernel = config.attribute_kernel_size
        self.convs = nn.ModuleList(
            nn.Conv2d(width, hidden // 4, kernel, padding=(kernel - 1) // 2, bias=False) for _ in range(4)
        )
        self.channel_gate = NaiveFaceptorChannelGate(hidden, config.attribute_reduction_ratio)
        self.batch_norm = nn.BatchNorm1d(hidden, eps=2e-5)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(config.attribute_dropout)
        self.classifiers = nn.ModuleDict({name: nn.Linear(hidden, size) for name, size in task_outputs.items()})

    def features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """`(batch, attribute_hidden_size)` features shared by the group's tasks."""
        hidden_states = torch.cat([conv(feature) for conv, feature in zip(self.convs, features, strict=True)], dim=1)
        hidden_states = F.relu(self.channel_gate(hidden_states))
        hidden_states = self.batch_norm(hidden_states.amax(dim=(2, 3)))
        hidden_states = self.dropout(F.relu(self.fc1(hidden_states)))
        return self.dropout(F.relu(self.fc2(hidden_states)))

    def forward(self, features: Sequence[torch.Tensor], task_name: str) -> torch.Tensor:
        return self.classifiers[task_name](self.features(features))


class NaiveFaceptorPreTrainedModel(CheckedLoadingMixin, PreTrainedModel):
    config: NaiveFaceptorConfig
    config_class = NaiveFaceptorConfig
    base_model_prefix = "naive_faceptor"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["FaceptorEncoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation: FaRL's for the encoder (as [`FaceptorModel`]); mmcv's `ConvModule` init
        (Kaiming normal, fan-out, ReLU gain) for UperNet's convolutions; BatchNorm at ones and zeros with fresh
        running statistics; PyTorch's defaults for every other layer of the heads (the official code never
        calls mmseg's `init_weights`, so UperNet's classifier keeps PyTorch's default too)."""
        if isinstance(module, nn.Conv2d) and getattr(module, "_init_scheme", None) == "kaiming_fan_out":
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        else:
            FaceptorPreTrainedModel._init_weights(self, module)


class NaiveFaceptorModel(FaceptorTaskModelMixin, NaiveFaceptorPreTrainedModel):
    """Naive Faceptor: one encoder pass, then each requested task through its group's standardized head.

    Outputs have the forms of [`FaceptorModel`]'s, so the image processor, the pipeline and the losses serve
    both: dense tasks `(batch, num_queries, height / 4, width / 4)` maps (the UperNet output before the
    official out modules upsample it (parsing) or decode it (landmarks)), attribute tasks `(batch, num_queries)`
    logits, identity tasks `(batch, identity_embedding_size)` embeddings.

    Example:

    ```python
    >>> import torch
    >>> from faceptor import NaiveFaceptorConfig, NaiveFaceptorModel
    >>> model = NaiveFaceptorModel(NaiveFaceptorConfig.from_preset("faceptor-base")).eval()
    >>> out = model(torch.randn(1, 3, 112, 112), tasks=["age_morph2", "affect_rafdb"])
    >>> out.task_outputs["age_morph2"].shape
    torch.Size([1, 101])
    ```
    """

    def __init__(self, config: NaiveFaceptorConfig):
        super().__init__(config)
        self.encoder = FaceptorEncoder(config)
        specs = config.task_specs
        self.heads = nn.ModuleDict()
        for group, members in config.ordered_task_groups.items():
            category = specs[members[0]].category
            if category == "dense":
                self.heads[group] = NaiveFaceptorDenseHead(config, sum(specs[name].num_queries for name in members))
            elif category == "attribute":
                self.heads[group] = NaiveFaceptorAttributeHead(
                    config, {name: specs[name].num_queries for name in members}
                )
            else:
                self.heads[group] = FaceptorIdentityHead(config)
        self.post_init()

    def output_channels(self, group: str) -> dict[str, slice]:
        """The channels of each task of a dense group in its head's output."""
        slices, start = {}, 0
        for name in self.config.task_groups[group]:
            size = self.task_specs[name].num_queries
            slices[name], start = slice(start, start + size), start + size
        return slices

    def task_parameter_names(self, name: str) -> dict[str, int]:
        """The parameters that serve task `name`, by name, with how many of their numbers belong to the task
        alone: the whole head when the task is alone in its group; otherwise its linear layer (attribute), its
        rows of the classifier (dense) or nothing (identity heads serve every task of the group the same)."""
        group = self.config.group_of(name)
        head = self.heads[group]
        alone = len(self.config.task_groups[group]) == 1
        result = {}
        for parameter_name, parameter in head.named_parameters():
            full_name = f"heads.{group}.{parameter_name}"
            if alone:
                result[full_name] = parameter.numel()
            elif parameter_name.startswith(f"classifiers.{name}."):
                result[full_name] = parameter.numel()
            elif parameter_name.startswith("classifier."):
                rows = self.output_channels(group)[name]
                result[full_name] = (rows.stop - rows.start) * parameter[0].numel()
        return result

    def task_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Faceptor's task query sets (a task's own queries) have no counterpart here: a task's parameters are
        its head's (see `task_parameter_names`). Empty, so that training code that saves query sets saves none."""
        if name not in self.task_specs:
            raise ValueError(f"The model has no task {name!r}; its tasks are {self.config.task_names}.")
        return {}

    def _grid_features(
        self, layer_outputs: Sequence[torch.Tensor], layers: Sequence[int], grid: tuple[int, int], rows: slice
    ) -> list[torch.Tensor]:
        """Encoder layers (`layer_outputs[i]` is layer i's output) as `(batch, hidden_size, h, w)` maps, class
        token dropped."""
        height, width = grid
        maps = []
        for layer in layers:
            patches = layer_outputs[layer][rows, 1:]
            maps.append(patches.transpose(1, 2).reshape(patches.shape[0], -1, height, width))
        return maps

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
        pixel_values_face, pixel_values_parsing (`torch.FloatTensor`, *optional*):
            The other crop groups of the same faces, as the image processor returns them when called without tasks:
            `model(**processor(images))` returns every task, one encoder pass per group (as [`FaceptorModel`]).
        tasks (`str` or `list[str]`, *optional*):
            Tasks to run (all the model's tasks by default).
        task_samples (`dict[str, slice]`, *optional*):
            The batch rows each task reads (all rows by default). With it, each task's rows go through its head
            on their own, as in the official multi-task training (BatchNorm statistics per task); without it, each
            group's head runs once for all its requested tasks.
        output_hidden_states (`bool`, *optional*):
            Also return the embeddings' and every encoder layer's output (`config.output_hidden_states` by default).
        return_dict (`bool`, *optional*):
            Return a [`FaceptorOutput`] (`config.return_dict` by default) rather than its `to_tuple()`.
        output_attentions (`bool`, *optional*):
            Also return every encoder layer's attention weights (`config.output_attentions` by default); they need
            eager attention (`attn_implementation="eager"`), SDPA does not compute them.

        Returns a [`FaceptorOutput`] whose `task_outputs` holds one raw output per task; `decoder_tokens` and
        `pixel_embeddings` are `None` (Naive Faceptor has no decoder).
        """
        if pixel_values_face is not None or pixel_values_parsing is not None:
            if task_samples:
                raise ValueError("task_samples selects rows of one input; pass pixel_values alone with it.")
            inputs = {"dense": pixel_values, "face": pixel_values_face, "parsing": pixel_values_parsing}
            output = self.forward_groups(
                inputs,
                tasks,
                lambda crops, names: self(crops, names, None, output_hidden_states, True, output_attentions),
            )
            return (
                output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()
            )
        if pixel_values is None:
            raise ValueError("pixel_values is required (the face crops, as the image processor returns them).")
        self._check_pixel_values(pixel_values)
        specs = self.resolve_tasks(tasks)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pixel_values = pixel_values.to(self.encoder.embeddings.patch_embedding.weight.dtype)
        grid = tuple(size // self.config.patch_size for size in pixel_values.shape[-2:])
        encoder_outputs = self.encoder(pixel_values, output_attentions=output_attentions)
        # hidden_states[0] is the embeddings' output; the heads index encoder layers.
        layer_outputs = encoder_outputs.hidden_states[1:]
        config = self.config

        def run_group(group: str, names: list[str], rows) -> dict[str, torch.Tensor]:
            head, category = self.heads[group], config.group_category(group)
            if category == "identity":
                embedding = head(layer_outputs[config.identity_feature_layer][rows, 1:])
                return dict.fromkeys(names, embedding)
            if category == "attribute":
                shared = head.features(self._grid_features(layer_outputs, config.attribute_feature_layers, grid, rows))
                return {name: head.classifiers[name](shared) for name in names}
            maps = head(self._grid_features(layer_outputs, config.dense_feature_layers, grid, rows))
            channels = self.output_channels(group)
            return {name: maps[:, channels[name]] for name in names}

        task_outputs = {}
        if task_samples:
            for spec in specs:
                rows = task_samples.get(spec.name, slice(None))
                task_outputs.update(run_group(config.group_of(spec.name), [spec.name], rows))
        else:
            requested: dict[str, list[str]] = {}
            for spec in specs:
                requested.setdefault(config.group_of(spec.name), []).append(spec.name)
            computed = {}
            for group, names in requested.items():
                computed.update(run_group(group, names, slice(None)))
            task_outputs = {spec.name: computed[spec.name] for spec in specs}

        output = FaceptorOutput(
            last_hidden_state=encoder_outputs.last_hidden_state,
            task_outputs=task_outputs,
            hidden_states=encoder_outputs.hidden_states if output_hidden_states else None,
            attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


NaiveFaceptorConfig.register_for_auto_class()
NaiveFaceptorModel.register_for_auto_class("AutoModel")

__all__ = ["NaiveFaceptorModel", "NaiveFaceptorPreTrainedModel"]
