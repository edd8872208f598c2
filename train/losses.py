"""Training losses of Faceptor, one per task kind, as the official `core/model/loss/*`, and their weighted
sum (paper Eq. 8)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..processing.decoding import age_probabilities, expected_age, landmark_points

HEATMAP_RADIUS = 5.0  # official AlignLoss(heatmap_radius=5.0), in heatmap pixels
AGE_LABEL_STD = 2.0  # official normal_sampling(std=2)


def gaussian_heatmaps(points: torch.Tensor, height: int, width: int, radius: float = HEATMAP_RADIUS) -> torch.Tensor:
    """Normalised points `(B, N, 2)` (x, y in [0, 1], pixel centres at (i + 0.5) / size) -> target heatmaps
    `(B, N, height, width)`: exp(-8 r^2 / radius^2) within `radius` pixels of the point, 0 beyond, as the
    official `points2heatmap` with its "gaussian_awing" kernel."""
    scale = torch.tensor([width, height], device=points.device, dtype=points.dtype)
    pixel_points = points * scale - 0.5
    ys = torch.arange(height, device=points.device, dtype=points.dtype)
    xs = torch.arange(width, device=points.device, dtype=points.dtype)
    dx = xs.view(1, 1, 1, width) - pixel_points[..., 0, None, None]
    dy = ys.view(1, 1, height, 1) - pixel_points[..., 1, None, None]
    squared = dx.square() + dy.square()
    heatmaps = torch.exp(-squared * 16 / 2 / radius**2)
    return torch.where(squared <= radius**2, heatmaps, torch.zeros_like(heatmaps))


def landmark_loss(maps: torch.Tensor, points: torch.Tensor, input_size: int) -> dict[str, torch.Tensor]:
    """Raw landmark maps `(B, N, h, w)` and true points `(B, N, 2)` in input pixels -> the official AlignLoss:
    mean L2 distance of the soft-argmax points (normalised coordinates) plus the BCE of the maps against
    Gaussian heatmaps."""
    target = (points + 0.5) / input_size
    predicted = landmark_points(maps)
    coordinates = (target - predicted).norm(dim=-1).mean()
    heatmaps = gaussian_heatmaps(target, maps.shape[-2], maps.shape[-1])
    heatmap = F.binary_cross_entropy_with_logits(maps, heatmaps)
    return {"loss": coordinates + heatmap, "coordinates": coordinates, "heatmap": heatmap}


def parsing_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits `(B, C, h, w)` upsampled (bilinear) to the label maps `(B, H, W)`, then per-pixel cross-entropy."""
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return {"loss": F.cross_entropy(upsampled, labels.long())}


def age_label_distribution(ages: torch.Tensor, num_ages: int = 101, std: float = AGE_LABEL_STD) -> torch.Tensor:
    """`(B,)` ages -> `(B, num_ages)` Gaussian label distributions (std 2) normalised to sum to one."""
    bins = torch.arange(num_ages, device=ages.device, dtype=torch.float32)
    density = torch.exp(-(bins - ages.float()[:, None]).square() / (2 * std**2)) / (math.sqrt(2 * math.pi) * std)
    return F.normalize(density, p=1, dim=1)


def age_loss(logits: torch.Tensor, ages: torch.Tensor) -> dict[str, torch.Tensor]:
    """DLDL-v2 (official AgeLoss_DLDLV2): on sigmoid outputs normalised to sum to one, the KL divergence to the
    Gaussian label distribution (summed over ages, averaged over the batch) plus the L1 error of the expected
    age."""
    probabilities = age_probabilities(logits)
    target = age_label_distribution(ages, logits.shape[1])
    kl = F.kl_div(probabilities.log(), target, reduction="sum") / logits.shape[0]
    l1 = F.l1_loss(expected_age(logits), ages.float())
    return {"loss": kl + l1, "kl": kl, "l1": l1}


def expression_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy over the expression classes."""
    return {"loss": F.cross_entropy(logits, labels.long())}


def attribute_loss(
    logits: torch.Tensor, targets: torch.Tensor, positive_ratios: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Sigmoid BCE summed over attributes and averaged over the batch (official CEL_Sigmoid); targets of -1
    are unknown and ignored. With `positive_ratios` (the share of positives per attribute in the training
    set) each term is weighted exp(1 - ratio) for positives and exp(ratio) for negatives."""
    targets = targets.float()
    known = (targets != -1).float()
    losses = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), weight=known, reduction="none")
    if positive_ratios is not None:
        ratio = torch.as_tensor(positive_ratios, device=logits.device, dtype=losses.dtype)
        positive = (targets > 0.5).float()
        losses = losses * torch.exp(positive * (1 - ratio) + (1 - positive) * ratio)
    return {"loss": losses.sum() / logits.shape[0]}


