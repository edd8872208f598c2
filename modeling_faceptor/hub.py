"""Faceptor on the Hugging Face Hub: a complete model repo (weights, remote code, image processor, the
`face-perception` pipeline and a card) written locally and uploaded in one commit; cards rendered from
`hub_cards/`; the `faceptor push` command.

A repo pushed from here loads in an environment with only torch and transformers installed:

    AutoModel.from_pretrained(repo, trust_remote_code=True)
    pipeline(model=repo, trust_remote_code=True)

This module does not travel as remote code (nothing in the model's files imports it), so it may use the whole
`faceptor` package.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import AutoModel
from transformers.dynamic_module_utils import custom_object_save

from .configuration_faceptor import TASK_KIND_CATEGORY
from .modeling_faceptor import FaceptorModel
from .processing.image_processing_faceptor import FaceptorImageProcessor
from .processing.pipeline_faceptor import FacePerceptionPipeline
from .task_presets import OFFICIAL_TASKS
from .task_query_sets import KIND_PIPELINE_TAG

logger = logging.getLogger(__name__)

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

# ------------------------------------------------------------------------------------ training data

# The dataset each official task was trained on, and a summary of its terms (the dataset's own terms govern).
TASK_DATASETS = {
    "recog_ms1mv3": "MS1MV3",
    "age_morph2": "MORPH II",
    "age_utkface": "UTKFace",
    "biattr_celeba": "CelebA",
    "affect_affectnet": "AffectNet",
    "affect_rafdb": "RAF-DB",
    "affect_ferplus": "FERPlus",
    "parsing_celebam": "CelebAMask-HQ",
    "parsing_lapa": "LaPa",
    "align_300w": "300W",
    "align_cofw": "COFW",
    "align_wflw": "WFLW",
    "align_aflw": "AFLW-19",
}
DATASET_TERMS = {
    "MS1MV3": "derived from MS-Celeb-1M, which Microsoft withdrew in 2019; research use only",
    "MORPH II": "academic licence from UNC Wilmington (a commercial licence is sold separately)",
    "UTKFace": "non-commercial research only",
    "CelebA": "non-commercial research only",
    "AffectNet": "academic research only, under a licence agreement",
    "RAF-DB": "non-commercial research only, under a licence agreement",
    "FERPlus": "labels under MIT (Microsoft); the FER2013 images have their own research terms",
    "CelebAMask-HQ": "non-commercial research and education only",
    "LaPa": "research use; see the dataset's terms",
    "300W": "non-commercial research only (iBUG)",
    "COFW": "research use; see the dataset's terms",
    "WFLW": "built on WIDER FACE; non-commercial research only",
    "AFLW-19": "AFLW: research use only, after registration",
}

# ------------------------------------------------------------------------------------- paper results

_NME = ("nme", "NME inter-ocular (%)")
_NME_DIAG = ("nme", "NME diagonal (%)")
_F1 = ("f1", "F1-mean (%)")
_MAE = ("mae", "MAE (years)")
_ACC = ("accuracy", "Accuracy (%)")
_MACC = ("accuracy", "Mean accuracy over 40 attributes (%)")
_VERIFICATION = ("LFW", "CFP-FP", "AgeDB-30", "CALFW", "CPLFW")


def _results(rows: list[tuple]) -> list[dict]:
    return [
        {"task": task, "dataset": dataset, "split": split, "metric": metric[0], "metric_name": metric[1], "value": v}
        for task, dataset, split, metric, v in rows
    ]


# The paper's numbers for the authors' released weights (two-stage Layer-Attention): Faceptor-Base from
# Tables 3 and 4, Faceptor-Full from Tables 5, 6 and 7. Faceptor-Base reports no AffectNet number.
PAPER_RESULTS = {
    "faceptor-base": {
        "label": "Faceptor-Base",
        "source": "Tables 3 and 4",
        "results": _results(
            [
                ("align_300w", "300W", "common", _NME, 2.60),
                ("align_300w", "300W", "challenging", _NME, 4.60),
                ("align_300w", "300W", "full", _NME, 3.00),
                ("parsing_celebam", "CelebAMask-HQ", "test", _F1, 88.22),
                ("age_morph2", "MORPH II", "test", _MAE, 1.869),
                ("affect_rafdb", "RAF-DB", "test", _ACC, 90.38),
                ("biattr_celeba", "CelebA", "test", _MACC, 91.43),
                *[
                    ("recog_ms1mv3", name, "verification", _ACC, value)
                    for name, value in zip(_VERIFICATION, (99.52, 95.86, 93.33, 94.70, 92.12), strict=True)
                ],
            ]
        ),
    },
    "faceptor-full": {
        "label": "Faceptor-Full",
        "source": "Tables 5, 6 and 7",
        "results": _results(
            [
                ("align_wflw", "WFLW", "full", _NME, 4.03),
                ("align_300w", "300W", "common", _NME, 2.52),
                ("align_300w", "300W", "challenging", _NME, 4.25),
                ("align_300w", "300W", "full", _NME, 2.86),
                ("align_cofw", "COFW", "test", _NME, 3.01),
                ("align_aflw", "AFLW-19", "full", _NME_DIAG, 0.95),
                ("parsing_celebam", "CelebAMask-HQ", "test", _F1, 88.2),
                ("parsing_lapa", "LaPa", "test", _F1, 91.5),
                ("age_morph2", "MORPH II", "test", _MAE, 1.96),
                ("age_utkface", "UTKFace", "test", _MAE, 4.10),
                ("affect_rafdb", "RAF-DB", "test", _ACC, 91.26),
                ("affect_ferplus", "FERPlus", "test", _ACC, 90.40),
                ("biattr_celeba", "CelebA", "test", _MACC, 91.39),
                *[
                    ("recog_ms1mv3", name, "verification", _ACC, value)
                    for name, value in zip(_VERIFICATION, (99.40, 96.34, 93.65, 94.75, 92.27), strict=True)
                ],
            ]
        ),
    },
}

# A slug per dataset: the `type` (id) of model-index datasets and the card's `datasets` metadata.
DATASET_IDS = {name: name.lower().replace(" ", "-") for name in DATASET_TERMS}
DATASET_IDS.update({"MORPH II": "morph-ii", "AFLW-19": "aflw-19"})
for _name in ("LFW", "CFP-FP", "AgeDB-30", "CALFW", "CPLFW"):
    DATASET_IDS[_name] = _name.lower()

# What a task of each kind does: the paper's task names (its official tasks) and a generic one for new tasks.
KIND_TASK_NAME = {
    "landmarks": "Facial landmark localization",
    "parsing": "Face parsing",
    "age": "Age estimation",
    "classification": "Expression recognition",
    "multilabel": "Binary attribute classification",
    "embedding": "Face verification",
}
KIND_DESCRIPTION = {
    "landmarks": "facial landmarks (one heatmap per query)",
    "parsing": "face parsing (one mask per class query)",
    "age": "age estimation (one query per age)",
    "classification": "single-label classification (one query per class)",
    "multilabel": "multi-label attributes (one query per attribute)",
    "embedding": "identity embedding",
}

# ------------------------------------------------------------------------------------------- cards


def template_path(name: str) -> Path:
    """A card template of `hub_cards/`: beside the package when installed (`faceptor/hub_cards`), or at the root
    of the source tree."""
    here = Path(__file__).resolve().parent
    for folder in (here / "hub_cards", here.parent / "hub_cards"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"Card template {name!r} not found beside {here} or in {here.parent / 'hub_cards'}.")


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
            "category": TASK_KIND_CATEGORY[spec["kind"]],
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
                task_type=KIND_PIPELINE_TAG[kind],
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
        pipeline_tag=KIND_PIPELINE_TAG[task["kind"]],
        tags=["faceptor", "faceptor-task-query-set", task["kind"]],
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path(TASK_SET_CARD_TEMPLATE)),
        task=task,
        task_description=KIND_DESCRIPTION[task["kind"]],
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


# ------------------------------------------------------------------------------------------ folders


def custom_pipeline_entry() -> dict:
    """The config's `custom_pipelines` entry of the `face-perception` pipeline, as `Pipeline.save_pretrained`
    writes it."""
    entry = {}
    for task, info in FacePerceptionPipeline._registered_impl.items():
        info = dict(info)
        info["impl"] = f"{info['impl'].__module__.split('.')[-1]}.{info['impl'].__name__}"
        info["pt"] = tuple(model_class.__name__ for model_class in info["pt"])
        entry[task] = info
    return entry


def _default_image_processor(model: FaceptorModel) -> FaceptorImageProcessor:
    """The image processor saved with the model (its folder or Hub repo), else the defaults."""
    source = getattr(model, "name_or_path", "") or ""
    if source:
        try:
            return FaceptorImageProcessor.from_pretrained(source)
        except (OSError, ValueError):
            logger.info("No image processor with %s; pushing the default one.", source)
    return FaceptorImageProcessor()


def write_model_folder(
    model: FaceptorModel,
    folder: str | os.PathLike,
    image_processor: FaceptorImageProcessor | None = None,
    repo_id: str | None = None,
    paper_results: str | None = None,
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
    max_shard_size: int | str | None = "50GB",
) -> list[str]:
    """Writes everything a Hub repo of `model` needs into `folder`: `save_pretrained` (config with `auto_map`,
    safetensors, the model's remote code), the image processor (`image_processor`, else the one saved with the
    model, else the defaults) with its code, the `face-perception` pipeline's code with the config's
    `custom_pipelines` entry, and README.md. The model's own config is left as it was. Returns the files."""
    if paper_results is not None and paper_results not in PAPER_RESULTS:
        raise ValueError(f"Unknown paper_results {paper_results!r}; expected one of {sorted(PAPER_RESULTS)}.")
    os.makedirs(folder, exist_ok=True)
    config = model.config
    had_entry, previous = hasattr(config, "custom_pipelines"), getattr(config, "custom_pipelines", None)
    config.custom_pipelines = custom_pipeline_entry()
    try:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    finally:
        if had_entry:
            config.custom_pipelines = previous
        else:
            del config.custom_pipelines
    custom_object_save(FacePerceptionPipeline, folder)
    (image_processor or _default_image_processor(model)).save_pretrained(folder)
    card = render_model_card(model, repo_id=repo_id, paper_results=paper_results, tags=tags, datasets=datasets)
    Path(folder, "README.md").write_text(card, encoding="utf-8")
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*") if path.is_file())


