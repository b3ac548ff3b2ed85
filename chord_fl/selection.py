"""Choosing among trained candidates (epochs, recipes) by their per-user validation scores.

A validation NDCG's standard error is near the differences between epochs, so the highest of many
candidates is partly the luckiest noise: a candidate replaces a reference only when it beats it by
a margin in paired standard errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chord_fl.metrics import mean_and_standard_error


def improves(candidate: np.ndarray, kept: np.ndarray, margin: float) -> bool:
    """Whether per-user scores `candidate` beat `kept` (the same users): a positive mean paired
    difference of at least `margin` standard errors."""
    mean, error = mean_and_standard_error(np.asarray(candidate) - np.asarray(kept))
    return bool(mean > 0 and mean >= margin * (error or 0.0))


def best_epoch(scores: Sequence[np.ndarray]) -> int:
    """The first epoch with the highest mean score (epoch 0: the untrained start)."""
    return int(np.argmax([np.mean(per_user) for per_user in scores]))


def patience_spent(scores: Sequence[np.ndarray], patience: int) -> bool:
    """Whether `patience` epochs have passed without a higher mean score: training stops then,
    not while a gradual climb goes on whose single steps are too small to be significant."""
    return len(scores) - 1 - best_epoch(scores) >= patience


def kept_epoch(scores: Sequence[np.ndarray], margin: float) -> int:
    """The best epoch if it beats the start by `margin` paired standard errors, else the start."""
    best = best_epoch(scores)
    return best if improves(scores[best], scores[0], margin) else 0
