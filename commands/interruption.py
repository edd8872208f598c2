"""The one way every command stops when asked to: Ctrl-C (SIGINT) and SIGTERM (what `timeout`, `kill` and container
stops send) both unwind the command as an exception, so that every `finally` removes the temporaries, locks and
partial videos the run owns, then end with one line on standard error and the shell's status (130, 143)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

INTERRUPTED_STATUS = 128 + signal.SIGINT  # 130, as a shell reports a Ctrl-C
TERMINATED_STATUS = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM: a BaseException, like KeyboardInterrupt, so no `except Exception`
    of a command swallows it."""


def _raise_terminated(number: int, frame) -> None:
    raise Terminated


def run_stoppable(command: Callable[[], int], prefix: str = "faceptor") -> int:
    """`command()`'s status, or, when it is stopped by Ctrl-C or SIGTERM, one line and 130 or 143 after its own
    cleanup ran; no traceback. Installs the SIGTERM handler only in the main thread (where Python delivers it)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return command()
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted (Ctrl-C); finished outputs kept, partial ones removed", file=sys.stderr)
        return INTERRUPTED_STATUS
    except Terminated:
        print(f"{prefix}: terminated (SIGTERM); finished outputs kept, partial ones removed", file=sys.stderr)
        return TERMINATED_STATUS
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["INTERRUPTED_STATUS", "TERMINATED_STATUS", "Terminated", "run_stoppable"]
