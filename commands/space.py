"""`faceptor push MODEL_DIR REPO --space USER/NAME`: a Hugging Face Space beside the model, running the browser demo
(`demo.py`) on the model's Hub repo.

The Space folder holds `app.py`, `requirements.txt` (the package's own requirements with its `detect`, `demo` and
`video` extras), a README with the Space's metadata (`sdk: gradio`, `app_file`, the model) and a copy of the `faceptor`
package that wrote it (without the bundled demo model's weights or the training code), so the Space runs the same
page as `faceptor demo` without the package being on PyPI.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, SpaceCardData
from packaging.requirements import Requirement

from .errors import CommandError, error_summary

logger = logging.getLogger(__name__)

PACKAGE = __package__.rpartition(".")[0]  # "faceptor"
# The package's folders the Space needs: the model's, processing, the cards and the tools around the demo.
VENDORED_PACKAGES = (
    PACKAGE,
    *(
        f"{PACKAGE}.{sub}"
        for sub in ("processing", "hub_cards", "commands", "video", "visualization", "assets", "demo_model")
    ),
)
# Not copied: caches, weights (the Space loads its model from the Hub) and the training code.
VENDOR_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.safetensors", "train")
SPACE_EXTRAS = ("detect", "demo", "video")  # the face detector, Gradio and PyAV, beside the package's own requirements
DEFAULT_SPACE_COMMIT_MESSAGE = "Faceptor demo Space"
APP_TEMPLATE = '''"""The Faceptor browser demo of {model_repo}, written by `faceptor push --space`
(the `faceptor` folder beside this file is the package that wrote it)."""

from faceptor.commands.demo import MAX_UPLOAD_SIZE, load_demo

MODEL_REPO = "{model_repo}"
demo = load_demo(MODEL_REPO)  # the page's logic: demo.analyse(photo), demo.compare(first, second)
app = demo.build_app()

if __name__ == "__main__":
    app.queue().launch(max_file_size=MAX_UPLOAD_SIZE)
'''


def space_requirements() -> list[str]:
    """The Space's pip requirements: the installed package's own, plus those of its `detect` and `demo` extras."""
    requirements = []
    for line in importlib.metadata.requires(PACKAGE) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in SPACE_EXTRAS):
            requirement.marker = None
            if str(requirement) not in requirements:
                requirements.append(str(requirement))
    if not any(Requirement(line).name == "gradio" for line in requirements):
        raise RuntimeError(f"the installed {PACKAGE} has no `demo` extra: reinstall it (pip install -e '.[demo]')")
    return requirements


def space_card(model_repo: str) -> str:
    """The Space's README.md: its metadata (Gradio SDK, app file, the model) and a short description."""
    try:
        gradio_version = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        gradio_version = None
    metadata = SpaceCardData(
        title=f"Faceptor: {model_repo.split('/')[-1]}"[:60],
        sdk="gradio",
        sdk_version=gradio_version,
        app_file="app.py",
        license="mit",
        models=[model_repo],
        tags=["faceptor", "face-perception"],
        emoji="🙂",
        colorFrom="blue",
        colorTo="indigo",
        pinned=False,
        short_description="Every face task of a Faceptor model on your photo",
    )
    return (
        f"---\n{metadata.to_yaml()}\n---\n\n# Faceptor demo: [{model_repo}](https://huggingface.co/{model_repo})\n\n"
        "Drop, paste or pick a photo: the page finds the faces and shows every task of the model (landmarks, "
        "parsing, age, expression, attributes, identity), a panel per face and the raw JSON; a second tab compares "
        "the faces of two photos by identity. The same page runs locally with `faceptor demo --model "
        f"{model_repo}`.\n"
    )


def write_space_folder(folder: str | os.PathLike, model_repo: str) -> list[str]:
    """Writes a Space of the demo for the Hub model `model_repo` into `folder`: app.py, requirements.txt, README.md
    and the `faceptor` package. Returns the files written, relative to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for package in VENDORED_PACKAGES:
        source = importlib.util.find_spec(package).submodule_search_locations[0]
        target = folder.joinpath(*package.split("."))
        if Path(source).resolve() != target.resolve():
            shutil.copytree(source, target, ignore=VENDOR_IGNORE, dirs_exist_ok=True)
    (folder / "app.py").write_text(APP_TEMPLATE.format(model_repo=model_repo), encoding="utf-8")
    (folder / "requirements.txt").write_text("\n".join(space_requirements()) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(space_card(model_repo), encoding="utf-8")
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def push_space(space_id: str, model_repo: str, *, token: str | bool | None = None, private: bool | None = None) -> str:
    """Writes the Space of `model_repo` ([`write_space_folder`]) into a temporary folder and uploads it to the
    Space `space_id` (created with the Gradio SDK if needed) in one commit. Returns the commit's URL."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="faceptor-space-") as folder:
        write_space_folder(folder, model_repo)
        space_id = api.create_repo(
            space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True
        ).repo_id
        info = api.upload_folder(
            repo_id=space_id, repo_type="space", folder_path=folder, commit_message=DEFAULT_SPACE_COMMIT_MESSAGE
        )
    logger.info("Pushed the demo Space %s of %s (%s).", space_id, model_repo, info.oid)
    return info.commit_url


# ---------------------------------------------------------------------------------------------- CLI


def check_space_name(args: argparse.Namespace) -> None:
    """Refuses, in one line and before anything is pushed, a `--space` that is not a valid USER/NAME repo id (the
    model repo would otherwise be created and committed before the Space's name is refused)."""
    space = getattr(args, "space", None)
    if not space:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(space)
    except HFValidationError as error:
        raise CommandError(f"--space {space}: not a valid Space name ({error_summary(error)})") from None
    if space.count("/") != 1:
        raise CommandError(f"--space {space}: name a Space as USER/NAME")


def push_space_of_command(args: argparse.Namespace) -> None:
    """After `faceptor push` succeeded: the `--space` Space of the pushed repo, if one was asked for."""
    if not getattr(args, "space", None):
        return
    from .hub_client import HUB_NETWORK_ERROR

    try:
        url = push_space(args.space, args.repo_id, token=args.token, private=args.private)
    except (ValueError, OSError, RuntimeError, HUB_NETWORK_ERROR) as error:
        raise CommandError(f"Space push to {args.space} failed: {error_summary(error)}") from None
    print(f"pushed the demo Space {args.space} of {args.repo_id}: {url}")


__all__ = ["check_space_name", "push_space", "push_space_of_command", "space_requirements", "write_space_folder"]
