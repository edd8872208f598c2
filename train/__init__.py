"""Training: dataset readers, augmentation, losses, metrics and the multi-task Trainer."""
