"""Photos installed with the package: the README's first command and the demo page's examples use them, and
benchmarks/gpu.py runs on them. See README.md here for their sources and licences."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def bundled_photos() -> list[Path]:
    """The bundled photos, sorted by name."""
    return sorted(ASSETS_DIR.glob("*.jpg"))
