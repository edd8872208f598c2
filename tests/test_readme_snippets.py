"""Every ```python block of README.md runs as written: offline, on the bundled demo model, each in a fresh
namespace, in a scratch folder that holds the bundled photo as `photo.jpg` (the one thing a reader supplies)."""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[int, str]]:
    """`(line number, code)` of each ```python block of the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 1, match.group(1)) for match in BLOCK.finditer(text)]


def test_the_readme_has_python_blocks_to_run():
    assert len(python_blocks()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("line, code", [pytest.param(*block, id=f"README.md:{block[0]}") for block in python_blocks()])
def test_the_readme_block_runs_as_written(line, code, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a block that reached for the network would fail, not wait
    shutil.copyfile(resources.files("faceptor.assets") / "astronaut.jpg", tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)  # files a block writes (a saved model) land in the scratch folder
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
