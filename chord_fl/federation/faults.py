"""Injected faults, drawn from the seed so a run and its resumption see the same ones.

Each (round, partition) gets one fate: offline (drawn from the device tier's availability, when
`offline` is on), a ClientApp that raises (`fail_rate`), a reply after the round's timeout
(`slow_rate`), or none. Separately, a message of codes may arrive damaged (`corrupt_rate`): one
byte flipped on the way down, which the codec's checks reject. Draws are per device, so one
device's fate never depends on another's.
"""

from __future__ import annotations

import numpy as np

from chord_fl.federation.runconfig import RunConfig
from chord_fl.tiers import Tier

ERROR, SLOW = "error", "slow"


def _uniform(seed: int, round_: int, partition: int, stream: int) -> float:
    return float(np.random.default_rng([seed, round_, partition, stream]).random())


def is_offline(config: RunConfig, tier: Tier, round_: int, partition: int) -> bool:
    return config.offline and _uniform(config.seed, round_, partition, 0x6F66) >= tier.availability


def device_fault(config: RunConfig, round_: int, partition: int) -> str | None:
    """ERROR, SLOW or None for this device in this round."""
    if not config.fail_rate and not config.slow_rate:
        return None
    draw = _uniform(config.seed, round_, partition, 0x6661)
    if draw < config.fail_rate:
        return ERROR
    if draw < config.fail_rate + config.slow_rate:
        return SLOW
    return None


def damaged_downlink(config: RunConfig, round_: int, partition: int) -> int | None:
    """A seeded nonzero byte to XOR into this device's codes this round, or None (intact)."""
    if not config.corrupt_rate:
        return None
    rng = np.random.default_rng([config.seed, round_, partition, 0x636F])
    return int(rng.integers(1, 256)) if rng.random() < config.corrupt_rate else None


def damage(payload: bytes, mask: int) -> bytes:
    """`payload` with its middle byte XORed by `mask`, as a bad link would deliver it."""
    damaged = bytearray(payload)
    damaged[len(damaged) // 2] ^= mask
    return bytes(damaged)
