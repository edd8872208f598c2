"""Image processing and the face-perception pipeline (issue 4)."""
