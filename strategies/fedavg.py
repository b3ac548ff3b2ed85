"""Flower's FedAvg, extended only to record bytes: devices train the backbone on their own
sequence and exchange fp32 weights. With `quantize_uniform`, each device then quantizes the
aggregated model uniformly to its budget before scoring (FedAvg followed by compression)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from chord_fl.errors import ConfigError
from chord_fl.methods import uniform_widths
from chord_fl.quant.budget import uniform_bytes
from strategies import protocol
from strategies.base import FleetMixin
from strategies.protocol import Task
from strategies.replies import REJECTED


class LedgerFedAvg(FleetMixin, FedAvg):
    def __init__(self, *, quantize_uniform: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.budgeted = quantize_uniform
        self.evaluate_task = Task.WEIGHTS_UNIFORM if quantize_uniform else Task.WEIGHTS
        self._signature: dict[str, tuple[tuple[int, ...], str]] = {}
        self._weights_bytes = 0  # fp32 bytes of the global model: each direction's payload
        self._latest: ArrayRecord | None = None  # the global weights after this round

    def initial_arrays(self) -> ArrayRecord:
        """The frozen backbone, or the global weights of the round a resumed run continues from."""
        done = self.run.first_round - 1
        if done:
            return ArrayRecord(load_weights(weights_path(self.run.log.dir, done)))
        return ArrayRecord(self.run.world.prepared.frozen.state_dict())

    def _weights_to(
        self, round_: int, nodes: list[int], arrays: ArrayRecord, task: Task, message_type: str
    ) -> list[Message]:
        instruction = protocol.instruction(round_, task)
        content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: instruction})
        contents = dict.fromkeys(nodes, content)
        return self.build_messages(
            round_, contents, message_type, "weights", lambda _: self._weights_bytes
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        round_ = self.run.round_of(server_round)
        self._signature = protocol.weight_signature(arrays)
        self._weights_bytes = protocol.weights_nbytes(arrays)
        self._latest = arrays
        return self._weights_to(round_, self.sample(round_), arrays, Task.FIT, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_ = self.run.round_of(server_round)
        valid = []
        # A valid reply carries exactly the global model's bytes; an invalid one is refused.
        uploaded = self.accept_replies(round_, replies, lambda _: ("weights", self._weights_bytes))
        for node, reply in uploaded:
            train_ms, reason = protocol.read_weights(reply.content, self._signature)
            if reason:
                self.set_status(round_, node, REJECTED, reason)
                continue
            self.current.train_ms[node] = train_ms
            valid.append((self.run.partitions[node], reply))
        if not valid:
            return None, None
        # Summing in a fixed order (by partition) keeps the aggregate bit-for-bit repeatable.
        arrays, metrics = super().aggregate_train(server_round, [r for _, r in sorted(valid)])
        self._latest = arrays if arrays is not None else self._latest
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        round_ = self.run.round_of(server_round)
        trained = list(self.current.train_ms)  # the devices whose training joined the aggregate
        if self.budgeted:
            channels = self.run.world.prepared.channels
            budgets = [int(self.run.world.budgets[self.run.partitions[node]]) for node in trained]
            for node, budget, width in zip(
                trained, budgets, uniform_widths(channels, budgets), strict=True
            ):
                self.expect_model_bytes(node, uniform_bytes(channels, *width), budget)
        return self._weights_to(round_, trained, arrays, self.evaluate_task, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.collect_reports(self.run.round_of(server_round), replies)

    def save_state(self, round_: int) -> None:
        if self._latest is None:
            return
        save_weights(weights_path(self.run.log.dir, round_), self._latest.to_torch_state_dict())
        weights_path(self.run.log.dir, round_ - 1).unlink(missing_ok=True)  # resume needs the last


def weights_path(run_dir: Path, round_: int) -> Path:
    return run_dir / f"global-weights-round-{round_}.pt"


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ConfigError(f"cannot resume FedAvg: {path} is missing")
    return torch.load(path, map_location="cpu", weights_only=True)
