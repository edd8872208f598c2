"""The error every command raises for a user's mistake, and how a parsed command is run."""

from __future__ import annotations

import argparse
import re
import sys


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# transformers' pipeline packs the traceback of every model class it tried into one message after this marker.
PACKED_TRACEBACKS_MARKER = "See the original errors:"


def error_summary(error: BaseException) -> str:
    """One line that names the real cause of `error`: its first line, or, for a message that packs tracebacks
    (transformers' "See the original errors:"), the last traceback's final `Type: message` line."""
    text = str(error).strip()
    if PACKED_TRACEBACKS_MARKER in text:
        packed = text.split(PACKED_TRACEBACKS_MARKER, 1)[1]
        causes = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception): .*)$", packed, flags=re.MULTILINE)
        if causes:
            return causes[-1].strip()
    first_line = text.splitlines()[0].strip() if text else ""
    return first_line or type(error).__name__


def run_handler(args: argparse.Namespace) -> int:
    """Runs a parsed command's handler: its exit status, or 2 with one line on standard error for a
    `CommandError` (130 or 143 for Ctrl-C or SIGTERM)."""
    if getattr(args, "quiet", False):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    from .interruption import run_stoppable

    def command() -> int:
        try:
            return args.handler(args) or 0
        except CommandError as error:
            print(f"faceptor: error: {error}", file=sys.stderr)
            return 2

    return run_stoppable(command)  # Ctrl-C and SIGTERM: the command's cleanup, then one line, 130 or 143
