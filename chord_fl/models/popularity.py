"""The popularity ranker: scores every item by how often the cloud history holds it."""

from __future__ import annotations

import numpy as np
import torch

from chord_fl.errors import ConfigError
from chord_fl.models.base import QuantizableTensor, SequentialRecommender


class Popularity(SequentialRecommender):
    """A sanity baseline; it ignores the sequence, so any backbone must beat it."""

    def __init__(self, num_items: int, max_len: int = 1) -> None:
        super().__init__(num_items, max_len)
        self.register_buffer("counts", torch.zeros(num_items + 1))

    def fit(self, histories: list[np.ndarray]) -> Popularity:
        counts = np.bincount(np.concatenate(histories), minlength=self.num_items + 1)
        self.counts.copy_(torch.as_tensor(counts, dtype=torch.float32))
        return self

    # One state of 1 against a one-wide "embedding" of counts: every score is the item's count.
    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        return self.counts.new_ones(seqs.shape[0], 1)

    def output_embeddings(self) -> tuple[torch.Tensor, None]:
        return self.counts[:, None], None

    def training_states(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ConfigError("the popularity ranker is fitted by counting (`fit`), not trained")

    def quantizable_tensors(self) -> list[QuantizableTensor]:
        return []
