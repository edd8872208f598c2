"""The error every command raises for a user's mistake, and how a parsed command is run."""

from __future__ import annotations

import argparse
import sys


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def run_handler(args: argparse.Namespace) -> int:
    """Runs a parsed command's handler: its exit status, or 2 with one line on standard error for a
    `CommandError`."""
    if getattr(args, "quiet", False):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        return args.handler(args) or 0
    except CommandError as error:
        print(f"faceptor: error: {error}", file=sys.stderr)
        return 2
