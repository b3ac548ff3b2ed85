"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

Kept from the paper: the item embedding is shared by input and output, scaled by sqrt(D); learned
position embeddings; a causal mask; padding positions are zeroed after every block. Attention uses
separate query/key/value/output Linear layers so that each has its own rows (channels) to quantize.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chord_fl.data.sequences import PADDING
from chord_fl.errors import ConfigError
from chord_fl.models import dropout as cheap
from chord_fl.models.base import QuantizableTensor, SequentialRecommender


@dataclass(frozen=True)
class SASRecConfig:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    # No dropout by default: under the default training it held learning back on MovieLens-100K
    # (test NDCG@10, full ranking: 0.0806 without, 0.0738 with 0.2 outside attention, 0.0692 with
    # 0.2 everywhere). On MovieLens-1M 0.2 everywhere does better (README, "Backbone training
    # speed").
    dropout: float = 0.0
    attention_dropout: float = 0.0  # on attention weights
    # On the CPU, dropout masks from 16-bit random numbers, and attention computed explicitly
    # while training with attention dropout (models/dropout.py): a MovieLens-1M epoch at 0.2 ran
    # 1.33x faster on 2 cores. False: torch's masks and fused attention, as before.
    fast_dropout: bool = True
    max_len: int = 200

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")


def dropout_layer(config: SASRecConfig) -> nn.Module:
    return cheap.Dropout(config.dropout) if config.fast_dropout else nn.Dropout(config.dropout)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        hidden = config.hidden
        self.heads = config.heads
        self.dropout_p = config.attention_dropout
        self.fast_dropout = config.fast_dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, D/H)
            return t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        query, key, value = split(self.query(x)), split(self.key(x)), split(self.value(x))
        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p and self.fast_dropout and x.device.type == "cpu":
            # scaled_dot_product_attention draws its dropout mask with the slow bernoulli_
            scores = query @ key.transpose(-2, -1) / (hidden // self.heads) ** 0.5
            weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            y = cheap.dropout(weights, dropout_p, training=True) @ value
        else:
            y = F.scaled_dot_product_attention(
                query, key, value, attn_mask=allowed, dropout_p=dropout_p
            )
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden))


class Block(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        hidden = config.hidden
        self.attention_norm = nn.LayerNorm(hidden)
        self.attention = CausalSelfAttention(config)
        self.feed_forward_norm = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            dropout_layer(config),
            nn.Linear(hidden, hidden),
        )
        self.dropout = dropout_layer(config)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), allowed))
        x = x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        return x * real


class SASRec(SequentialRecommender):
    def __init__(self, num_items: int, config: SASRecConfig = SASRecConfig()) -> None:
        super().__init__(num_items, config.max_len)
        self.config = config
        self.item_embedding = nn.Embedding(num_items + 1, config.hidden, padding_idx=PADDING)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.embedding_dropout = dropout_layer(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(config.hidden)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        with torch.no_grad():
            self.item_embedding.weight[PADDING].zero_()

    def _states(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, D); the last position always gets the last position embedding."""
        seqs = seqs[:, -self.max_len :]
        length = seqs.shape[1]
        real = (seqs != PADDING).unsqueeze(-1)
        positions = torch.arange(self.max_len - length, self.max_len, device=seqs.device)
        x = self.item_embedding(seqs) * self.config.hidden**0.5 + self.position_embedding(positions)
        x = self.embedding_dropout(x) * real
        causal = torch.ones(length, length, dtype=torch.bool, device=seqs.device).tril()
        # Padding keys are hidden; each position may always see itself so no row is all-masked.
        allowed = (causal & real.transpose(1, 2)) | torch.eye(
            length, dtype=torch.bool, device=seqs.device
        )
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L), broadcast over heads
        for block in self.blocks:
            x = block(x, allowed, real)
        return self.final_norm(x)

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        return self._states(seqs)[:, -1]

    def training_states(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        states = self._states(inputs)
        inputs, targets = inputs[:, -self.max_len :], targets[:, -self.max_len :]
        keep = (inputs != PADDING) & (targets != PADDING)
        return states[keep], targets[keep]

    def output_embeddings(self) -> tuple[torch.Tensor, None]:
        return self.item_embedding.weight, None

    def quantizable_tensors(self) -> list[QuantizableTensor]:
        return [
            QuantizableTensor(name, channel_axis=0)
            for name, parameter in self.named_parameters()
            if parameter.dim() == 2 and name != "position_embedding.weight"
        ]
