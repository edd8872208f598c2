"""The `faceptor` console script. `import faceptor` registers the model with transformers, which loads torch
(seconds); --help and usage errors need none of it, so they are answered here first, from the subcommands'
arguments (`faceptor.commands.arguments`) read without running the package's `__init__`; a command that parses
runs through `faceptor.commands.cli` as usual. A package of its own, since anything inside `faceptor` runs that
`__init__` first."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence

PACKAGE = "faceptor"


@contextlib.contextmanager
def _package_without_its_init() -> Iterator[None]:
    """`faceptor` as a bare package (its folders, not its `__init__`) while inside; afterwards every module
    imported through it is forgotten, so the real package and its modules load afresh."""
    spec = importlib.util.find_spec(PACKAGE)
    if PACKAGE in sys.modules or spec is None or spec.submodule_search_locations is None:
        yield  # already imported (in-process callers, tests): nothing to save
        return
    sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
    try:
        yield
    finally:
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def check_arguments(argv: Sequence[str]) -> None:
    """Exits as argparse does for --help or a usage error in `argv`; returns when they parse."""
    with _package_without_its_init():
        from faceptor.commands.cli import build_parser

        build_parser().parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["train"]:  # `faceptor train` parses its own config-driven arguments
        check_arguments(argv)
    from faceptor.commands.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
