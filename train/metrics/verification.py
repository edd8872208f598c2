"""1:1 face verification accuracy with a 10-fold best threshold, the protocol of insightface's
`verification.evaluate` that the official `core/evaluator/recog_evaluator.py` uses (LFW, CFP-FP, AgeDB-30, ...):

1. embeddings are L2-normalised (the official test first sums each image's embedding with its horizontal
   flip's: see `fuse_flipped`); a pair's distance is the *squared* L2 distance (in [0, 4]);
2. a pair is predicted "same" when its distance < threshold, for thresholds 0, 0.01, ..., 3.99;
3. the pairs are split, in order and without shuffling, into 10 contiguous folds (scikit-learn's `KFold`);
   for each fold the threshold with the best accuracy on the other 9 folds (the first one on ties) scores
   the held-out fold;
4. accuracy = mean over folds (plus its std); we also report the mean and std of the chosen thresholds.
"""

from __future__ import annotations

import numpy as np
import torch

from ...processing.decoding import normalized_embeddings
from ._common import to_numpy

THRESHOLDS = np.arange(0, 4, 0.01)  # insightface calculate_roc
NUM_FOLDS = 10


def _float64_tensor(embeddings) -> torch.Tensor:
    # float64, as insightface scores in numpy's default precision
    return torch.from_numpy(to_numpy(embeddings).astype(np.float64))


def fuse_flipped(embeddings, flipped_embeddings) -> np.ndarray:
    """The official test-time fusion: embedding of the image + embedding of its horizontal flip (normalised
    afterwards by the scoring)."""
    return to_numpy(embeddings).astype(np.float64) + to_numpy(flipped_embeddings).astype(np.float64)


def split_pairs(embeddings) -> tuple[np.ndarray, np.ndarray]:
    """Pair embeddings as `(P, 2, D)` or interleaved `(2P, D)` (insightface's bin order: pair i is rows 2i,
    2i + 1) -> the two `(P, D)` sides."""
    embeddings = to_numpy(embeddings)
    if embeddings.ndim == 3 and embeddings.shape[1] == 2:
        return embeddings[:, 0], embeddings[:, 1]
    if embeddings.ndim == 2 and len(embeddings) % 2 == 0:
        return embeddings[0::2], embeddings[1::2]
    raise ValueError(f"Pair embeddings must be (P, 2, D) or interleaved (2P, D), got shape {embeddings.shape}.")


def kfold_bounds(num_samples: int, num_folds: int = NUM_FOLDS) -> np.ndarray:
    """Start offsets (num_folds + 1, the last = num_samples) of the contiguous test folds of an unshuffled
    `KFold`: the first `num_samples % num_folds` folds hold one sample more."""
    if not 2 <= num_folds <= num_samples:
        raise ValueError(f"Cannot split {num_samples} pairs into {num_folds} folds.")
    sizes = np.full(num_folds, num_samples // num_folds)
    sizes[: num_samples % num_folds] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def verification_scores(
    embeddings1, embeddings2, issame, num_folds: int = NUM_FOLDS, thresholds=None
) -> dict[str, float]:
    """Verification of pairs (`embeddings1[i]`, `embeddings2[i]`) labelled `issame[i]`: `accuracy` and
    `accuracy_std` over the folds, `best_threshold` and `best_threshold_std` (squared-L2 distances)."""
    thresholds = THRESHOLDS if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    first, second = (normalized_embeddings(_float64_tensor(side)).numpy() for side in (embeddings1, embeddings2))
    issame = to_numpy(issame).astype(bool).reshape(-1)
    if first.shape != second.shape:
        raise ValueError(f"Pair sides differ in shape: {first.shape} vs {second.shape}.")
    count = min(len(issame), len(first))  # as insightface
    first, second, issame = first[:count], second[:count], issame[:count]
    distances = np.sum((first - second) ** 2, axis=1)
    # correct[t, p]: does threshold t classify pair p right?
    correct = (distances[None, :] < thresholds[:, None]) == issame[None, :]
    bounds = kfold_bounds(count, num_folds)
    fold_hits = np.add.reduceat(correct, bounds[:-1], axis=1).astype(np.float64)  # (T, K) hits per test fold
    fold_sizes = np.diff(bounds).astype(np.float64)
    train_accuracy = (fold_hits.sum(axis=1, keepdims=True) - fold_hits) / (count - fold_sizes)
    best = np.argmax(train_accuracy, axis=0)  # (K,) first maximum, as np.argmax in insightface
    accuracies = fold_hits[best, np.arange(num_folds)] / fold_sizes
    chosen = thresholds[best]
    return {
        "accuracy": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std()),
        "best_threshold": float(chosen.mean()),
        "best_threshold_std": float(chosen.std()),
    }
