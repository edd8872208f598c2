"""Image processing, decoding of raw outputs and the face-perception pipeline."""
