"""Where `faceptor predict` writes, checked before any work: never over an input (neither the JSON lines nor a
picture), never two runs into one output (a lock file beside it), and always under a temporary name that is
renamed when complete."""

from __future__ import annotations

import errno
import itertools
import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import IO, Any

from ..visualization.drawing import is_saved_picture
from .errors import CommandError
from .output_files import (
    OutputError,
    OutputFile,
    check_distinct,
    disk_problem,
    is_special,
    remove_stale_temporaries,
    remove_stale_temporaries_in,
)
from .output_files import temporary_path as temporary_path

LOCK_SUFFIX = ".lock"
# A lock file still empty this long after it was made is left over from a run killed while making it.
LOCK_WRITE_GRACE_S = 10.0


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


class InputFiles:
    """The inputs of a run, to tell whether a path to be written is one of them: by resolved path, and, for a
    path that exists, by file identity (a hard link, another spelling on a case-insensitive disk)."""

    def __init__(self, paths: Iterable[str]):
        self.paths = {os.path.realpath(path): path for path in paths}
        self._identities: dict[tuple[int, int], str] | None = None

    def find(self, path: str) -> str | None:
        """The input that writing `path` would replace, or None."""
        if (found := self.paths.get(os.path.realpath(path))) is not None:
            return found
        identity = _identity(path)
        if identity is None:
            return None
        if self._identities is None:  # stat every input once, only when a target already exists
            self._identities = {}
            for real, given in self.paths.items():
                if (key := _identity(real)) is not None:
                    self._identities.setdefault(key, given)
        return self._identities.get(identity)


def check_output(output: str, inputs: InputFiles) -> None:
    """Refuses, in one line, an `--output` that is a folder, lies in a missing folder, is not writable or is one
    of the inputs."""
    if os.path.isdir(output):
        raise CommandError(f"--output {output}: is a folder; name a file")
    folder = os.path.dirname(output) or "."
    if not os.path.isdir(folder):
        raise CommandError(f"--output {output}: folder {folder} does not exist")
    if (same := inputs.find(output)) is not None:
        raise CommandError(f"--output {output}: is the input {same}; refusing to overwrite an input")
    if os.path.exists(output) and not os.access(output, os.W_OK):
        raise CommandError(f"--output {output}: exists and is not writable")


def _owner_alive(path: str) -> bool:
    """Whether the run that made lock file `path` may still be running: its process is alive, or on another
    machine (which cannot be asked), or the file is too fresh to hold its pid yet."""
    try:
        with open(path, encoding="utf-8") as handle:
            fields = handle.read().split()
        age = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    if len(fields) < 2 or not fields[0].isdigit():
        return age < LOCK_WRITE_GRACE_S
    pid, host = int(fields[0]), fields[1]
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


