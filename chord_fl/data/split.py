"""The time split (docs/design.md, section 2): cloud history, validation target, round targets.

For a user with n items (1-based) and R rounds: the cloud trains on items 1..n-R-1; stage 0 is
validation (window = the history, target = item n-R); stage r = 1..R is evaluation round r
(window = items 1..n-R+r-1, target = item n-R+r). R = 1 is plain leave-one-out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chord_fl.data.sequences import PADDING, SequenceData
from chord_fl.errors import ConfigError

VALIDATION = 0


@dataclass(frozen=True)
class UserSequence:
    """One user's whole sequence, as the user's device holds it (partition i = user i)."""

    partition: int
    items: np.ndarray
    rounds: int

    def _end(self, stage: int) -> int:
        if not 0 <= stage <= self.rounds:
            raise ConfigError(f"stage must be in 0..{self.rounds}, got {stage}")
        return len(self.items) - self.rounds - 1 + stage

    @property
    def history(self) -> np.ndarray:
        """What the cloud may train on."""
        return self.items[: self._end(VALIDATION)]

    def window(self, stage: int) -> np.ndarray:
        """Items the device has seen before `stage`'s target."""
        return self.items[: self._end(stage)]

    def target(self, stage: int) -> int:
        return int(self.items[self._end(stage)])


@dataclass(frozen=True)
class RoundSplit:
    users: tuple[UserSequence, ...]
    rounds: int
    num_items: int
    dropped_users: int

    def __len__(self) -> int:
        return len(self.users)

    def histories(self) -> list[np.ndarray]:
        return [user.history for user in self.users]

    def windows(self, stage: int) -> list[np.ndarray]:
        return [user.window(stage) for user in self.users]

    def targets(self, stage: int) -> np.ndarray:
        return np.array([user.target(stage) for user in self.users], dtype=np.int64)

    def sizes(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "dropped_users": self.dropped_users,
            "history_interactions": int(sum(len(h) for h in self.histories())),
            "validation_targets": len(self.users),
            "round_targets": len(self.users) * self.rounds,
        }


def make_split(data: SequenceData, rounds: int = 1, min_history: int = 2) -> RoundSplit:
    """Split every user; users shorter than `min_history + rounds + 1` are dropped and counted."""
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if min_history < 1:
        raise ConfigError(f"min_history must be >= 1, got {min_history}")
    needed = min_history + rounds + 1
    kept = [seq for seq in data.sequences if len(seq) >= needed]
    if not kept:
        longest = max(len(seq) for seq in data.sequences)
        raise ConfigError(
            f"{data.name}: no user has the {needed} items that rounds={rounds} and "
            f"min_history={min_history} need (longest sequence: {longest})"
        )
    users = tuple(UserSequence(i, seq, rounds) for i, seq in enumerate(kept))
    return RoundSplit(users, rounds, data.num_items, len(data.sequences) - len(kept))


def pad_left(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """The last `length` items of each sequence, left-padded with PADDING: shape (len, length)."""
    batch = np.full((len(sequences), length), PADDING, dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-length:] if length else seq[:0]
        if len(tail):
            batch[row, length - len(tail) :] = tail
    return batch
