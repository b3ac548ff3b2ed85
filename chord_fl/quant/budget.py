"""Byte arithmetic of a device's model, in one place.

A device's budget is all-in: the fp32 tensors left unquantized, the packed 2-bit codes, and every
stored channel's packed integers and fp16 scale. A code strategy's channels get what is left after
the fixed bytes; a uniform model needs no codes, so it gets those bytes too. Every byte count the
cloud or a device reports goes through these functions, and `check_within_budget` is the one check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chord_fl.errors import BudgetExceeded
from chord_fl.quant.channels import SCALE_BYTES, ChannelMap, CodeTable

UNIFORM_BITS = tuple(range(1, 9))


def channel_budget(channels: ChannelMap, budgets: np.ndarray) -> np.ndarray:
    """(D,) bytes left for the channels of (D,) whole-model budgets."""
    return np.asarray(budgets, dtype=np.float64) - channels.fixed_bytes


def coded_bytes(channels: ChannelMap, table: CodeTable, codes: np.ndarray) -> np.ndarray:
    """Whole-model bytes under codes (D, C), as (D,) int64; a (C,) vector gives a 0-d array."""
    codes = np.asarray(codes, dtype=np.intp)
    cost = channels.cost(table)
    return channels.fixed_bytes + cost[np.arange(cost.shape[0]), codes].sum(axis=-1)


def floor_bytes(channels: ChannelMap, table: CodeTable) -> int:
    """The smallest coded model: every channel pruned."""
    return int(channels.fixed_bytes + channels.cost(table)[:, 0].sum())


def uniform_bytes(channels: ChannelMap, bits: int, per_tensor: bool) -> int:
    """Whole-model bytes of a uniform `bits`-wide model: no codes; per-channel scales pack each
    channel on its own (one fp16 scale each), a per-tensor scale packs the tensor as one run."""
    if bits not in UNIFORM_BITS:
        raise ValueError(f"uniform bits must be in 1..8, got {bits}")
    total = channels.unquantized_bytes
    for group in channels.groups:
        if per_tensor:
            total += -(-group.channels * group.elements * bits // 8) + SCALE_BYTES
        else:
            total += group.channels * (-(-group.elements * bits // 8) + SCALE_BYTES)
    return total


def widest_uniform(channels: ChannelMap, budget: int) -> tuple[int, bool] | None:
    """(bits, per_tensor) of the widest uniform model within `budget`, per-channel scales when
    both fit at that width (they never cost more bits and fit each channel better); None when not
    even a 1-bit per-tensor model fits."""
    for bits in reversed(UNIFORM_BITS):
        for per_tensor in (False, True):
            if uniform_bytes(channels, bits, per_tensor) <= budget:
                return bits, per_tensor
    return None


def check_within_budget(spent: np.ndarray, budgets: np.ndarray, who: Sequence[str]) -> None:
    """BudgetExceeded naming the first of `who` whose model takes more than its budget: a model
    over budget is a bug, never a result."""
    spent, budgets = np.asarray(spent), np.asarray(budgets)
    over = np.flatnonzero(spent > budgets)
    if over.size:
        first = int(over[0])
        raise BudgetExceeded(
            f"{who[first]} was given a model of {int(spent[first])} B, over its budget of "
            f"{int(budgets[first])} B ({over.size} over budget in all)"
        )
