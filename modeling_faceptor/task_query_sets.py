"""Task query sets: a task's own parameters saved, shared on the Hub and attached to a compatible base model.

A query set is a folder (or a Hub repo) of three files:

- `task_query_set.safetensors`: the task's own tensors under their model names (its queries, their position
  embeddings, its layer-aware embeddings with `layer_embedding_scope="per_task"`, and any other parameter kept
  per task, e.g. task-specific level projections);
- `task_query_set.json`: the task spec, the fingerprint of the base weights the set was trained against and
  the decoder geometry it needs;
- `README.md`: a card (base model, task, labels, how to attach).

The base fingerprint ([`FaceptorTaskSetMixin.base_fingerprint`]) is a SHA-256 over the shared parameters, so
a set is only attached to the weights its queries were trained with.

This file travels to the Hub as remote code: it imports only torch, safetensors, huggingface_hub and files of
this folder (relatively).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
from typing import Any

import torch
from torch import nn

from .task_kinds import TASK_KINDS

logger = logging.getLogger(__name__)

TASK_SET_WEIGHTS_FILE = "task_query_set.safetensors"
TASK_SET_SPEC_FILE = "task_query_set.json"
TASK_SET_FORMAT = "faceptor-task-query-set"
TASK_SET_FORMAT_VERSION = 1
FINGERPRINT_ALGORITHM = "faceptor-base-sha256-v1"
# Buffers that count batches: they never change an output, and training bumps them on frozen layers too.
FINGERPRINT_SKIPPED_SUFFIXES = ("num_batches_tracked",)
# The decoder geometry a query set is shaped by; it must match the base's exactly.
COMPATIBILITY_FIELDS = ("decoder_hidden_size", "layer_embedding_scope", "decoder_feature_layers")


def _hub_integration() -> Any:
    """What only the installed `faceptor` package can do, found when first used: cards rendered from hub_cards/
    and a model repo with the image processor and pipeline (`faceptor.commands.hub_integration`, with
    `render_task_set_card` and `push_model`). None as remote code without the package: plain query-set cards and
    transformers' own push_to_hub."""
    tools = f"{__package__}.commands.hub_integration"  # by name: this file travels, the tools do not
    try:
        return importlib.import_module(tools)
    except ImportError:
        return None


def _tensor_digest(tensor: torch.Tensor) -> tuple[str, bytes]:
    """`(dtype tag, SHA-256 of the values)`: floating tensors as little-endian float32 (exact for float16 and
    bfloat16 too), integer and boolean tensors as their own little-endian bytes."""
    value = tensor.detach().to("cpu")
    if value.is_floating_point():
        value = value.to(torch.float32)
    elif value.dtype == torch.bool:
        value = value.to(torch.uint8)
    array = value.contiguous().numpy().reshape(-1)
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return str(array.dtype.name), hashlib.sha256(array.view("u1").data).digest()


