"""The demo model installed with the package (this folder): what `faceptor predict` and
`pipeline("face-perception")` use when no model is named. A small Faceptor distilled from teacher models on
registry packages' faces (its card: README.md here; its build recipe: `recipes/demo_model/` in the source tree);
the paper's accuracy needs the converted official weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parent  # this folder: config, weights, card, scores


def withheld_tasks() -> dict[str, str]:
    """The tasks the recipe trained but left out of the demo model, and why (their scores.json entry; empty when
    this install lacks its scores)."""
    try:
        return dict(json.loads((DEMO_MODEL_DIR / "scores.json").read_text()).get("withheld", {}))
    except (OSError, ValueError):
        return {}


def _note(withheld: dict[str, str]) -> str:
    # One short line on every run: the reasons are in the card (README.md here), not repeated each time.
    note = "no --model: the bundled demo model"
    if withheld:
        note += f" (without {', '.join(withheld)}: below their bars, see its card)"
    return note + "; --model for converted weights"


DEMO_MODEL_NOTE = _note(withheld_tasks())
_announced = False


def demo_model_path() -> str:
    """The bundled demo model's folder; FileNotFoundError when this install lacks it."""
    if not (DEMO_MODEL_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{DEMO_MODEL_DIR}: the bundled demo model is missing; rebuild it from a source checkout with "
            "`python -m recipes.demo_model all outputs/demo_model --install` or name a model folder."
        )
    return str(DEMO_MODEL_DIR)


def announce_demo_model(prefix: str = "faceptor") -> None:
    """Says once per process, on standard error, that the demo model stands in for a named one."""
    global _announced
    if not _announced:
        print(f"{prefix}: {DEMO_MODEL_NOTE}", file=sys.stderr)
        _announced = True
