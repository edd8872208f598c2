"""`faceptor --help`, a subcommand's --help and a usage error answer before torch or transformers load (they take
seconds); a command that parses then runs with the real package. Each in a fresh interpreter, as a user's shell
starts the console script, so nothing is already imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Runs faceptor_cli.main(ARGV) and reports its exit status and which heavy modules it loaded.
PROBE = """
import json, sys
import faceptor_cli
try:
    status = faceptor_cli.main({argv!r})
except SystemExit as stop:
    status = stop.code
heavy = ("torch", "transformers", "torchvision", "faceptor.modeling_faceptor")
loaded = [name for name in heavy if name in sys.modules]
print(json.dumps({{"status": status, "loaded": loaded}}))
"""


def run_console_script(argv: list[str]) -> tuple[dict, str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=300)
    *output, report = done.stdout.splitlines()
    return json.loads(report), "\n".join(output), done.stderr


def test_the_console_script_is_the_light_launcher():
    script = Path(sys.executable).parent / "faceptor"  # what `pip install` wrote beside this interpreter
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable}")
    assert "from faceptor_cli import main" in script.read_text(), "installed before the launcher: pip install -e ."


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["summary", "--help"], ["push", "--help"]])
def test_help_loads_neither_torch_nor_transformers(argv):
    report, out, _ = run_console_script(argv)
    assert report == {"status": 0, "loaded": []}
    assert out.startswith("usage: faceptor")
    if argv == ["--help"]:
        assert all(name in out for name in ("predict", "summary", "demo", "convert", "export", "push", "train"))


def test_a_usage_error_is_one_line_before_torch():
    report, _, err = run_console_script(["predict", "photo.jpg", "--batch-size", "0"])
    assert report == {"status": 2, "loaded": []}
    assert err.strip().splitlines() == [
        "faceptor predict: error: argument --batch-size: must be at least 1, got 0 (see --help)"
    ]


@pytest.mark.slow
def test_a_command_that_parses_runs_with_the_real_package():
    """`faceptor summary` (no argument: the bundled demo model, as predict and demo) after the light parse."""
    report, out, _ = run_console_script(["summary"])
    assert report["status"] == 0 and "faceptor.modeling_faceptor" in report["loaded"]
    assert out.startswith("the bundled demo model (") and "task align_dlib68 (landmarks, 68 queries)" in out
