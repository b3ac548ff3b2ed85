"""The interface every backbone implements, and what they share: scoring, the next-item loss."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chord_fl.data.sequences import PADDING
from chord_fl.data.split import pad_left
from chord_fl.errors import ConfigError
from chord_fl.models.losses import chunked_cross_entropy

LOSSES = ("sampled", "ce", "bce", "ce+bce")


@dataclass(frozen=True)
class QuantizableTensor:
    """A weight tensor whose output channels can each get their own precision."""

    name: str  # the parameter's name in the state dict
    channel_axis: int  # the axis indexing channels (rows of a Linear, filters of a Conv)


class SequentialRecommender(nn.Module, abc.ABC):
    """A next-item recommender over left-padded item sequences (0 = padding).

    Subclasses define `encode` and `training_states`; scoring and the loss live here once.
    `output_table` names the tensor whose rows score items. Items marked in `unavailable` (for
    example items whose row a device pruned) score -inf: they cannot be recommended.
    """

    output_table = "item_embedding.weight"

    def __init__(self, num_items: int, max_len: int) -> None:
        super().__init__()
        if num_items < 1 or max_len < 1:
            raise ConfigError(f"num_items and max_len must be >= 1, got {num_items}, {max_len}")
        self.num_items = num_items
        self.max_len = max_len
        self.unavailable: torch.Tensor | None = None  # (num_items + 1,) bool, not a weight

    @abc.abstractmethod
    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (B, D) representation of what comes next."""

    @abc.abstractmethod
    def training_states(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L+1) sequences -> states (M, D) and the next item (M,) each state should predict."""

    @abc.abstractmethod
    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(num_items + 1, D) item vectors that states are scored against, and an optional bias."""

    @abc.abstractmethod
    def quantizable_tensors(self) -> list[QuantizableTensor]:
        """The tensors a precision strategy covers, each with its channel axis."""

    @property
    def device(self) -> torch.device:
        return self.output_embeddings()[0].device

    @property
    def hidden_size(self) -> int:
        """Width of `encode`'s output: the profile a device uploads has this many numbers."""
        return self.output_embeddings()[0].shape[1]

    def _logits(self, states: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of (M, D) states against all items (None), items shared by every row (K,),
        or each row's own items (M, C)."""
        weight, bias = self.output_embeddings()
        if items is None or items.dim() == 1:
            chosen = weight if items is None else weight[items]
            logits = states @ chosen.T
            if bias is not None:
                logits = logits + (bias if items is None else bias[items])
            if items is None:
                logits[..., PADDING] = float("-inf")
            return logits
        logits = (states.unsqueeze(-2) * weight[items]).sum(-1)
        return logits if bias is None else logits + bias[items]

    def pad_windows(self, windows: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, L) the windows' last items, left-padded only to the longest of them (L <= max_len).

        Padding changes no score (SASRec's positions count from the right and padding keys are
        masked; Caser reads a fixed window), so padding every window to max_len only costs time:
        on Yelp and Amazon, where histories average about ten items, 95% of it."""
        length = min(self.max_len, max((len(window) for window in windows), default=1))
        return torch.from_numpy(pad_left(list(windows), max(length, 1))).to(self.device)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Full scores, so that `torch.func.functional_call` can run the model on other weights."""
        return self.full_scores(seqs)

    def score(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(B, L) sequences and (B, C) candidate items -> (B, C) scores."""
        return self.score_encoded(self.encode(seqs), candidates)

    def full_scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) sequences -> (B, num_items + 1) scores; the padding column is -inf."""
        return self.full_scores_encoded(self.encode(seqs))

    def score_encoded(self, states: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """`score` from `encode`'s output: one encoding can serve both protocols."""
        scores = self._logits(states, candidates)
        if self.unavailable is not None:
            scores = scores.masked_fill(self.unavailable[candidates], float("-inf"))
        return scores

    def full_scores_encoded(self, states: torch.Tensor) -> torch.Tensor:
        scores = self._logits(states)
        if self.unavailable is not None:
            scores = scores.masked_fill(self.unavailable, float("-inf"))
        return scores

    def training_loss(
        self,
        seqs: torch.Tensor,
        loss: str = "sampled",
        negatives: int = 256,
        ce_dtype: str = "float32",
    ) -> torch.Tensor:
        """Next-item loss over every position of (B, L+1) sequences.

        "ce": softmax over the whole catalogue. "sampled": softmax over the target and `negatives`
        uniformly drawn items shared by the batch (cheap for large catalogues, and close to "ce").
        "bce": one sampled negative per position, binary cross-entropy (the SASRec paper's loss).
        "ce+bce": their sum over one encoding. Cross-entropy ignores where the logits sit, and
        the binary term pins uniformly drawn items below zero, the way the sampled protocol
        draws its negatives. `ce_dtype` is the dtype of the "ce" term's products and softmax
        (see `chunked_cross_entropy`).
        """
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
        states, targets = self.training_states(seqs)
        terms = [
            self._loss_term(states, targets, term, negatives, ce_dtype) for term in loss.split("+")
        ]
        return torch.stack(terms).sum() if len(terms) > 1 else terms[0]

    def _loss_term(
        self, states: torch.Tensor, targets: torch.Tensor, loss: str, negatives: int, ce_dtype: str
    ) -> torch.Tensor:
        if loss == "ce":
            weight, bias = self.output_embeddings()
            return chunked_cross_entropy(states, weight, targets, bias, PADDING, dtype=ce_dtype)
        if loss == "sampled":
            shared = torch.randint(1, self.num_items + 1, (negatives,), device=targets.device)
            positive = self._logits(states, targets.unsqueeze(-1))
            negative = self._logits(states, shared)
            negative = negative.masked_fill(
                shared.unsqueeze(0) == targets.unsqueeze(1), float("-inf")
            )
            logits = torch.cat([positive, negative], dim=1)
            return F.cross_entropy(logits, torch.zeros_like(targets))
        sampled = torch.randint(1, self.num_items + 1, targets.shape, device=targets.device)
        positive = self._logits(states, targets.unsqueeze(-1)).squeeze(-1)
        negative = self._logits(states, sampled.unsqueeze(-1)).squeeze(-1)
        return F.softplus(-positive).mean() + F.softplus(negative).mean()
