"""CHORD, its ablations and every baseline that sends precision codes, a uniform width, or
nothing (fp32).

Train phase: devices upload a profile and budget (budget alone for non-personalised methods);
nothing is trained. `aggregate_train` runs the hypernetworks and allocation once for the round's
whole batch. Evaluate phase: each device gets its own packed codes (the cheapest of full, delta
against what it holds, and entropy-coded), or for `uniform` the width its budget allows,
quantizes its frozen weights and scores its target.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from chord_fl import methods
from chord_fl.methods import FP32, UNIFORM, Cloud, method_codes, uniform_widths
from chord_fl.quant.budget import coded_bytes, floor_bytes, uniform_bytes
from chord_fl.quant.codec import encode_strategy
from strategies import protocol
from strategies.base import FleetMixin
from strategies.protocol import Task
from strategies.replies import REJECTED


class CodeStrategy(FleetMixin, Strategy):
    def __init__(self, *, method: str, cloud: Cloud, **kwargs) -> None:
        super().__init__(**kwargs)
        self.method = method
        self.cloud = cloud
        self.gives = methods.method(method).gives
        self.budgeted = self.gives != FP32
        self._codes: dict[int, np.ndarray] = {}  # this round's codes by node id
        self._widths: dict[int, tuple[int, bool]] = {}  # this round's uniform widths by node id
        self._held: dict[int, np.ndarray] = {}  # codes each device confirmed: the delta base

    @property
    def personalised(self) -> bool:
        return methods.method(self.method).personalised

    def initial_arrays(self) -> ArrayRecord:
        return ArrayRecord()  # nothing but codes ever travels

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        round_ = self.run.round_of(server_round)
        if self.gives == FP32:
            return []
        task = Task.PROFILE if self.personalised else Task.BUDGET
        contents = {
            node: RecordDict({protocol.CONFIG: protocol.instruction(round_, task)})
            for node in self.sample(round_)
        }
        return self.build_messages(round_, contents, MessageType.TRAIN, "request", lambda _: 0)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_ = self.run.round_of(server_round)
        world = self.run.world
        hidden = world.prepared.frozen.hidden_size if self.personalised else None
        kind = "profile" if self.personalised else "budget"
        floor = floor_bytes(world.prepared.channels, world.prepared.table)
        uploads = {}
        payload = protocol.upload_payload_bytes(hidden)
        for node, reply in self.accept_replies(round_, replies, kind, lambda _: payload):
            limit = int(world.budgets[self.run.partitions[node]])
            upload, reason = protocol.read_upload(reply.content, hidden, limit, floor)
            if reason:
                self.set_status(round_, node, REJECTED, reason)
            else:
                uploads[node] = upload
        # A fixed order (by partition) makes the batch, and so every code, repeatable.
        nodes = sorted(uploads, key=self.run.partitions.__getitem__)
        self._codes, self._widths = {}, {}
        if not nodes:
            return None, None
        budgets = np.array([uploads[node][1] for node in nodes], dtype=np.int64)
        profiles = (
            np.stack([uploads[node][0] for node in nodes])
            if self.personalised
            else np.empty((len(nodes), 0), dtype=np.float16)
        )
        channels = world.prepared.channels
        if self.gives == UNIFORM:
            self._widths = dict(zip(nodes, uniform_widths(channels, budgets), strict=True))
            spent = [uniform_bytes(channels, *self._widths[node]) for node in nodes]
        else:
            seed = int(np.random.SeedSequence([self.run.config.seed, round_]).generate_state(1)[0])
            partitions = [self.run.partitions[node] for node in nodes]
            codes = method_codes(self.method, self.cloud, profiles, budgets, seed, partitions)
            self._codes = dict(zip(nodes, codes, strict=True))
            spent = coded_bytes(channels, world.prepared.table, codes)
        for node, model_bytes, budget in zip(nodes, spent, budgets, strict=True):
            self.expect_model_bytes(node, int(model_bytes), int(budget))
        return None, MetricRecord({"devices": len(nodes)})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        round_ = self.run.round_of(server_round)
        if self.gives == FP32:
            instruction = protocol.instruction(round_, Task.FP32)
            contents = {
                node: RecordDict({protocol.CONFIG: instruction}) for node in self.sample(round_)
            }
            return self.build_messages(
                round_, contents, MessageType.EVALUATE, "request", lambda _: 0
            )
        if self.gives == UNIFORM:
            contents = {
                node: protocol.uniform_content(round_, *width)
                for node, width in self._widths.items()
            }
            payload = protocol.UNIFORM_PAYLOAD_BYTES
            return self.build_messages(
                round_, contents, MessageType.EVALUATE, "width", lambda _: payload
            )
        payloads = {
            node: encode_strategy(codes, self._held.get(node))
            for node, codes in self._codes.items()
        }
        contents = {
            node: protocol.codes_content(round_, payload) for node, payload in payloads.items()
        }
        return self.build_messages(
            round_, contents, MessageType.EVALUATE, "codes", lambda node: len(payloads[node])
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.collect_reports(self.run.round_of(server_round), replies)

    def accept_report(self, round_: int, node: int, report: dict[str, float]) -> None:
        if node in self._codes:
            self._held[node] = self._codes[node]
        super().accept_report(round_, node, report)

    def set_status(self, round_: int, node: int, status: str, reason: str = "") -> None:
        # The device's state is unknown now: its next codes go in full.
        self._held.pop(node, None)
        super().set_status(round_, node, status, reason)
