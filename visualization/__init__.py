"""Pictures of results: boxes, landmarks, the parsing overlay and captions drawn on a photo (`drawing.py`). A tool of
the package (the CLI, the demo, videos, evaluation), never part of the remote code."""