class CosFaceLoss(nn.Module):
    """CosFace (large-margin cosine) loss, s = 64, m = 0.4 as the official MarginCosineProductLoss. The class
    matrix is a parameter of the loss, not of the model: only training needs it."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.4):
        super().__init__()
        self.scale, self.margin = scale, margin
        self.classifier = nn.Parameter(torch.empty(num_classes, embedding_size))
        bound = 1.0 / math.sqrt(embedding_size)
        nn.init.uniform_(self.classifier, -bound, bound)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cosine = F.normalize(embeddings.float(), dim=1, eps=1e-8) @ F.normalize(self.classifier, dim=1, eps=1e-8).t()
        margins = F.one_hot(labels.long(), cosine.shape[1]).to(cosine) * self.margin
        return {"loss": F.cross_entropy(self.scale * (cosine - margins), labels.long())}


def teacher_embedding_loss(embeddings: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
    """Embedding distillation from any teacher model (a task's `embedding_loss: teacher`): `(B, D)` student and
    teacher embeddings of the same faces -> 1 - their cosine (the student takes the teacher's directions) plus the
    squared error between the two batches' cosine similarity matrices (the student keeps the teacher's distances
    between faces). Neither needs to be normalised."""
    student = F.normalize(embeddings.float(), dim=1, eps=1e-8)
    target = F.normalize(teacher.float(), dim=1, eps=1e-8)
    direction = (1 - (student * target).sum(dim=1)).mean()
    relation = (student @ student.t() - target @ target.t()).square().mean()
    return {"loss": direction + relation, "direction": direction, "relation": relation}


def task_loss(kind: str, output: torch.Tensor, labels: torch.Tensor, input_size: int) -> dict[str, torch.Tensor]:
    """The loss of one task kind; `embedding` here only with a teacher's embeddings as labels (the CosFace
    loss of identity labels has parameters: see [`FaceptorLoss`])."""
    if kind == "landmarks":
        return landmark_loss(output, labels, input_size)
    if kind == "parsing":
        return parsing_loss(output, labels)
    if kind == "age":
        return age_loss(output, labels)
    if kind == "classification":
        return expression_loss(output, labels)
    if kind == "multilabel":
        return attribute_loss(output, labels)
    if kind == "embedding" and labels.is_floating_point():
        return teacher_embedding_loss(output, labels)
    raise ValueError(f"No parameter-free loss for task kind {kind!r}.")


class FaceptorLoss(nn.Module):
    """All tasks' losses and their total, paper Eq. 8: sum_t alpha_t * L_t / sum_t alpha_t, each L_t the mean
    over its n_t samples. Identity tasks own a CosFace class matrix (`losses.<task>.classifier`), except those
    in `teacher_embedding_tasks`, whose labels are a teacher's embeddings (`teacher_embedding_loss`)."""

    def __init__(
        self,
        specs: Mapping[str, Mapping],
        weights: Mapping[str, float],
        identity_classes: Mapping[str, int] | None = None,
        embedding_size: int = 512,
        teacher_embedding_tasks: Sequence[str] = (),
    ):
        super().__init__()
        self.specs = {name: dict(spec) for name, spec in specs.items()}
        self.weights = {name: float(weights[name]) for name in self.specs}
        if any(weight < 0 for weight in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"Task weights must be non-negative and not all zero, got {self.weights}.")
        self.losses = nn.ModuleDict()
        for name, spec in self.specs.items():
            if spec["kind"] == "embedding" and name not in teacher_embedding_tasks:
                classes = (identity_classes or {}).get(name)
                if not classes:
                    raise ValueError(f"Identity task {name!r} needs its number of identities for the CosFace loss.")
                self.losses[name] = CosFaceLoss(embedding_size, classes)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the total loss and each task's loss (detached parts are the caller's to log)."""
        per_task = {}
        for name, output in outputs.items():
            spec = self.specs[name]
            if name in self.losses:
                per_task[name] = self.losses[name](output, labels[name])["loss"]
            else:
                per_task[name] = task_loss(spec["kind"], output, labels[name], spec["input_size"])["loss"]
        total_weight = sum(self.weights[name] for name in per_task)
        total = sum(self.weights[name] * loss for name, loss in per_task.items()) / total_weight
        return total, per_task
