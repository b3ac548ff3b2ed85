"""From an interaction table to per-user item sequences: time order, count filter, id remapping."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from chord_fl.errors import ConfigError, DataError

PADDING = 0
"""Item id 0 is padding; real items are 1..num_items."""


@dataclass(frozen=True)
class SequenceData:
    """Every kept user's items in time order, with ids remapped to 1..num_items."""

    name: str
    sequences: tuple[np.ndarray, ...]
    num_items: int
    raw_user_ids: np.ndarray
    raw_item_ids: np.ndarray  # raw id of item i is raw_item_ids[i - 1]
    stats: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(seq) for seq in self.sequences))


def filter_counts(frame: pd.DataFrame, user_min: int = 0, item_min: int = 0) -> pd.DataFrame:
    """Drop items seen fewer than `item_min` times and users with fewer than `user_min` items,
    repeating until both hold (the k-core of the interaction graph)."""
    if user_min < 0 or item_min < 0:
        raise ConfigError(
            f"count filters must be >= 0, got user_min={user_min} item_min={item_min}"
        )
    while True:
        item_counts = frame["item"].map(frame["item"].value_counts())
        user_counts = frame["user"].map(frame["user"].value_counts())
        keep = (item_counts >= item_min) & (user_counts >= user_min)
        if keep.all():
            return frame
        frame = frame[keep]


def build_sequences(
    frame: pd.DataFrame, name: str, user_min: int = 0, item_min: int = 0
) -> SequenceData:
    """Time-order each user's interactions (ties keep file order) and remap ids.

    Users and items are numbered in the sorted order of their raw ids, so the numbering is a pure
    function of the file and the filters.
    """
    before = {
        "users": int(frame["user"].nunique()),
        "items": int(frame["item"].nunique()),
        "interactions": len(frame),
    }
    frame = filter_counts(frame, user_min, item_min)
    if frame.empty:
        raise DataError(
            f"{name}: no interactions left after filtering "
            f"(user_min={user_min}, item_min={item_min})"
        )
    # A stable sort keeps the file's order within equal timestamps.
    frame = frame.reset_index(drop=True).sort_values(["user", "timestamp"], kind="stable")
    raw_items, item_codes = np.unique(frame["item"].to_numpy(), return_inverse=True)
    item_codes = item_codes.astype(np.int64) + 1
    raw_users, starts, counts = np.unique(
        frame["user"].to_numpy(), return_index=True, return_counts=True
    )
    sequences = tuple(item_codes[s : s + c] for s, c in zip(starts, counts, strict=True))
    stats = {
        "before_filter": before,
        "user_min": user_min,
        "item_min": item_min,
    }
    return SequenceData(name, sequences, len(raw_items), raw_users, raw_items, stats)