def upload_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
):
    """Uploads a folder written by [`write_model_folder`] to `repo_id` (created if needed) in one commit, which
    also deletes the weight files of an earlier push that this one does not have. Returns the commit info."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
        delete_patterns=STALE_WEIGHT_PATTERNS,
    )
    logger.info("Pushed %s to %s (%s).", folder, repo_id, info.oid)
    return info


def push_model(
    model: FaceptorModel,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    image_processor: FaceptorImageProcessor | None = None,
    paper_results: str | None = None,
    datasets: list[str] | None = None,
):
    """`model.push_to_hub(repo_id)`: writes the complete repo ([`write_model_folder`]) into a temporary folder,
    then uploads it in one commit. A failed upload changes nothing locally and can simply be retried."""
    with tempfile.TemporaryDirectory(prefix="faceptor-push-") as folder:
        write_model_folder(
            model,
            folder,
            image_processor=image_processor,
            repo_id=repo_id,
            paper_results=paper_results,
            tags=tags,
            datasets=datasets,
            max_shard_size=max_shard_size,
        )
        return upload_model_folder(
            folder,
            repo_id,
            token=token,
            private=private,
            commit_message=commit_message,
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


def push_model_folder(
    model_dir: str | os.PathLike,
    repo_id: str,
    token: str | bool | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    paper_results: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
):
    """`faceptor push MODEL_DIR REPO`: loads the model folder (a `save_pretrained` folder, with or without an
    image processor) and pushes it with [`push_model`]: config, safetensors, remote code, image processor,
    pipeline code and card, in one commit. `model_dir` is only read, never written; training files in it
    (`training_state.safetensors`, `training_args.bin`, `task_query_sets/`) are not uploaded. Returns the
    commit info."""
    model_dir = os.fspath(model_dir)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"{model_dir}: not a model folder (no config.json)")
    model = AutoModel.from_pretrained(model_dir, dtype="auto").eval()  # Faceptor or Naive Faceptor
    image_processor = None
    if os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
        image_processor = FaceptorImageProcessor.from_pretrained(model_dir)
    return push_model(
        model,
        repo_id,
        commit_message=commit_message,
        private=private,
        token=token,
        revision=revision,
        create_pr=create_pr,
        image_processor=image_processor,
        paper_results=paper_results,
    )


# ---------------------------------------------------------------------------------------------- CLI


def command_push(args: argparse.Namespace) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    from .cli import CommandError

    if not os.path.isdir(args.model_dir):
        raise CommandError(f"{args.model_dir}: no such model folder")
    try:
        info = push_model_folder(
            args.model_dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            commit_message=args.commit_message,
            paper_results=args.paper_results,
            revision=args.revision,
        )
    except (ValueError, OSError, HfHubHTTPError) as error:
        raise CommandError(f"push to {args.repo_id} failed: {str(error).splitlines()[0]}") from None
    print(f"pushed {args.model_dir} to {args.repo_id}: {info.commit_url}")


def add_push_command(subparsers) -> argparse.ArgumentParser:
    """Adds `faceptor push MODEL_DIR REPO` to the CLI's subcommands."""
    push = subparsers.add_parser(
        "push", help="upload a model folder to the Hub with its remote code, image processor, pipeline and card"
    )
    push.add_argument("model_dir", help="model folder (save_pretrained or `faceptor convert` output)")
    push.add_argument("repo_id", help="Hub repo, e.g. user/faceptor-base (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument(
        "--token", help="Hub token (default: HF_TOKEN or the stored login; prefer those, a flag shows in `ps`)"
    )
    push.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE, help="commit message")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument(
        "--paper-results",
        choices=sorted(PAPER_RESULTS),
        help="the weights are the authors' checkpoint of this model: put the paper's numbers in the card",
    )
    push.set_defaults(handler=command_push)
    return push


__all__ = [
    "HUB_PIPELINE_TAGS",
    "PAPER_RESULTS",
    "add_push_command",
    "push_model",
    "push_model_folder",
    "render_model_card",
    "render_task_set_card",
    "write_model_folder",
]
