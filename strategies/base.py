"""What every chord-fl strategy shares: seeded device sampling, one message per node charged to the
byte ledger (`strategies.ledger`), reply triage that drops a bad reply instead of ending the round
(`strategies.replies`), and the per-device rows of clients.csv, kept in one `RoundState`.

A strategy mixes `FleetMixin` in before its Flower base class, so Flower's own round loop
(`Strategy.start`) drives it and Flower's FedAvg keeps its constructor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common import log

from chord_fl.federation.faults import is_offline
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import CLIENT_COLUMNS, CODE_COLUMNS, RunLog
from chord_fl.federation.world import World
from chord_fl.machine import memory_mib
from chord_fl.quant.budget import check_within_budget
from strategies import protocol
from strategies.ledger import Ledger
from strategies.replies import ERROR, OK, REJECTED, TIMEOUT, triage


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


@dataclass
class RoundState:
    """What a strategy learns during one round; a fresh one starts each round."""

    clients: dict[int, dict[str, Any]] = field(default_factory=dict)  # node id -> clients.csv row
    asked: list[int] = field(default_factory=list)  # nodes sent a message in the current phase
    train_ms: dict[int, float] = field(default_factory=dict)  # node id -> local training time
    # Model bytes each device's codes take, computed here: its report must agree.
    model_bytes: dict[int, int] = field(default_factory=dict)


LEDGER_KIND = {ERROR: "error", TIMEOUT: "late"}  # how the ledger names a reply that failed


class FleetMixin:
    budgeted = True  # devices must hold their model within the byte budget

    def __init__(self, *, run: FleetRun, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run
        self.ledger = Ledger(run.world, run.partitions, run.frozen_download, run.holds_frozen)
        self.current = RoundState()
        self.round_started = time.perf_counter()

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

    def drawn(self, round_: int) -> list[tuple[int, int]]:
        """(node id, partition) of the devices the cloud asks in `round_`, drawn over partitions
        (node ids change every run) from the seed and the round alone, so known in advance."""
        by_partition = sorted(self.run.partitions.items(), key=lambda item: item[1])
        count = max(1, round(self.run.config.fraction * len(by_partition)))
        rng = np.random.default_rng([self.run.config.seed, round_, 0x73616D70])
        return [by_partition[i] for i in np.sort(rng.choice(len(by_partition), count, False))]

    def sample(self, round_: int) -> list[int]:
        """Node ids taking part in `round_`: those drawn that are online."""
        online = []
        for node, partition in self.drawn(round_):
            if is_offline(self.run.config, self.run.world.tier(partition), round_, partition):
                self.set_status(round_, node, "offline")
            else:
                online.append(node)
        return online

    def build_messages(
        self,
        round_: int,
        contents: dict[int, RecordDict],
        message_type: str,
        kind: str,
        payload_bytes: Callable[[int], int],
    ) -> list[Message]:
        """One message per node, each charged to the ledger as it is about to be sent."""
        messages = []
        self.current.asked = list(contents)
        shared: dict[int, int] = {}  # id(content) -> its serialised bytes, computed once
        for node, content in contents.items():
            message = Message(content=content, message_type=message_type, dst_node_id=node)
            if id(content) not in shared:
                shared[id(content)] = protocol.content_bytes(content)
            size = protocol.message_bytes(message, shared[id(content)])
            self.ledger.record(round_, node, "down", kind, payload_bytes(node), size)
            messages.append(message)
        return messages

    # -- receiving ---------------------------------------------------------------------------

    def accept_replies(
        self,
        round_: int,
        replies: Iterable[Message],
        charge: Callable[[Message], tuple[str, int]],
    ) -> list[tuple[int, Message]]:
        """(node id, reply) of the replies that came in time and without an error, each charged
        to the ledger as `charge` says (its kind and payload bytes); the others are charged
        without payload and get their status, and a node that was asked but never answered is
        marked "timeout"."""
        accepted = []
        answered = set()
        for item in triage(replies, self.run.partitions, round_, self.run.config.round_timeout):
            answered.add(item.node)
            size = protocol.message_bytes(item.reply)
            if item.status == OK:
                kind, payload = charge(item.reply)
                self.ledger.record(round_, item.node, "up", kind, payload, size)
                accepted.append((item.node, item.reply))
                continue
            # An error reply has no content to look at.
            kind = LEDGER_KIND.get(item.status) or charge(item.reply)[0]
            self.ledger.record(round_, item.node, "up", kind, 0, size)
            self.set_status(round_, item.node, item.status, item.reason)
        for node in self.current.asked:
            if node not in answered:
                self.set_status(round_, node, TIMEOUT, "no reply before the round's timeout")
        self.current.asked = []
        return accepted

    def set_status(self, round_: int, node: int, status: str, reason: str = "") -> None:
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
        self.current.clients[node] = row

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

    # -- evaluation replies and the end of a round -----------------------------------------------

    def expect_model_bytes(self, node: int, model_bytes: int, budget: int) -> None:
        """Record the bytes `node`'s model will take; over its budget is a bug: the run fails."""
        if self.budgeted:
            check_within_budget([model_bytes], [budget], [f"partition {self.run.partitions[node]}"])
        self.current.model_bytes[node] = int(model_bytes)

    def collect_reports(self, round_: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Check each device's report, write the round's rows and return the round's means."""
        for node, reply in self.accept_replies(round_, replies, self.charge_report):
            content = self.take_next_upload(round_, node, reply.content)
            report, reason = protocol.read_report(content)
            expected = self.current.model_bytes.get(node)
            if not reason and expected is not None:
                reason = _size_mismatch(
                    report["model_bytes"], expected, self.run.config.refine_items
                )
            if reason:
                self.set_status(round_, node, REJECTED, reason)
            else:
                self.accept_report(round_, node, report)
        return self.end_round(round_)

    def charge_report(self, reply: Message) -> tuple[str, int]:
        """A report's ledger kind and payload bytes (what it carries besides its metrics)."""
        return "metrics", 0

    def take_next_upload(self, round_: int, node: int, content: RecordDict) -> RecordDict:
        """A report without the next round's upload it may carry, which a strategy that asks
        for one keeps (`CodeStrategy`); here nothing is asked, so a report stays whole."""
        return content

    def accept_report(self, round_: int, node: int, report: dict[str, float]) -> None:
        row = self._client_row(round_, node)
        row.update({key: report[key] for key in report if key in row})
        # FedAvg's device produces its model in the train phase: charge that time too.
        row["adapt_ms"] = report["adapt_ms"] + self.current.train_ms.get(node, 0.0)
        row["model_bytes"] = int(report["model_bytes"])
        for column in CODE_COLUMNS:
            if row[column] != "":
                row[column] = int(row[column])
        row["status"] = OK
        self.current.clients[node] = row

    def save_state(self, round_: int) -> None:
        """What a resumed run needs beyond the CSV files (FedAvg: the global weights)."""

    def end_round(self, round_: int) -> MetricRecord | None:
        """Append and flush the round's rows; return its means over devices that answered."""
        # By partition, not by reply arrival: the same seed, the same file.
        rows = sorted(self.current.clients.values(), key=lambda row: row["partition"])
        self.save_state(round_)
        self.ledger.flush(self.run.log)
        self.run.log.append_round(self._round_row(round_))
        self.run.log.append_clients(rows)  # last: the rows that mark the round complete
        self.run.log.write_summary()
        self.current = RoundState()
        ok = [row for row in rows if row["status"] == OK]
        if not ok:
            log(WARNING, "round %d: no device answered successfully", round_)
            return None
        means = {key: float(np.mean([row[key] for row in ok])) for key in protocol.REPORT_KEYS}
        means["devices-ok"] = len(ok)
        return MetricRecord(means)

    def _round_row(self, round_: int) -> dict[str, Any]:
        now = time.perf_counter()
        row: dict[str, Any] = {"round": round_, "wall_s": round(now - self.round_started, 3)}
        self.round_started = now
        memory = memory_mib()
        if memory is not None:
            row["server_rss_mib"], row["server_peak_rss_mib"] = (round(m, 1) for m in memory)
        return row


def _size_mismatch(reported: float, expected: int, refined: bool) -> str | None:
    """Why a device's reported model size is wrong: it must be what its codes take, or no more on
    a device that re-spreads its item table's bytes (`refine-items`)."""
    if reported == expected or (refined and reported < expected):
        return None
    return f"reports {reported:.0f} B, its codes take {expected} B"