class FaceptorTaskSetMixin:
    """Methods of [`FaceptorModel`] for task query sets (`save_task`, `push_task_to_hub`, `load_task`), the base
    fingerprint they are checked with, and a `push_to_hub` that uploads a complete, remote-code model repo."""

    # ---------------------------------------------------------------------------------------- ownership

    def _task_owned_keys(self) -> dict[str, list[str]]:
        """State-dict keys of each task's own tensors: everything stored under a task's name in a
        `ParameterDict`/`ModuleDict` (queries, query positions, per-task layer embeddings, and any future
        per-task module such as a task-specific level projection)."""
        names = set(self.config.task_names)
        owned: dict[str, list[str]] = {name: [] for name in self.config.task_names}
        state_keys = list(self.state_dict().keys())
        for module_name, module in self.named_modules():
            if not isinstance(module, (nn.ParameterDict, nn.ModuleDict)):
                continue
            for key in module.keys():
                if key not in names:
                    continue
                prefix = f"{module_name}.{key}" if module_name else key
                owned[key].extend(k for k in state_keys if k == prefix or k.startswith(prefix + "."))
        return {name: sorted(set(keys)) for name, keys in owned.items()}

    def task_set_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Every tensor of task `name`'s query set: [`task_state_dict`] (queries, query positions, per-task layer
        embeddings) plus any other per-task tensor, under their model names."""
        tensors = dict(self.task_state_dict(name))
        state = self.state_dict()
        for key in self._task_owned_keys().get(name, []):
            tensors.setdefault(key, state[key].detach())
        return tensors

    def base_fingerprint(self) -> str:
        """SHA-256 (hex) identifying the shared weights: every state-dict tensor that belongs to no task, in
        sorted name order, each as the line `name<TAB>dtype<TAB>shape` followed by the SHA-256 of its values
        (floating tensors converted to little-endian float32, which is exact, integer tensors as little-endian
        bytes), after the algorithm name `faceptor-base-sha256-v1`. BatchNorm's `num_batches_tracked` counters
        are left out (they never change an output). The same weights give the same fingerprint on any machine,
        whether built in memory or loaded from safetensors; adding, changing or removing a task's query set does
        not change it, any change of a shared value does."""
        owned = {key for keys in self._task_owned_keys().values() for key in keys}
        digest = hashlib.sha256(FINGERPRINT_ALGORITHM.encode() + b"\n")
        for key, tensor in sorted(self.state_dict().items()):
            if key in owned or key.endswith(FINGERPRINT_SKIPPED_SUFFIXES):
                continue
            dtype, values = _tensor_digest(tensor)
            digest.update(f"{key}\t{dtype}\t{list(tensor.shape)}\n".encode())
            digest.update(values)
        return digest.hexdigest()

    def _task_set_compatibility(self) -> dict[str, Any]:
        return {field: getattr(self.config, field) for field in COMPATIBILITY_FIELDS}

    # ------------------------------------------------------------------------------------------- saving

    def save_task(
        self,
        name: str,
        save_directory: str | os.PathLike,
        base_model: str | None = None,
        license: str | None = None,
        datasets: list[str] | None = None,
    ) -> str:
        """Writes task `name`'s query set to `save_directory`: `task_query_set.safetensors` (its own tensors),
        `task_query_set.json` (its spec, the base fingerprint and the decoder geometry) and a `README.md` card.
        `base_model` (a Hub repo id or path) and `license`/`datasets` only go into the card. Returns the
        folder."""
        from safetensors.torch import save_file

        if name not in self.config.task_names:
            raise ValueError(f"The model has no task {name!r}; its tasks are {self.config.task_names}.")
        spec = self.config.task_specs[name]
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in self.task_set_state_dict(name).items()}
        fingerprint = self.base_fingerprint()
        description = {
            "format": TASK_SET_FORMAT,
            "format_version": TASK_SET_FORMAT_VERSION,
            "task": spec.to_dict(),
            "base_fingerprint": fingerprint,
            "fingerprint_algorithm": FINGERPRINT_ALGORITHM,
            "base_model": base_model,
            "compatibility": self._task_set_compatibility(),
            "tensors": {key: list(value.shape) for key, value in sorted(tensors.items())},
            "dtype": str(self.dtype).replace("torch.", ""),
        }
        os.makedirs(save_directory, exist_ok=True)
        metadata = {"format": "pt", "faceptor_task": name, "base_fingerprint": fingerprint}
        save_file(tensors, os.path.join(save_directory, TASK_SET_WEIGHTS_FILE), metadata=metadata)
        with open(os.path.join(save_directory, TASK_SET_SPEC_FILE), "w", encoding="utf-8") as handle:
            json.dump(description, handle, indent=2, sort_keys=True)
            handle.write("\n")
        card = self._task_set_card(description, license=license, datasets=datasets)
        with open(os.path.join(save_directory, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(card)
        return str(save_directory)

    def _task_set_card(self, description: dict, license: str | None, datasets: list[str] | None) -> str:
        hub = _hub_integration()
        if hub is not None:
            return hub.render_task_set_card(description, license=license, datasets=datasets)
        # Remote code without the package (no templates): a plain card with the same metadata.
        from huggingface_hub import ModelCard, ModelCardData

        task = description["task"]
        data = ModelCardData(
            base_model=description["base_model"],
            license=license,
            datasets=datasets,
            pipeline_tag=TASK_KINDS[task["kind"]].pipeline_tag,
            tags=["faceptor", "faceptor-task-query-set", task["kind"]],
        )
        text = (
            f"---\n{data.to_yaml()}\n---\n\n# Faceptor query set `{task['name']}` ({task['kind']})\n\n"
            f"Base fingerprint `{description['base_fingerprint']}`. Attach with "
            f"`model.load_task(PATH_OR_REPO)`.\n"
        )
        return str(ModelCard(text))

    def push_task_to_hub(
        self,
        name: str,
        repo_id: str,
        *,
        token: str | bool | None = None,
        private: bool | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        base_model: str | None = None,
        license: str | None = None,
        datasets: list[str] | None = None,
    ):
        """Uploads task `name`'s query set ([`save_task`]) to the Hub repo `repo_id` in one commit (the repo is
        created if needed). Returns the commit info."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as folder:
            self.save_task(name, folder, base_model=base_model, license=license, datasets=datasets)
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision is not None and not revision.startswith("refs/pr"):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or f"Upload Faceptor query set {name}",
                revision=revision,
                create_pr=create_pr,
            )

    # ------------------------------------------------------------------------------------------ loading

    @staticmethod
    def _task_set_files(
        path_or_repo: str | os.PathLike, revision: str | None, token: str | bool | None
    ) -> tuple[str, str]:
        if os.path.isdir(path_or_repo):
            files = [os.path.join(path_or_repo, name) for name in (TASK_SET_SPEC_FILE, TASK_SET_WEIGHTS_FILE)]
            missing = [path for path in files if not os.path.isfile(path)]
            if missing:
                raise ValueError(f"{path_or_repo} is not a Faceptor query set: {missing} missing.")
            return files[0], files[1]
        from huggingface_hub import hf_hub_download

        spec_file = hf_hub_download(str(path_or_repo), TASK_SET_SPEC_FILE, revision=revision, token=token)
        weights_file = hf_hub_download(str(path_or_repo), TASK_SET_WEIGHTS_FILE, revision=revision, token=token)
        return spec_file, weights_file

    def check_task_set(self, description: dict, source: str = "query set") -> None:
        """Raises a `ValueError` unless the query set described by `description` (its `task_query_set.json`) fits
        this model: the same decoder geometry and the same base fingerprint."""
        if description.get("format") != TASK_SET_FORMAT:
            raise ValueError(f"{source} is not a Faceptor query set (format {description.get('format')!r}).")
        if description.get("format_version", 0) > TASK_SET_FORMAT_VERSION:
            raise ValueError(
                f"{source} has query-set format version {description['format_version']}; this code reads up to "
                f"{TASK_SET_FORMAT_VERSION}. Update faceptor."
            )
        ours, theirs = self._task_set_compatibility(), description.get("compatibility", {})
        different = [
            f"{field}: set {theirs.get(field)!r}, model {ours[field]!r}"
            for field in COMPATIBILITY_FIELDS
            if theirs.get(field) != ours[field]
        ]
        if different:
            raise ValueError(
                f"{source} does not fit this model's decoder ({'; '.join(different)}); a query set only attaches to "
                "a base with the same decoder width, layer-embedding scope and Layer-Attention levels."
            )
        if description.get("fingerprint_algorithm") != FINGERPRINT_ALGORITHM:
            raise ValueError(
                f"{source} was fingerprinted with {description.get('fingerprint_algorithm')!r}; this code uses "
                f"{FINGERPRINT_ALGORITHM!r}."
            )
        expected, actual = description.get("base_fingerprint"), self.base_fingerprint()
        if expected != actual:
            raise ValueError(
                f"{source} was trained against base weights with fingerprint {expected}, but this model's base "
                f"fingerprint is {actual}: its queries live in another feature space and are not loaded. Attach "
                "it to the base it was trained with."
            )

    def _remove_task(self, name: str) -> dict[str, tuple[nn.Module, str, Any]]:
        """Detaches task `name`'s own parameters (not its spec); returns what is needed to put them back."""
        removed = {}
        for module_name in self._task_owned_modules(name):
            module = self.get_submodule(module_name)
            removed[module_name] = (module, name, module[name])
            del module[name]
        return removed

    def load_task(
        self,
        path_or_repo: str | os.PathLike,
        overwrite: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
    ):
        """Attaches a query set (a folder written by [`save_task`] or a Hub repo pushed by [`push_task_to_hub`])
        to this model and returns its [`TaskSpec`]. The set must fit: the same decoder geometry and the same
        base fingerprint (its queries were trained against exactly these shared weights), else a `ValueError`
        names both fingerprints and nothing is changed. A task of the same name is replaced only with
        `overwrite=True`."""
        from safetensors.torch import load_file

        from .configuration_faceptor import TaskSpec

        spec_file, weights_file = self._task_set_files(path_or_repo, revision, token)
        source = f"Query set {str(path_or_repo)!r}"
        with open(spec_file, encoding="utf-8") as handle:
            description = json.load(handle)
        self.check_task_set(description, source)
        spec = TaskSpec.from_any(description["task"])
        if spec.name in self.config.task_names and not overwrite:
            raise ValueError(
                f"The model already has a task named {spec.name!r}; pass overwrite=True to replace it with {source}."
            )
        tensors = load_file(weights_file)

        old_tasks = [dict(task) for task in self.config.tasks]
        removed = self._remove_task(spec.name) if spec.name in self.config.task_names else {}
        self.config.tasks = [task for task in self.config.tasks if task["name"] != spec.name]
        try:
            self.add_task(spec)
            state = self.state_dict(keep_vars=True)
            owned = self._task_owned_keys()[spec.name]
            problems = sorted(set(owned) ^ set(tensors))
            problems += [
                f"{key}: set {list(tensors[key].shape)}, model {list(state[key].shape)}"
                for key in owned
                if key in tensors and tensors[key].shape != state[key].shape
            ]
            if problems:
                raise ValueError(f"{source} does not match the tensors of its task spec: {problems}.")
            with torch.no_grad():
                for key in owned:
                    state[key].copy_(tensors[key].to(device=state[key].device, dtype=state[key].dtype))
        except Exception:
            for module_name in self._task_owned_modules(spec.name):
                del self.get_submodule(module_name)[spec.name]
            for module, key, value in removed.values():
                module[key] = value
            self.config.tasks = old_tasks
            raise
        logger.info("Attached query set %s (task %s).", path_or_repo, spec.name)
        return spec

    def _task_owned_modules(self, name: str) -> list[str]:
        return [
            module_name
            for module_name, module in self.named_modules()
            if isinstance(module, (nn.ParameterDict, nn.ModuleDict)) and name in module.keys()
        ]

    # ------------------------------------------------------------------------------------ model on Hub

    def push_to_hub(self, repo_id: str, *args, image_processor=None, paper_results: str | None = None, **kwargs):
        """As transformers' `push_to_hub`, but with the `faceptor` package installed the repo gets everything a
        fresh environment needs with only torch and transformers: config, safetensors, the remote code, the image
        processor (`image_processor`, else the one saved with the model, else the defaults), the
        `face-perception` pipeline's code and `custom_pipelines` entry, and a model card (`paper_results`:
        `"faceptor-base"` or `"faceptor-full"` adds the paper's numbers when the weights are the authors'). It
        is written locally, then uploaded in one commit. Without the package (this file running as remote code)
        it is transformers' own `push_to_hub`."""
        hub = _hub_integration()
        if hub is None or args:
            if image_processor is not None or paper_results is not None:
                raise ValueError("image_processor and paper_results need the faceptor package installed.")
            return super().push_to_hub(repo_id, *args, **kwargs)
        tags = list(getattr(self, "model_tags", None) or [])
        extra = kwargs.pop("tags", None) or []
        tags += [tag for tag in ([extra] if isinstance(extra, str) else extra) if tag not in tags]
        return hub.push_model(
            self, repo_id, image_processor=image_processor, paper_results=paper_results, tags=tags or None, **kwargs
        )
