"""What every chord-fl strategy shares: seeded device sampling, one message per node, the byte
ledger for both directions, reply checking that drops a bad reply instead of ending the round,
and the per-device rows of clients.csv.

A strategy mixes `FleetMixin` in before its Flower base class, so Flower's own round loop
(`Strategy.start`) drives it and Flower's FedAvg keeps its constructor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common import log

from chord_fl.federation.faults import is_offline
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import CLIENT_COLUMNS, CODE_COLUMNS, RunLog
from chord_fl.federation.world import World
from chord_fl.quant.budget import check_within_budget
from chord_fl.tiers import transfer_seconds
from strategies import protocol


@dataclass(frozen=True)
class FleetRun:
    """What the server hands every strategy."""

    config: RunConfig
    world: World
    partitions: dict[int, int]  # node id -> partition
    log: RunLog
    # Payload and message bytes of the one-time frozen-weights download; None: not needed.
    frozen_download: tuple[int, int] | None
    first_round: int = 1  # > 1 when resuming
    holds_frozen: frozenset[int] = frozenset()  # partitions that downloaded the weights already

    def round_of(self, server_round: int) -> int:
        """The run's round for Flower's loop counter (which restarts at 1 on resumption)."""
        return server_round + self.first_round - 1


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


class FleetMixin:
    budgeted = True  # devices must hold their model within the byte budget

    def __init__(self, *, run: FleetRun, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run
        self._ledger: list[dict[str, Any]] = []
        self._clients: dict[int, dict[str, Any]] = {}  # node id -> this round's row
        self._holds_frozen: set[int] = set(run.holds_frozen)  # partitions
        self.train_ms: dict[int, float] = {}  # node id -> this round's local training time
        self._awaiting: list[int] = []  # nodes sent a message in the current phase
        # Model bytes each device's codes take, computed here: a report must agree with it.
        self.expected_bytes: dict[int, int] = {}

    def summary(self) -> None:
        config = self.run.config
        log(INFO, "\t├──> %s on %s, %s", config.strategy, config.dataset, config.backbone)
        log(
            INFO,
            "\t├──> devices: %d, fraction per round %.2f",
            len(self.run.partitions),
            config.fraction,
        )
        log(INFO, "\t└──> run directory: %s", self.run.log.dir)

    # -- sampling and sending --------------------------------------------------------------

    def sample(self, round_: int) -> list[int]:
        """Node ids taking part in `round_`, drawn over partitions (node ids change every run)."""
        by_partition = sorted(self.run.partitions.items(), key=lambda item: item[1])
        count = max(1, round(self.run.config.fraction * len(by_partition)))
        rng = np.random.default_rng([self.run.config.seed, round_, 0x73616D70])
        chosen = [by_partition[i] for i in np.sort(rng.choice(len(by_partition), count, False))]
        online = []
        for node, partition in chosen:
            if is_offline(self.run.config, self.run.world.tier(partition), round_, partition):
                self.mark(round_, node, "offline")
            else:
                online.append(node)
        return online

    def send(
        self,
        round_: int,
        contents: dict[int, RecordDict],
        message_type: str,
        kind: str,
        payload_bytes: Callable[[int], int],
    ) -> list[Message]:
        """One message per node, each written to the ledger."""
        messages = []
        self._awaiting = list(contents)
        shared: dict[int, int] = {}  # id(content) -> its serialised bytes, computed once
        for node, content in contents.items():
            message = Message(content=content, message_type=message_type, dst_node_id=node)
            self._record_download(node)
            if id(content) not in shared:
                shared[id(content)] = protocol.content_bytes(content)
            size = protocol.message_bytes(message, shared[id(content)])
            self._ledger_row(round_, node, "down", kind, payload_bytes(node), message, size)
            messages.append(message)
        return messages

    def _record_download(self, node: int) -> None:
        partition = self.run.partitions[node]
        if self.run.frozen_download is None or partition in self._holds_frozen:
            return
        self._holds_frozen.add(partition)
        payload, message = self.run.frozen_download
        row = ledger_row(
            self.run.world, 0, node, partition, "down", "frozen-weights", payload, message
        )
        self._ledger.append(row)

    # -- receiving ---------------------------------------------------------------------------

    def receive(
        self,
        round_: int,
        replies: Iterable[Message],
        kind: str,
        payload_bytes: Callable[[Message], int],
    ) -> list[tuple[int, Message]]:
        """(node id, reply) of the replies that came in time and without an error, each written
        to the ledger; the others are logged, written as "error" or "late" and marked, and a
        node that was asked but never answered is marked "timeout"."""
        good = []
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in self.run.partitions:
                log(WARNING, "round %d: reply from unknown node %d ignored", round_, node)
                continue
            answered.add(node)
            if reply.has_error():
                self._ledger_row(round_, node, "up", "error", 0, reply)
                self.mark(round_, node, "error", reply.error.reason)
                continue
            seconds, reason = protocol.read_device_seconds(reply.content)
            if reason:
                self._ledger_row(round_, node, "up", kind, 0, reply)
                self.mark(round_, node, "rejected", reason)
            elif seconds > self.run.config.round_timeout:
                # Arrived after the deadline: the cloud has moved on without it.
                self._ledger_row(round_, node, "up", "late", 0, reply)
                self.mark(round_, node, "timeout")
            else:
                self._ledger_row(round_, node, "up", kind, payload_bytes(reply), reply)
                good.append((node, reply))
        for node in self._awaiting:
            if node not in answered:
                self.mark(round_, node, "timeout", "no reply before the round's timeout")
        self._awaiting = []
        return good

    def mark(self, round_: int, node: int, status: str, reason: str = "") -> None:
        """Give a device this round's status; a reason is logged with the node."""
        if reason:
            partition = self.run.partitions[node]
            log(
                WARNING,
                "round %d: node %d (partition %d) %s: %s",
                round_,
                node,
                partition,
                status,
                reason,
            )
        row = self._client_row(round_, node)
        row["status"] = status
        self._clients[node] = row

    def _client_row(self, round_: int, node: int) -> dict[str, Any]:
        partition = self.run.partitions[node]
        world = self.run.world
        row = dict.fromkeys(CLIENT_COLUMNS, "")
        row.update(
            round=round_,
            partition=partition,
            node_id=node,
            tier=world.tier(partition).name,
            budget_bytes=int(world.budgets[partition]),
        )
        return row

    def _ledger_row(
        self,
        round_: int,
        node: int,
        direction: str,
        kind: str,
        payload: int,
        message: Message,
        size: int | None = None,
    ) -> None:
        size = protocol.message_bytes(message) if size is None else size
        partition = self.run.partitions[node]
        self._ledger.append(
            ledger_row(self.run.world, round_, node, partition, direction, kind, payload, size)
        )

    # -- evaluation replies and the end of a round -----------------------------------------------

    def expect(self, node: int, model_bytes: int, budget: int) -> None:
        """Record the bytes `node`'s model will take; over its budget is a bug: the run fails."""
        if self.budgeted:
            check_within_budget([model_bytes], [budget], [f"partition {self.run.partitions[node]}"])
        self.expected_bytes[node] = int(model_bytes)

    def collect_reports(self, round_: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Check each device's report, write the round's rows and return the round's means."""
        for node, reply in self.receive(round_, replies, "metrics", lambda _: 0):
            report, reason = protocol.read_report(reply.content)
            expected = self.expected_bytes.get(node)
            if not reason and expected is not None and report["model_bytes"] != expected:
                reason = f"reports {report['model_bytes']:.0f} B, its codes take {expected} B"
            if reason:
                self.mark(round_, node, "rejected", reason)
            else:
                self.accept_report(round_, node, report)
        self.expected_bytes = {}
        return self.end_round(round_)

    def accept_report(self, round_: int, node: int, report: dict[str, float]) -> None:
        row = self._client_row(round_, node)
        row.update({key: report[key] for key in report if key in row})
        # FedAvg's device produces its model in the train phase: charge that time too.
        row["adapt_ms"] = report["adapt_ms"] + self.train_ms.pop(node, 0.0)
        row["model_bytes"] = int(report["model_bytes"])
        for column in CODE_COLUMNS:
            if row[column] != "":
                row[column] = int(row[column])
        row["status"] = "ok"
        self._clients[node] = row

    def save_state(self, round_: int) -> None:
        """What a resumed run needs beyond the CSV files (FedAvg: the global weights)."""

    def end_round(self, round_: int) -> MetricRecord | None:
        """Append and flush the round's rows; return its means over devices that answered."""
        rows = sorted(self._clients.values(), key=lambda row: row["partition"])
        self.save_state(round_)
        # By round and partition (stable), not by reply arrival: the same seed, the same file.
        self.run.log.append_ledger(sorted(self._ledger, key=lambda r: (r["round"], r["partition"])))
        self.run.log.append_clients(rows)
        self.run.log.write_summary()
        self._ledger, self._clients = [], {}
        ok = [row for row in rows if row["status"] == "ok"]
        if not ok:
            log(WARNING, "round %d: no device answered successfully", round_)
            return None
        means = {key: float(np.mean([row[key] for row in ok])) for key in protocol.REPORT_KEYS}
        means["devices-ok"] = len(ok)
        return MetricRecord(means)
