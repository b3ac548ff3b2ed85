"""Ranking metrics: pure functions of the target's rank.

Ranks are pessimistic: a target's rank counts every other candidate scoring at least as high, so
ties (common once channels are pruned) never flatter a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

KS = (5, 10)
METRICS = tuple(f"{name}@{k}" for name in ("hr", "ndcg") for k in KS)


def pessimistic_ranks(scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target among `scores` (B, N), which include the target itself.

    Candidates excluded from ranking should carry -inf in `scores`; the target's own entry counts
    once and is subtracted.
    """
    return (scores >= target_scores.unsqueeze(1)).sum(dim=1) - 1


def per_user_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, np.ndarray]:
    """HR@k and NDCG@k for each user, from 0-based ranks."""
    ranks = np.asarray(ranks)
    hits = {k: ranks < k for k in ks}
    out = {f"hr@{k}": hit.astype(np.float64) for k, hit in hits.items()}
    out.update(
        {f"ndcg@{k}": np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0) for k, hit in hits.items()}
    )
    return out


def mean_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per_user_metrics(ranks, ks).items()}


def mean_and_standard_error(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (None where undefined: no values, or only one)."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean()) if array.size else None
    error = float(array.std(ddof=1) / np.sqrt(array.size)) if array.size > 1 else None
    return mean, error
