"""Caser (Tang & Wang, WSDM 2018): horizontal and vertical convolutions over the last L items.

Differences from the paper, both for the device setting: no user embedding (a shared frozen model
cannot hold one row per user; personalisation is CHORD's job), and one next item per window (T = 1)
so that every backbone trains with the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chord_fl.data.sequences import PADDING
from chord_fl.errors import ConfigError
from chord_fl.models.base import QuantizableTensor, SequentialRecommender


@dataclass(frozen=True)
class CaserConfig:
    hidden: int = 64
    window: int = 5
    vertical_filters: int = 4
    horizontal_filters: int = 16
    dropout: float = 0.5
    max_len: int = 200  # longest history used per training sequence

    def __post_init__(self) -> None:
        if self.window < 1 or self.window > self.max_len:
            raise ConfigError(f"window must be in 1..max_len ({self.max_len}), got {self.window}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class Caser(SequentialRecommender):
    output_table = "output_embedding.weight"

    def __init__(self, num_items: int, config: CaserConfig = CaserConfig()) -> None:
        super().__init__(num_items, config.max_len)
        self.config = config
        hidden, window = config.hidden, config.window
        self.item_embedding = nn.Embedding(num_items + 1, hidden, padding_idx=PADDING)
        self.vertical = nn.Conv2d(1, config.vertical_filters, (window, 1))
        self.horizontal = nn.ModuleList(
            nn.Conv2d(1, config.horizontal_filters, (height, hidden))
            for height in range(1, window + 1)
        )
        self.hidden_layer = nn.Linear(
            config.vertical_filters * hidden + config.horizontal_filters * window,
            hidden,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output_embedding = nn.Embedding(num_items + 1, hidden, padding_idx=PADDING)
        self.output_bias = nn.Embedding(num_items + 1, 1, padding_idx=PADDING)
        nn.init.normal_(self.item_embedding.weight, std=1.0 / hidden)
        nn.init.normal_(self.output_embedding.weight, std=1.0 / hidden)
        nn.init.zeros_(self.output_bias.weight)
        with torch.no_grad():
            self.item_embedding.weight[PADDING].zero_()
            self.output_embedding.weight[PADDING].zero_()

    def _encode_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """(M, window) -> (M, D)."""
        x = self.item_embedding(windows).unsqueeze(1)  # (M, 1, window, D)
        vertical = self.vertical(x).flatten(1)  # (M, vertical_filters * D)
        horizontal = [
            F.relu(conv(x).squeeze(3)).amax(dim=2) for conv in self.horizontal
        ]  # each (M, horizontal_filters)
        z = torch.cat([vertical, *horizontal], dim=1)
        return F.relu(self.hidden_layer(self.dropout(z)))

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        window = self.config.window
        seqs = F.pad(seqs, (max(0, window - seqs.shape[1]), 0), value=PADDING)
        return self._encode_windows(seqs[:, -window:])

    def training_states(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.config.window
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        # Window ending at position t predicts item t + 1.
        windows = F.pad(inputs, (window - 1, 0), value=PADDING).unfold(1, window, 1)
        keep = (inputs != PADDING) & (targets != PADDING)
        return self._encode_windows(windows[keep]), targets[keep]

    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.output_embedding.weight, self.output_bias.weight.squeeze(1)

    def quantizable_tensors(self) -> list[QuantizableTensor]:
        names = ["item_embedding.weight", "vertical.weight"]
        names += [f"horizontal.{i}.weight" for i in range(len(self.horizontal))]
        names += ["hidden_layer.weight", "output_embedding.weight"]
        return [QuantizableTensor(name, channel_axis=0) for name in names]
