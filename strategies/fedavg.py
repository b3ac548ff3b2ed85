"""Flower's FedAvg, extended only to record bytes: devices train the backbone on their own
sequence and exchange fp32 weights. With `quantize_uniform`, each device then quantizes the
aggregated model uniformly to its budget before scoring (FedAvg followed by compression)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from strategies import protocol
from strategies.base import FleetMixin
from strategies.protocol import Task


class LedgerFedAvg(FleetMixin, FedAvg):
    def __init__(self, *, quantize_uniform: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.budgeted = quantize_uniform
        self.evaluate_task = Task.WEIGHTS_UNIFORM if quantize_uniform else Task.WEIGHTS
        self._signature: dict[str, tuple[tuple[int, ...], str]] = {}
        self._asked: list[int] = []

    def initial_arrays(self) -> ArrayRecord:
        return ArrayRecord(self.run.world.prepared.frozen.state_dict())

    def _weights_to(
        self, round_: int, nodes: list[int], arrays: ArrayRecord, task: Task, message_type: str
    ) -> list[Message]:
        size = protocol.weights_nbytes(arrays)
        instruction = protocol.instruction(round_, task)
        content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: instruction})
        contents = dict.fromkeys(nodes, content)
        return self.send(round_, contents, message_type, "weights", lambda _: size)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._signature = protocol.weight_signature(arrays)
        self._asked = self.sample(server_round)
        return self._weights_to(server_round, self._asked, arrays, Task.FIT, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = []
        for node, reply in self.receive(server_round, replies, "weights"):
            examples, reason = protocol.read_weights(reply.content, self._signature)
            arrays = reply.content.array_records.get(protocol.ARRAYS)
            size = protocol.weights_nbytes(arrays) if arrays is not None else 0
            self.record_upload(server_round, node, reply, "weights", size)
            if reason:
                self.mark(server_round, node, "rejected", reason)
                continue
            metrics = reply.content.metric_records[protocol.METRICS]
            self.train_ms[node] = float(metrics.get(protocol.TRAIN_MS, 0.0))
            valid.append((self.run.partitions[node], reply))
        if not valid:
            return None, None
        # Summing in a fixed order (by partition) keeps the aggregate bit-for-bit repeatable.
        return super().aggregate_train(server_round, [reply for _, reply in sorted(valid)])

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._asked = [node for node in self._asked if node in self.train_ms]
        return self._weights_to(
            server_round, self._asked, arrays, self.evaluate_task, MessageType.EVALUATE
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.collect_reports(server_round, self._asked, replies)
