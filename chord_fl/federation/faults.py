"""Injected faults, drawn from the seed so a run and its resumption see the same ones.

Each (round, partition) gets one fate: offline (drawn from the device tier's availability, when
`offline` is on), a ClientApp that raises (`fail_rate`), a reply after the round's timeout
(`slow_rate`), or none. Draws are per device, so one device's fate never depends on another's.
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
