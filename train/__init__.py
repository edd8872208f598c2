"""Training: losses, data, metrics and the multi-task Trainer (issues 5 and 6)."""
