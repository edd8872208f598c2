"""How every output file of the tools is written (predict's --output in JSON lines or Parquet, its pictures and
annotated videos, the sharded merge, export's ONNX file): under a temporary name beside the file, renamed onto it
when complete; but never renamed over what is not a regular file. A FIFO, a character device (/dev/null) or a
stream of this process (/dev/stdout, /proc/self/fd/N) is written into directly; a link to a regular file keeps its
link and has its target replaced. Temporaries carry the writer's pid, so that a later run can remove those that a
killed run left behind. Standard library only: pictures and videos are written through it too."""

from __future__ import annotations

import errno
import glob
import os
import re
import secrets
import stat
from collections.abc import Callable
from typing import Any

# Paths here are streams of this machine or process, never files we may replace.
STREAM_FOLDERS = ("/dev/", "/proc/")
_OURS = re.compile(r"\.(\d+)-[0-9a-f]{6}\.(tmp|partial)")  # what temporary_path and partial_path add to a name


class OutputError(OSError):
    """An output that cannot be written; its message is the one line to show."""


def temporary_path(final: str) -> str:
    """A new name beside `final` for writing it in full before renaming; unique to this process and call, so
    that nothing else by that name is ever truncated."""
    return f"{final}.{os.getpid()}-{secrets.token_hex(3)}.tmp"


def partial_path(final: str) -> str:
    """As `temporary_path`, keeping `final`'s suffix (`clip.123-abcdef.partial.mp4`: FFmpeg picks the container
    by the suffix)."""
    stem, suffix = os.path.splitext(final)
    return f"{stem}.{os.getpid()}-{secrets.token_hex(3)}.partial{suffix}"


def is_special(path: str) -> bool:
    """Whether `path` is not a file a rename may replace: a FIFO, a device, a socket, or anything under /dev or
    /proc (except /dev/shm, which is a disk of files)."""
    absolute = os.path.abspath(path)
    if absolute.startswith(STREAM_FOLDERS) and not absolute.startswith("/dev/shm/"):
        return True
    try:
        found = os.stat(path)
    except OSError:
        return False
    return not stat.S_ISREG(found.st_mode) and not stat.S_ISDIR(found.st_mode)


def rename_target(final: str) -> str:
    """The path a rename lands on to write `final`: `final` itself, or the regular file a link at `final` points
    to (so that the link stays a link)."""
    return os.path.realpath(final) if os.path.islink(final) else final


def disk_problem(error: OSError, path: str) -> str:
    """One line for a failed write of `path`, naming a full disk or quota as such."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path}: the disk is full ({error.strerror or 'no space left on device'}); nothing was replaced"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: cannot write here ({error.strerror})"
    return f"{path}: cannot write ({error.strerror or error})"


class OutputFile:
    """One output of a run: `path` is where to write (a temporary, or the special file itself); `commit()` puts
    it in place, `discard()` removes the temporary of a run that failed. `final` is never truncated before
    `commit` unless it is special (then there is nothing to keep: it is a stream)."""

    def __init__(self, final: str, temporary: Callable[[str], str] = temporary_path):
        self.final = final
        self.special = is_special(final)
        self.target = final if self.special else rename_target(final)
        self.path = final if self.special else temporary(self.target)

    def commit(self) -> None:
        if not self.special:
            os.replace(self.path, self.target)

    def discard(self) -> None:
        if not self.special:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


def open_output(final: str, opener: Callable[[str, str], Any], text_mode: str = "x") -> tuple[OutputFile, Any]:
    """An `OutputFile` for `final` and `opener(path, mode)` of it: mode `text_mode` ("x": a new temporary) or "w"
    into a special file."""
    output = OutputFile(final)
    return output, opener(output.path, "w" if output.special else text_mode)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: str) -> list[str]:
    """Removes the temporaries of `final` (`final.PID-XXXXXX.tmp`, `stem.PID-XXXXXX.partial.suffix`) that a
    killed run left: those whose process is gone. Returns their paths."""
    stem, suffix = os.path.splitext(final)
    candidates = glob.glob(glob.escape(final) + ".*.tmp") + glob.glob(glob.escape(stem) + ".*.partial" + suffix)
    removed = []
    for candidate in candidates:
        rest = candidate[len(stem) :]
        match = _OURS.search(rest)
        if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        try:
            os.remove(candidate)
            removed.append(candidate)
        except OSError:
            pass
    return removed


def remove_stale_temporaries_in(folder: str) -> list[str]:
    """Removes, anywhere below `folder`, the `.tmp` temporaries (`NAME.PID-XXXXXX.tmp`) that a killed run left
    while writing pictures there: those whose process is gone. Returns their paths."""
    removed = []
    for root, _, names in os.walk(folder):
        for name in names:
            match = _OURS.search(name)
            if match is None or match.group(2) != "tmp" or not name.endswith(match.group(0)):
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or _alive(pid):
                continue
            try:
                os.remove(os.path.join(root, name))
                removed.append(os.path.join(root, name))
            except OSError:
                pass
    return removed


def check_distinct(outputs: dict[str, str]) -> None:
    """Refuses, in one line, two outputs (option -> path) that are one path, or where one lies inside the other
    (a folder of pictures holding the JSON lines)."""
    named = [(option, os.path.realpath(path)) for option, path in outputs.items() if path]
    for index, (option, path) in enumerate(named):
        for other, other_path in named[index + 1 :]:
            if path == other_path:
                raise OutputError(f"{option} and {other} are the same path ({outputs[option]}); give each its own")
            for inner, outer in ((option, other), (other, option)):
                inner_path, outer_path = dict(named)[inner], dict(named)[outer]
                if inner_path.startswith(outer_path.rstrip(os.sep) + os.sep):
                    raise OutputError(
                        f"{inner} {outputs[inner]} lies inside {outer} {outputs[outer]}; give each its own place"
                    )


__all__ = [
    "OutputError",
    "OutputFile",
    "check_distinct",
    "disk_problem",
    "is_special",
    "open_output",
    "partial_path",
    "remove_stale_temporaries",
    "remove_stale_temporaries_in",
    "rename_target",
    "temporary_path",
]
