"""Communication cost per device, read from a run's ledger: the one-time download, the cost of an
average round, cumulative bytes over a horizon of rounds, and the round where a strategy's
cumulative bytes fall to a reference's (the break-even round).

Past the rounds a run measured, cumulative bytes are extrapolated as one-time + rounds x the mean
measured round; every figure and table marks which rounds are measured.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from simulations.report import (
    RunDir,
    bytes_by_round,
    read_ledger,
    read_summary,
    run_label,
    total_bytes,
)

DEFAULT_HORIZON = 100


@dataclass(frozen=True)
class CommunicationCost:
    """Message bytes per device (serialised, what the radio carries) of one run."""

    strategy: str
    devices: int
    rounds: int  # rounds the run measured
    one_time: float  # round 0: the partition query and any one-time download
    down_per_round: float  # mean over the measured rounds
    up_per_round: float

    @property
    def per_round(self) -> float:
        return self.down_per_round + self.up_per_round

    def cumulative(self, horizon: int) -> np.ndarray:
        """Bytes per device after rounds 0..horizon (index = round)."""
        return self.one_time + self.per_round * np.arange(horizon + 1)


def communication_cost(run_dir: RunDir) -> CommunicationCost:
    summary = read_summary(run_dir)
    devices, rounds = int(summary["devices"]), len(summary["rounds"])
    by_round = bytes_by_round(read_ledger(run_dir))
    one_time = by_round.get(0, Counter())
    in_rounds = total_bytes(by_round, one_time=False)
    per_device_round = devices * max(rounds, 1)
    return CommunicationCost(
        strategy=run_label(summary),
        devices=devices,
        rounds=rounds,
        one_time=(one_time["down_message"] + one_time["up_message"]) / devices,
        down_per_round=in_rounds["down_message"] / per_device_round,
        up_per_round=in_rounds["up_message"] / per_device_round,
    )


def break_even_round(cost: CommunicationCost, reference: CommunicationCost) -> int | None:
    """The first round >= 1 after which `cost` has spent no more than `reference` per device;
    None when that never happens (its rounds cost no less and it starts higher)."""
    if cost.cumulative(1)[1] <= reference.cumulative(1)[1]:
        return 1
    saving = reference.per_round - cost.per_round
    if saving <= 0:
        return None
    return math.ceil((cost.one_time - reference.one_time) / saving)
