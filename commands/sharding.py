"""`faceptor predict` over several processes (`accelerate launch`): each process takes every world-th input,
writes an indexed part file, and the main process merges the parts into one output in input order."""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

# A part file's line: "<input index>\t<status>\t<JSON result>"; json.dumps escapes tabs and newlines.
OK, NO_FACE, ERROR = "ok", "no_face", "error"


def distributed_state() -> Any | None:
    """accelerate's `PartialState` when this process is one of several (WORLD_SIZE > 1), else None; accelerate
    is imported only then, so a plain `faceptor predict` does not need it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # Without a GPU, accelerate needs `cpu=True` to join the processes (gloo); else each would run alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes <= 1:
        raise RuntimeError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate started no process group")
    return state


def close_process_group() -> None:
    """Ends the process group once every process got here; gloo's threads abort the interpreter at exit if it
    is left open."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def shard(items: Sequence[str], rank: int, world: int) -> list[tuple[int, str]]:
    """This process's inputs with their indices in the whole input: every `world`-th from `rank`."""
    return [(index, items[index]) for index in range(rank, len(items), world)]


def part_path(output: str, rank: int, world: int) -> str:
    return f"{output}.part-{rank:05d}-of-{world:05d}"


def result_status(result: dict[str, Any]) -> str:
    """ERROR for an input that gave no result (unreadable, or failed), NO_FACE for a result without faces (a
    correct answer, not an error), else OK."""
    return ERROR if "error" in result else NO_FACE if not result.get("faces") else OK


def share_from_main(state: Any, value: Any) -> Any:
    """The main process's `value`, in every process of `state`'s group (e.g. why it refused to start)."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    shared = [value if state.is_main_process else None]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def write_part_line(part: IO[str], index: int, result: dict[str, Any], line: str) -> None:
    part.write(f"{index}\t{result_status(result)}\t{line}")


def _read_part(path: str) -> Iterator[tuple[int, str, str]]:
    with open(path, encoding="utf-8") as part:
        for line in part:
            index, status, text = line.split("\t", 2)
            yield int(index), status, text


def _open_text(path: str) -> IO[str]:
    return open(path, "w", encoding="utf-8")


def merge_parts(
    output: str, world: int, temporary: str | None = None, open_merged: Callable[[str], Any] = _open_text
) -> Counter:
    """Merges the `world` part files of `output` into `output` in input order (streaming: one line of each part
    held at a time), through `temporary` (default `output`.merging) renamed at the end, and removes the parts.
    `open_merged(path)` makes what the JSON lines are written to (default a text file; e.g. a Parquet writer).
    Returns how many inputs gave each status; error results are counted but, as in one process, not written."""
    parts = [part_path(output, rank, world) for rank in range(world)]
    missing = [path for path in parts if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"part files missing (a process failed?): {missing}")
    temporary, statuses = temporary or f"{output}.merging", Counter()
    try:
        merged = open_merged(temporary)
        try:
            for _, status, text in heapq.merge(*map(_read_part, parts), key=lambda entry: entry[0]):
                statuses[status] += 1
                if status != ERROR:
                    merged.write(text)
        finally:
            merged.close()
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    for path in parts:
        os.remove(path)
    return statuses
