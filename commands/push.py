"""`faceptor push` and `model.push_to_hub`: a complete model repo (weights, the remote code, the image
processor, the `face-perception` pipeline and a card) written locally, then uploaded in one commit.

A repo pushed from here loads in an environment with only torch and transformers installed:

    AutoModel.from_pretrained(repo, trust_remote_code=True)
    pipeline(model=repo, trust_remote_code=True)
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, constants
from transformers.dynamic_module_utils import custom_object_save

from ..modeling_faceptor import FaceptorModel
from ..processing.image_processing_faceptor import FaceptorImageProcessor
from ..processing.pipeline_faceptor import FacePerceptionPipeline
from .arguments import DEFAULT_COMMIT_MESSAGE, add_push_command
from .cards import PAPER_RESULTS, render_model_card
from .errors import CommandError
from .hub_client import HUB_NETWORK_ERROR, describe_hub_failure, hub_timeout
from .model_loading import load_image_processor, load_model_folder, no_progress_bars
from .space import check_space_name, push_space_of_command

logger = logging.getLogger(__name__)

PACKAGE = __package__.rpartition(".")[0]  # "faceptor"
# What travels to the Hub as remote code is two folders, whole: the model's (modeling_faceptor/, installed as
# `faceptor`) and the image processor's and pipeline's (processing/, `faceptor.processing`), flattened into the
# model's folder. They import only each other, relatively, besides torch, transformers, huggingface_hub,
# safetensors, numpy and PIL; tests/test_package_layout.py checks both.
REMOTE_CODE_PACKAGES = (PACKAGE, f"{PACKAGE}.processing")


def _remote_code_modules() -> tuple[str, ...]:
    modules = []
    for package in REMOTE_CODE_PACKAGES:
        folder = Path(importlib.util.find_spec(package).origin).parent
        prefix = package.removeprefix(PACKAGE).lstrip(".")
        for path in sorted(folder.glob("*.py")):
            if path.stem != "__init__":
                modules.append(f"{prefix}.{path.stem}" if prefix else path.stem)
    return tuple(modules)


REMOTE_CODE_MODULES = _remote_code_modules()  # module names under `faceptor`, e.g. "processing.decoding"
# Weight files of an earlier push that a new push replaces (a sharded model becoming unsharded and vice versa).
STALE_WEIGHT_PATTERNS = ["model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json"]


def remote_code_files() -> dict[str, Path]:
    """`{file name in the pushed folder: source file}` of every module in `REMOTE_CODE_MODULES`."""
    files = {}
    for module in REMOTE_CODE_MODULES:
        origin = Path(importlib.util.find_spec(f"{PACKAGE}.{module}").origin)
        files[origin.name] = origin
    return files


def write_remote_code(folder: str | os.PathLike) -> list[str]:
    """Copies the remote code into `folder` and checks that it is all the Python code there: transformers
    copies each saved class's file and what it imports relatively, which must be a part of the list."""
    files = remote_code_files()
    for name, source in files.items():
        shutil.copyfile(source, Path(folder, name))
    extra = sorted(path.name for path in Path(folder).glob("*.py") if path.name not in files)
    if extra:
        raise RuntimeError(f"{extra} were saved as remote code but are not in REMOTE_CODE_MODULES.")
    return sorted(files)


# ------------------------------------------------------------------------------------------ folders


def custom_pipeline_entry() -> dict:
    """The config's `custom_pipelines` entry of the `face-perception` pipeline, as `Pipeline.save_pretrained`
    writes it."""
    entry = {}
    for task, info in FacePerceptionPipeline.portable_registration().items():
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
    write_remote_code(folder)
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
    timeout: float | None = None,
):
    """Uploads a folder written by [`write_model_folder`] to `repo_id` (created if needed) in one commit, which
    also deletes the weight files of an earlier push that this one does not have; `timeout` seconds per request
    (default `HF_HUB_DOWNLOAD_TIMEOUT`). Returns the commit info."""
    api = HfApi(token=token)
    with hub_timeout(timeout):
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
    timeout: float | None = None,
):
    """`model.push_to_hub(repo_id)`: writes the complete repo ([`write_model_folder`]) into a temporary folder,
    then uploads it in one commit (`timeout` seconds per request). A failed upload changes nothing locally and
    can simply be retried."""
    with tempfile.TemporaryDirectory(prefix="faceptor-push-") as folder:
        with no_progress_bars():  # a local write of seconds; the upload keeps its bar
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
            timeout=timeout,
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
    timeout: float | None = None,
):
    """`faceptor push MODEL_DIR REPO`: loads the model folder (a `save_pretrained` folder, with or without an
    image processor) and pushes it with [`push_model`]: config, safetensors, remote code, image processor,
    pipeline code and card, in one commit. `model_dir` is only read, never written; training files in it
    (`training_state.safetensors`, `training_args.bin`, `task_query_sets/`) are not uploaded. Returns the
    commit info. A folder that does not load (see [`load_model_folder`]) is a `CommandError`."""
    model_dir = os.fspath(model_dir)
    model = load_model_folder(model_dir, dtype="auto")  # Faceptor or Naive Faceptor
    image_processor = None
    if os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
        image_processor = load_image_processor(model_dir)  # validated: a broken one is refused, not pushed
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
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------- CLI


def command_push(args: argparse.Namespace) -> None:
    if args.timeout is not None and not args.timeout > 0:
        raise CommandError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    timeout = args.timeout or constants.HF_HUB_DOWNLOAD_TIMEOUT
    check_space_name(args)  # before the model repo is created
    try:
        info = push_model_folder(
            args.model_dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            commit_message=args.commit_message,
            paper_results=args.paper_results,
            revision=args.revision,
            timeout=timeout,
        )
    except (ValueError, OSError, HUB_NETWORK_ERROR) as error:
        raise CommandError(f"push to {args.repo_id} failed: {describe_hub_failure(error, timeout)}") from None
    print(f"pushed {args.model_dir} to {args.repo_id}: {info.commit_url}")
    push_space_of_command(args)  # --space USER/NAME: the demo Space of the pushed repo


__all__ = [
    "REMOTE_CODE_MODULES",
    "add_push_command",
    "push_model",
    "push_model_folder",
    "write_model_folder",
    "write_remote_code",
]
