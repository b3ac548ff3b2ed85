"""Negative items for the sampled protocol: 100 items the user never interacted with."""

from __future__ import annotations

import numpy as np

from chord_fl.errors import DataError


def sample_negatives(
    sequences: list[np.ndarray], num_items: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """For each user, `count` distinct items from 1..num_items that are nowhere in their sequence.

    Pass the users' whole sequences (not just the history) so that no future item is a negative.
    Returns an int64 array of shape (len(sequences), count).
    """
    negatives = np.empty((len(sequences), count), dtype=np.int64)
    for row, seq in enumerate(sequences):
        seen = np.unique(seq)
        free = num_items - len(seen)
        if free < count:
            raise DataError(
                f"user {row} has only {free} items they never interacted with; "
                f"{count} negatives were asked for"
            )
        # Rejection sampling is fast while most of the catalogue is unseen; otherwise draw
        # from the explicit complement.
        if free >= 2 * count:
            picked = np.empty(0, dtype=np.int64)
            while len(picked) < count:
                draw = rng.integers(1, num_items + 1, size=2 * count + len(seen))
                draw = draw[~np.isin(draw, seen)]
                picked = np.concatenate([picked, draw])
                _, first = np.unique(picked, return_index=True)
                picked = picked[np.sort(first)]
            negatives[row] = picked[:count]
        else:
            complement = np.setdiff1d(np.arange(1, num_items + 1), seen, assume_unique=True)
            negatives[row] = rng.choice(complement, size=count, replace=False)
    return negatives
