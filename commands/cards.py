"""Model cards and query-set cards, rendered from the templates and tables of `hub_cards/`."""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import hub_cards
from ..modeling_faceptor import FaceptorModel
from ..task_kinds import TASK_KINDS
from ..task_presets import OFFICIAL_TASKS

PIPELINE_TASK = "face-perception"
# The model's Hub pipeline tag: the custom task name is not one; its closest Hub task is feature extraction.
MODEL_PIPELINE_TAG = "image-feature-extraction"
# The Hub pipeline tags (huggingface.js tasks) the cards of this package use.
HUB_PIPELINE_TAGS = frozenset(
    {"image-feature-extraction", "image-segmentation", "image-classification", "keypoint-detection"}
)
MODEL_CARD_TEMPLATE = "model_card.md"
TASK_SET_CARD_TEMPLATE = "task_query_set.md"
# Weight files of an earlier push that a new push replaces (a sharded model becoming unsharded and vice versa).
STALE_WEIGHT_PATTERNS = ["model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json"]
DEFAULT_COMMIT_MESSAGE = "Upload Faceptor model"
PAPER = "Qin et al., Faceptor: A Generalist Model for Face Perception, ECCV 2024"
PAPER_URL = "https://arxiv.org/abs/2403.09500"
CODE_URL = "https://github.com/lxq1000/Faceptor"

# ------------------------------------------------------------------------------------------- tables


def _table(name: str) -> dict:
    return json.loads(resources.files(hub_cards).joinpath(name).read_text(encoding="utf-8"))


# Per dataset: its slug (model-index `type` and card `datasets`), the official tasks trained on it, its terms.
TRAINING_DATASETS: dict[str, dict] = _table("training_datasets.json")
TASK_DATASETS = {task: name for name, info in TRAINING_DATASETS.items() for task in info["tasks"]}
DATASET_TERMS = {name: info["terms"] for name, info in TRAINING_DATASETS.items() if info["terms"]}
DATASET_IDS = {name: info["id"] for name, info in TRAINING_DATASETS.items()}
# The paper's numbers for the authors' released weights, per preset: label, source tables and result rows.
PAPER_RESULTS: dict[str, dict] = _table("paper_results.json")

# The paper's task names of its official tasks' kinds, for its result rows.
KIND_TASK_NAME = {
    "landmarks": "Facial landmark localization",
    "parsing": "Face parsing",
    "age": "Age estimation",
    "classification": "Expression recognition",
    "multilabel": "Binary attribute classification",
    "embedding": "Face verification",
}

# ------------------------------------------------------------------------------------------- cards


def template_path(name: str):
    """A card template of `hub_cards/` (`faceptor.hub_cards` when installed)."""
    path = resources.files(hub_cards).joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(f"Card template {name!r} not found in {resources.files(hub_cards)}.")
    return path


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _labels_preview(labels: list[str] | None, limit: int = 8) -> str:
    if not labels:
        return ""
    shown = ", ".join(labels[:limit])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > limit else "")


def _task_rows(specs: list[dict]) -> list[dict]:
    return [
        {
            "name": spec["name"],
            "kind": spec["kind"],
            "category": TASK_KINDS[spec["kind"]].category,
            "num_queries": spec["num_queries"],
            "input_size": spec["input_size"],
            "labels": _cell(_labels_preview(spec.get("labels"))),
            "dataset": TASK_DATASETS.get(spec["name"], ""),
        }
        for spec in specs
    ]


def paper_eval_results(task_names: list[str], paper_results: str) -> list[EvalResult]:
    """The paper's numbers for `paper_results` ("faceptor-base" / "faceptor-full") of the tasks the model has."""
    if paper_results not in PAPER_RESULTS:
        raise ValueError(f"Unknown paper_results {paper_results!r}; expected one of {sorted(PAPER_RESULTS)}.")
    entry = PAPER_RESULTS[paper_results]
    kinds = {name: spec["kind"] for name, spec in OFFICIAL_TASKS.items()}
    results = []
    for row in entry["results"]:
        if row["task"] not in task_names:
            continue
        kind = kinds[row["task"]]
        results.append(
            EvalResult(
                task_type=TASK_KINDS[kind].pipeline_tag,
                task_name=f"{KIND_TASK_NAME[kind]} ({row['task']})",
                dataset_type=DATASET_IDS[row["dataset"]],
                dataset_name=row["dataset"],
                dataset_split=row["split"],
                metric_type=row["metric"],
                metric_name=row["metric_name"],
                metric_value=row["value"],
                source_name=f"{PAPER}, {entry['source']}",
                source_url=PAPER_URL,
            )
        )
    return results


