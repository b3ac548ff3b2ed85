"""The popularity ranker: scores every item by how often the cloud history holds it."""

from __future__ import annotations

import numpy as np
import torch

from chord_fl.models.base import QuantizableTensor, SequentialRecommender


class Popularity(SequentialRecommender):
    """A sanity baseline; it ignores the sequence, so any backbone must beat it."""

    def __init__(self, num_items: int, max_len: int = 1) -> None:
        super().__init__(num_items, max_len)
        self.register_buffer("counts", torch.zeros(num_items + 1))

    def fit(self, histories: list[np.ndarray]) -> Popularity:
        counts = np.bincount(np.concatenate(histories), minlength=self.num_items + 1)
        self.counts.copy_(torch.as_tensor(counts, dtype=torch.float32))
        self.counts[0] = float("-inf")
        return self

    def score(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.counts[candidates]

    def full_scores(self, seqs: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(seqs.shape[0], -1).clone()

    def quantizable_tensors(self) -> list[QuantizableTensor]:
        return []
