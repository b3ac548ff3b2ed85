"""The byte ledger: one row per message in either direction, with its time on the device's link.

Rows of a round are kept until the round ends and then written in a fixed order (round,
partition), so the same seed gives the same file whatever order replies arrive in.
"""

from __future__ import annotations

from typing import Any

from chord_fl.federation.runlog import RunLog
from chord_fl.federation.world import World
from chord_fl.tiers import transfer_seconds


def ledger_row(
    world: World,
    round_: int,
    node: int,
    partition: int,
    direction: str,
    kind: str,
    payload: int,
    message_size: int,
) -> dict[str, Any]:
    """One ledger row; transfer time over the device tier's link in that direction."""
    tier = world.tier(partition)
    bps = tier.downlink_bps if direction == "down" else tier.uplink_bps
    return {
        "round": round_,
        "node_id": node,
        "partition": partition,
        "tier": tier.name,
        "direction": direction,
        "kind": kind,
        "payload_bytes": int(payload),
        "message_bytes": int(message_size),
        "transfer_s": round(transfer_seconds(message_size, bps), 6),
    }


class Ledger:
    """The current round's rows, and which devices already hold the frozen weights (a device
    downloads them once, as round 0 traffic, before its first message)."""

    def __init__(
        self,
        world: World,
        partitions: dict[int, int],
        frozen_download: tuple[int, int] | None,
        holds_frozen: frozenset[int] = frozenset(),
    ) -> None:
        self.world = world
        self.partitions = partitions  # node id -> partition
        self.frozen_download = frozen_download  # (payload, message) bytes; None: not needed
        self.holds_frozen = set(holds_frozen)  # partitions
        self.rows: list[dict[str, Any]] = []

    def record(
        self, round_: int, node: int, direction: str, kind: str, payload: int, size: int
    ) -> None:
        partition = self.partitions[node]
        if direction == "down":
            self._charge_frozen_download(node, partition)
        self.rows.append(
            ledger_row(self.world, round_, node, partition, direction, kind, payload, size)
        )

    def _charge_frozen_download(self, node: int, partition: int) -> None:
        if self.frozen_download is None or partition in self.holds_frozen:
            return
        self.holds_frozen.add(partition)
        payload, message = self.frozen_download
        self.rows.append(
            ledger_row(self.world, 0, node, partition, "down", "frozen-weights", payload, message)
        )

    def flush(self, log: RunLog) -> None:
        log.append_ledger(sorted(self.rows, key=lambda row: (row["round"], row["partition"])))
        self.rows = []
