"""`python -m recipes.demo_model`: rebuild the bundled demo model from registry packages' faces and teachers.

python -m recipes.demo_model all outputs/demo_model --install   # data, train, evaluate, copy into the package
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "python -m recipes.demo_model"
CONFIG = Path(__file__).resolve().parent / "config.yaml"
# What `install` copies into the package's demo-model folder (its __init__.py stays).
DEMO_MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "scores.json")
REBUILD_COMMAND = f'pip install -e ".[dev,distill]" && {PROG} all outputs/demo_model --install'


def command_data(args: argparse.Namespace) -> None:
    from .build import build_distill_dataset

    output = os.path.join(args.output, "data")
    build_distill_dataset(output, args.cache, args.frame_step, not args.quiet)


def command_train(args: argparse.Namespace) -> int:
    import yaml

    from faceptor.processing.image_processing_faceptor import FaceptorImageProcessor
    from faceptor.train.config import parse_training_config
    from faceptor.train.run import build_trainer, finish_training, last_checkpoint

    from .data import DISTILL_READER  # importing it registers the reader with `faceptor.train`

    raw = yaml.safe_load(Path(args.config).read_text())
    for settings in raw["tasks"].values():
        if settings["data"].get("reader") == DISTILL_READER:
            settings["data"]["root"] = os.path.join(args.output, "data")
    if args.max_steps:
        raw["training"]["max_steps"] = args.max_steps
    config = parse_training_config(raw, str(args.config))
    output_dir = os.path.join(args.output, "model")
    resume = last_checkpoint(output_dir) if args.resume else None
    trainer = build_trainer(config, output_dir)
    dense_size = max(spec["input_size"] for spec in config.model["config"]["tasks"])
    trainer.processing_class = FaceptorImageProcessor(dense_size=dense_size)
    return finish_training(trainer, config, output_dir, resume)


def command_evaluate(args: argparse.Namespace) -> None:
    import torch
    from transformers import pipeline

    from .card import demo_model_card, training_record
    from .evaluate import evaluate_distilled_model
    from .independent import independent_scores, withheld_tasks
    from .sources import SourceUnavailable
    from .withhold import withhold_tasks

    model_dir = os.path.join(args.output, "model")
    face_pipeline = pipeline("face-perception", model=model_dir, device="cpu", dtype=torch.float32)
    scores = evaluate_distilled_model(face_pipeline, os.path.join(args.output, "data"), not args.quiet)
    try:
        scores["independent"] = independent_scores(face_pipeline, args.cache)
    except SourceUnavailable as error:  # unevaluated tasks are withheld, the held-out scores kept
        print(f"{PROG}: warning: no independent evaluation: {error}", file=sys.stderr)
        scores["independent"] = {}
    kinds = {name: spec.kind for name, spec in face_pipeline.model.config.task_specs.items()}
    # A task below its bar on the independent photos leaves the model: neither computed nor printed.
    scores["withheld"] = withheld_tasks(scores["independent"], kinds)
    if scores["withheld"]:
        withhold_tasks(model_dir, scores["withheld"])
    with open(os.path.join(model_dir, "scores.json"), "w") as handle:
        json.dump(scores, handle, indent=1)
    with open(os.path.join(args.output, "data", "summary.json")) as handle:
        summary = json.load(handle)
    parameters = sum(parameter.numel() for parameter in face_pipeline.model.parameters())
    history = Path(model_dir, "log_history.json")
    training = training_record(json.loads(history.read_text())) if history.is_file() else None
    card = demo_model_card(scores, summary, parameters, REBUILD_COMMAND, training)
    Path(model_dir, "README.md").write_text(card)
    print(json.dumps({key: {k: v for k, v in value.items() if k != "per_face"} for key, value in scores.items()}))


def install_model(source: Path, target: Path) -> None:
    """Replaces the model files of `target` by `source`'s: the new folder is put together as a temporary sibling
    (with the target's other files, its __init__.py) and swapped in by renames, so a failure leaves the installed
    model whole."""
    missing = [name for name in DEMO_MODEL_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: no {', '.join(missing)} to install (run train and evaluate first)")
    staging = target.with_name(f".{target.name}.installing")
    replaced = target.with_name(f".{target.name}.replaced")
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted install left
    try:
        if target.is_dir():
            shutil.copytree(target, staging, ignore=shutil.ignore_patterns(*DEMO_MODEL_FILES, "__pycache__"))
        else:
            staging.mkdir(parents=True)
        for name in DEMO_MODEL_FILES:
            shutil.copy2(source / name, staging / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(replaced, ignore_errors=True)
    if target.exists():
        os.replace(target, replaced)
    os.replace(staging, target)
    shutil.rmtree(replaced, ignore_errors=True)


def command_install(args: argparse.Namespace) -> None:
    """Installs the trained model, its processor settings, card and scores into the package."""
    from faceptor.demo_model import DEMO_MODEL_DIR

    install_model(Path(args.output, "model"), DEMO_MODEL_DIR)
    print(f"installed the demo model into {DEMO_MODEL_DIR}")


def command_all(args: argparse.Namespace) -> int:
    command_data(args)
    status = command_train(args)
    if status:
        return status
    command_evaluate(args)
    if args.install:
        command_install(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    handlers = {
        "data": (command_data, "gather faces from registry packages and label them with the teachers"),
        "train": (command_train, "train the small Faceptor on OUTPUT/data"),
        "evaluate": (
            command_evaluate,
            "score OUTPUT/model on held-out and independent faces, withhold tasks below their bars, write its card",
        ),
        "install": (command_install, "copy OUTPUT/model into the installed package as its demo model"),
        "all": (command_all, "data, train and evaluate (and install with --install)"),
    }
    for name, (handler, help_text) in handlers.items():
        command = commands.add_parser(name, help=help_text)
        command.add_argument("output", help="working folder (data/ and model/ inside)")
        command.add_argument("--cache", default=os.path.join("outputs", "demo_model_cache"), help="package archives")
        command.add_argument("--frame-step", type=int, default=10, help="keep every Nth video frame")
        command.add_argument("--config", default=str(CONFIG), help="training config (YAML)")
        command.add_argument("--max-steps", type=int, help="override the config's training steps")
        command.add_argument("--install", action="store_true", help="(all) install the result as the default")
        command.add_argument("--resume", action="store_true", help="(train) continue from the last checkpoint")
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        command.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except (OSError, ImportError, RuntimeError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