class OutputLock:
    """`OUTPUT.lock`, made atomically (`O_EXCL`) and holding "pid host": a second run writing the same output
    refuses in one line; a lock left by a process that died is taken over. Also the check that the output's
    folder is writable, as it is the first file made there."""

    def __init__(self, output: str):
        self.output, self.path = output, output + LOCK_SUFFIX
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):  # a second try after removing a dead run's lock
            try:
                handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if _owner_alive(self.path):
                    owner = self._describe_owner()
                    raise CommandError(
                        f"--output {self.output}: another run{owner} is writing it (lock file {self.path}); "
                        "wait for it to finish, or remove the lock file if no run is"
                    ) from None
                try:
                    os.remove(self.path)  # its process is gone: take the lock over
                except FileNotFoundError:
                    pass
                continue
            except OSError as error:
                reason = "permission denied" if error.errno in (errno.EACCES, errno.EPERM) else error.strerror
                folder = os.path.dirname(self.output) or "."
                raise CommandError(f"--output {self.output}: cannot write in {folder} ({reason})") from None
            with os.fdopen(handle, "w", encoding="utf-8") as lock_file:
                lock_file.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            remove_stale_temporaries(self.output)  # a killed run's .tmp: ours to clean now that we hold the lock
            return
        raise CommandError(f"--output {self.output}: another run took its lock file {self.path} meanwhile")

    def _describe_owner(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as handle:
                fields = handle.read().split()
        except OSError:
            return ""
        return f" (pid {fields[0]} on {fields[1]})" if len(fields) >= 2 else ""

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


def picture_paths(inputs: Sequence[tuple[str, str]], folder: str) -> list[str]:
    """Per input (path, name relative to what was given) the path of its picture in `folder`: the name's folders
    and stem + ".jpg"; where several names share a stem (face.jpg, face.png) they keep their extension
    (face.jpg.jpg, face.png.jpg), and any name still taken (case ignored, for case-insensitive disks) gets a number
    (face.jpg-2.jpg). Depends only on the inputs, so every process of a sharded run names pictures alike."""
    stems = [os.path.splitext(name)[0] for _, name in inputs]
    sharing = {}
    for stem in stems:
        sharing[stem.lower()] = sharing.get(stem.lower(), 0) + 1
    taken: set[str] = set()
    paths = []
    for stem, (_, name) in zip(stems, inputs, strict=True):
        base = stem if sharing[stem.lower()] == 1 else name
        candidate, number = base, 1
        while (candidate + ".jpg").lower() in taken:
            number += 1
            candidate = f"{base}-{number}"
        taken.add((candidate + ".jpg").lower())
        paths.append(os.path.join(folder, candidate + ".jpg"))
    return paths


def check_pictures(folder: str, pictures: Sequence[str], files: InputFiles, output: str | None) -> None:
    """Refuses, in one line, a `--visualize` folder that is a file or not writable, or where a picture would
    replace an input, the output, or any file that is not a picture of an earlier run (a user's photo)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CommandError(f"--visualize {folder}: is a file, not a folder")
    real_output = os.path.realpath(output) if output else None
    for picture in pictures:
        if (same := files.find(picture)) is not None:
            raise CommandError(
                f"--visualize {folder}: the picture {picture} would overwrite the input {same}; choose another folder"
            )
        if os.path.realpath(picture) == real_output:
            raise CommandError(f"--visualize {folder}: the picture {picture} would overwrite --output {output}")
        if os.path.lexists(picture) and not is_saved_picture(picture):
            raise CommandError(
                f"--visualize {folder}: the picture {picture} would replace a file that is not a faceptor picture; "
                "choose another folder"
            )


def make_picture_folder(folder: str) -> None:
    """Makes the `--visualize` folder, or says in one line why it cannot be written to."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise CommandError(f"--visualize {folder}: cannot make the folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"--visualize {folder}: not writable")
    remove_stale_temporaries_in(folder)  # a killed run's half-written pictures


def frame_folders(videos: Sequence[tuple[str, str]], folder: str, pictures: Sequence[str]) -> list[str]:
    """Per video (path, name) the folder of its frame pictures in `folder`: its name's stem, or, where a photo's
    picture lies in that folder (`clip/frame_000000.jpg` beside `clip.mp4`) or another video took it, its whole
    name, then a number; so no frame picture ever replaces a photo's picture or another video's."""
    taken = {picture.lower() for picture in pictures}
    for picture in pictures:  # and every folder above a photo's picture
        parent = os.path.dirname(picture)
        while len(parent) > len(folder) and parent.lower() not in taken:
            taken.add(parent.lower())
            parent = os.path.dirname(parent)
    folders = []
    for stem_path, (_, name) in zip(picture_paths(videos, folder), videos, strict=True):
        whole = os.path.join(folder, name)
        options = itertools.chain([stem_path[: -len(".jpg")], whole], (f"{whole}-{n}" for n in itertools.count(2)))
        folders.append(next(option for option in options if option.lower() not in taken))
        taken.add(folders[-1].lower())
    return folders


def check_frame_folders(option_folder: str, folders: Sequence[str]) -> None:
    """Refuses, before any work, a video's frame folder that exists as a file (the frames could not be written)."""
    for found in folders:
        if os.path.lexists(found) and not os.path.isdir(found):
            raise CommandError(
                f"--visualize {option_folder}: {found} is a file, where a video's frame pictures "
                "would go; move it or choose another folder"
            )


def check_outputs_apart(outputs: dict[str, str | None]) -> None:
    """`check_distinct` as a `CommandError`."""
    try:
        check_distinct({option: path for option, path in outputs.items() if path})
    except OutputError as error:
        raise CommandError(str(error)) from None


def needs_lock(output: str | None) -> bool:
    """Whether `--output` gets a lock file: not a stream (/dev/null, a FIFO), which nothing renames onto."""
    return bool(output) and not is_special(output)


def finish_output(output: IO[str] | Any, file: OutputFile) -> None:
    """Closes the records output (a Parquet file writes its footer here) and puts it in place; a full disk or any
    failed write is one `CommandError` line, the earlier output untouched."""
    try:
        output.close()
        file.commit()
    except OSError as error:
        file.discard()
        raise CommandError(f"cannot write the output: {disk_problem(error, file.final)}") from None
