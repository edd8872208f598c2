"""Distilling a small face model from a teacher, on real face images with exact provenance."""
