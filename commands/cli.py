"""The `faceptor` command line: one subcommand per tool, their arguments in `arguments.py` (no torch needed to
parse them), each handler in its tool's module, imported when its command runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .arguments import (
    add_compare_params_command,
    add_convert_command,
    add_convert_naive_command,
    add_demo_command,
    add_evaluate_command,
    add_export_command,
    add_predict_command,
    add_push_command,
    add_summary_command,
)
from .errors import run_handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceptor", description="Faceptor: one model for every face task.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_summary_command(commands)  # faceptor summary [PRESET | MODEL_DIR]
    convert_sources = add_convert_command(commands)  # faceptor convert {official,farl} CKPT OUT_DIR
    add_convert_naive_command(convert_sources)  # faceptor convert official-naive CKPT OUT_DIR
    add_compare_params_command(commands)  # faceptor compare-params [PRESET | TASK ...]
    add_predict_command(commands)  # faceptor predict IMAGE ...
    add_demo_command(commands)  # faceptor demo [--model DIR_OR_REPO] [--port N] [--share]
    add_export_command(commands)  # faceptor export onnx MODEL_DIR OUT.onnx
    add_push_command(commands)  # faceptor push MODEL_DIR REPO
    add_evaluate_command(commands)  # faceptor evaluate --model DIR --task NAME --data ROOT
    # `faceptor train ...` is handed whole to faceptor.train.run (see main); listed here for --help.
    commands.add_parser("train", help="multi-task training from a YAML config: faceptor train --config CFG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from ..train.run import main as train_main

        return train_main(argv[1:])
    return run_handler(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
