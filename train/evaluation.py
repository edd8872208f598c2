"""Scoring a model on a task's evaluation data with the paper's protocols (`faceptor evaluate`), and pictures
of the worst cases."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .metrics.tasks import metric_for_task, prepare_inputs, preprocess_logits_for_task


def _collate(samples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([sample["pixel_values"] for sample in samples]),
        "labels": torch.stack([torch.as_tensor(sample["labels"]) for sample in samples]),
    }


def per_sample_errors(kind: str, predictions: np.ndarray, references: np.ndarray) -> np.ndarray:
    """A badness per sample, to pick the worst cases: mean point error, pixel error rate, age error, wrong
    class, share of wrong attributes."""
    if kind == "landmarks":
        return np.linalg.norm(predictions - references, axis=-1).mean(axis=-1)
    if kind == "parsing":
        return (predictions != references).reshape(len(references), -1).mean(axis=1)
    if kind == "age":
        return np.abs(predictions - references)
    if kind == "classification":
        return (predictions != references).astype(np.float64)
    if kind == "multilabel":
        return ((predictions != references) & (references >= 0)).mean(axis=1)
    raise ValueError(f"No per-sample error for task kind {kind!r}.")


@torch.no_grad()
def evaluate_task(
    model,
    task: str,
    dataset: Dataset,
    dataset_name: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Runs task `task` of `model` over `dataset` (samples `{"pixel_values", "labels"}`, e.g. a
    `TaskDataset` with evaluation transforms) and scores it with the task kind's metric (`dataset_name`
    picks the landmark protocol or parsing classes). Predictions and labels are compared in crop
    coordinates. Returns `(scores, predictions, references, per-sample errors)`."""
    spec = model.config.task_specs[task]
    if spec.kind == "embedding":
        raise ValueError("Identity tasks are scored on verification pairs: use `evaluate_verification`.")
    device = next(model.parameters()).device
    reduce = preprocess_logits_for_task(spec.kind, spec.input_size)
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    subset = torch.utils.data.Subset(dataset, list(indices))
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=_collate)
    predictions, references = [], []
    model.eval()
    for batch in tqdm(loader, desc=f"evaluate {task}", unit="batch", disable=not progress):
        outputs = model(batch["pixel_values"].to(device), tasks=[task]).task_outputs[task]
        predictions.append(reduce(outputs, batch["labels"].to(device)).cpu())
        references.append(batch["labels"])
    predictions_array, references_array = prepare_inputs(
        spec.kind, torch.cat(predictions), torch.cat(references), spec.input_size
    )
    metric = metric_for_task(spec.kind, dataset_name or task)
    extra = {}
    if getattr(metric, "needs_boxes", False):
        crop = [-0.5, -0.5, spec.input_size - 0.5, spec.input_size - 0.5]
        extra["boxes"] = np.tile(np.asarray(crop, dtype=np.float64), (len(references_array), 1))
    scores = metric.compute(predictions=predictions_array, references=references_array, **extra)
    errors = per_sample_errors(spec.kind, predictions_array, references_array)
    return scores, predictions_array, references_array, errors


@torch.no_grad()
def evaluate_verification(
    model, task: str, pairs, transform: Callable[[dict], dict], batch_size: int = 16, progress: bool = True
) -> dict:
    """1:1 verification accuracy (10-fold best threshold) of identity task `task` on a verification set
    (rows `image1`, `image2`, `is_same`), embeddings L2-normalised."""
    device = next(model.parameters()).device
    first, second, same = [], [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc=f"verify {task}", disable=not progress):
        rows = pairs[start : start + batch_size]
        for images, store in ((rows["image1"], first), (rows["image2"], second)):
            pixels = torch.stack([transform({"image": image, "label": 0})["pixel_values"] for image in images])
            store.append(model(pixels.to(device), tasks=[task]).task_outputs[task].float().cpu())
        same += list(rows["is_same"])
    embeddings = torch.stack([torch.cat(first), torch.cat(second)], dim=1).numpy()
    return metric_for_task("embedding").compute(predictions=embeddings, references=same)


def save_worst_cases(
    kind: str,
    dataset: Dataset,
    predictions: np.ndarray,
    references: np.ndarray,
    errors: np.ndarray,
    folder: str,
    count: int = 6,
    mean: tuple = (0.5, 0.5, 0.5),
    std: tuple = (0.5, 0.5, 0.5),
    labels: list[str] | None = None,
) -> list[str]:
    """PNG pictures of the `count` worst samples: the crop with prediction (red) and truth (green) points,
    the predicted and true label maps side by side, or the predicted and true values written on it."""
    from PIL import Image, ImageDraw

    from ..visualization.drawing import class_colours

    os.makedirs(folder, exist_ok=True)
    written = []
    for rank, index in enumerate(np.argsort(-errors)[:count]):
        pixels = dataset[int(index)]["pixel_values"]
        image = (pixels * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
        picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        if kind == "landmarks":
            for points, colour in ((references[index], (0, 255, 0)), (predictions[index], (255, 0, 0))):
                for x, y in points:
                    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        elif kind == "parsing":
            colours = class_colours(int(max(predictions[index].max(), references[index].max())) + 1)
            side = [Image.fromarray(colours[labels_]) for labels_ in (predictions[index], references[index])]
            framed = Image.new("RGB", (picture.width * 3, picture.height))
            for position, part in enumerate([picture, *side]):
                framed.paste(part.resize(picture.size), (position * picture.width, 0))
            picture = framed
        else:
            predicted, true = predictions[index], references[index]
            if kind == "classification" and labels:
                predicted, true = labels[int(predicted)], labels[int(true)]
            if kind == "multilabel":
                predicted, true = f"{int((predicted != true).sum())} wrong", ""
            draw.text((2, 2), f"pred {predicted}\ntrue {true}", fill=(255, 255, 0))
        path = os.path.join(folder, f"worst_{rank:02d}_sample_{int(index)}.png")
        picture.save(path)
        written.append(path)
    return written