def render_model_card(
    model: FaceptorModel,
    repo_id: str | None = None,
    paper_results: str | None = None,
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
) -> str:
    """The model card (README.md) of `model`, from `hub_cards/model_card.md`: metadata (`library_name`,
    `pipeline_tag`, `license`, `datasets`, `model-index` with the paper's numbers when `paper_results` names the
    authors' weights), tasks, usage, the base fingerprint for query sets and the training data's licences."""
    specs = [dict(spec) for spec in model.config.tasks]
    names = [spec["name"] for spec in specs]
    known = list(dict.fromkeys(TASK_DATASETS[name] for name in names if name in TASK_DATASETS))
    if datasets is None and paper_results is not None:
        datasets = [DATASET_IDS[name] for name in known]
    eval_results = paper_eval_results(names, paper_results) if paper_results else None
    label = PAPER_RESULTS[paper_results]["label"] if paper_results else None
    model_name = label or (repo_id.split("/")[-1] if repo_id else "Faceptor")
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=MODEL_PIPELINE_TAG,
        license="mit",
        datasets=datasets or None,
        tags=list(dict.fromkeys(["faceptor", PIPELINE_TASK, *(tags or [])])),
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    results = [
        {
            "task": result.task_name,
            "dataset": result.dataset_name,
            "split": result.dataset_split,
            "metric": result.metric_name,
            "value": result.metric_value,
        }
        for result in eval_results or []
    ]
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path(MODEL_CARD_TEMPLATE)),
        title=model_name,
        repo_id=repo_id or "PATH_OR_REPO",
        paper=PAPER,
        paper_url=PAPER_URL,
        code_url=CODE_URL,
        paper_label=label,
        paper_source=PAPER_RESULTS[paper_results]["source"] if paper_results else None,
        tasks=_task_rows(specs),
        results=results,
        parameters=f"{model.num_parameters() / 1e6:.1f}M",
        encoder=f"{model.config.num_hidden_layers} layers of width {model.config.hidden_size}",
        # Naive Faceptor has neither Layer-Attention nor query sets.
        feature_layers=getattr(model.config, "decoder_feature_layers", None),
        layer_embedding_scope=getattr(model.config, "layer_embedding_scope", None),
        fingerprint=model.base_fingerprint() if hasattr(model, "base_fingerprint") else None,
        example_task=next((spec["name"] for spec in specs if spec["kind"] != "embedding"), names[0]),
        training_data=[{"name": name, "terms": DATASET_TERMS[name]} for name in known],
    )
    return str(card)


def render_task_set_card(description: dict, license: str | None = None, datasets: list[str] | None = None) -> str:
    """The card (README.md) of a query set from its `task_query_set.json` description, from
    `hub_cards/task_query_set.md`: base model and fingerprint, task, labels and how to attach it."""
    task = description["task"]
    base_model = description.get("base_model")
    card_data = ModelCardData(
        base_model=base_model if base_model and not os.path.isdir(base_model) else None,
        license=license,
        datasets=datasets or None,
        pipeline_tag=TASK_KINDS[task["kind"]].pipeline_tag,
        tags=["faceptor", "faceptor-task-query-set", task["kind"]],
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path(TASK_SET_CARD_TEMPLATE)),
        task=task,
        task_description=TASK_KINDS[task["kind"]].description,
        labels=[_cell(label) for label in task.get("labels") or []],
        base=base_model,
        fingerprint=description["base_fingerprint"],
        algorithm=description["fingerprint_algorithm"],
        compatibility=description["compatibility"],
        tensors=description["tensors"],
        parameters=sum(_prod(shape) for shape in description["tensors"].values()),
        paper=PAPER,
        paper_url=PAPER_URL,
    )
    return str(card)


def _prod(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total
