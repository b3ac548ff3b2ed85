"""CHORD, its ablations and every baseline that sends precision codes, a uniform width, or
nothing (fp32).

Train phase: devices upload a profile and budget (budget alone for non-personalised methods);
nothing is trained. `aggregate_train` runs the hypernetworks and allocation once for the round's
whole batch. Evaluate phase: each device gets its own packed codes (the cheapest of full, delta
against what it holds, and entropy-coded), or for `uniform` the width its budget allows,
quantizes its frozen weights and scores its target.

With `profile-ahead`, the code (or width) message of each device drawn for the next round asks
for its upload for that round (its window then is known: this round's window and target), which
its report carries; the next train phase asks only devices whose upload the cloud does not hold:
one message per device and round after the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from chord_fl import methods
from chord_fl.methods import FP32, UNIFORM, Cloud, method_codes, uniform_widths
from chord_fl.quant.budget import coded_bytes, floor_bytes, uniform_bytes
from chord_fl.quant.codec import encode_strategy
from strategies import protocol
from strategies.base import FleetMixin
from strategies.protocol import Task, Upload
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
        self._next: dict[int, Upload] = {}  # uploads sent with reports, for the next round
        self._ready: dict[int, Upload] = {}  # this round's uploads held before its train phase
        self._asked_ahead: set[int] = set()  # nodes whose report this round may carry one
        world = self.run.world
        self._hidden = world.prepared.frozen.hidden_size if self.personalised else None
        self._floor = floor_bytes(world.prepared.channels, world.prepared.table)

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
        online = self.sample(round_)
        self._ready = {node: self._next[node] for node in online if node in self._next}
        self._next = {}
        instruction = protocol.instruction(round_, self.upload_task)
        contents = {
            node: RecordDict({protocol.CONFIG: instruction})
            for node in online
            if node not in self._ready
        }
        return self.build_messages(round_, contents, MessageType.TRAIN, "request", lambda _: 0)

    @property
    def upload_task(self) -> Task:
        return Task.PROFILE if self.personalised else Task.BUDGET

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_ = self.run.round_of(server_round)
        world = self.run.world
        uploads = dict(self._ready)
        charge = (str(self.upload_task), protocol.upload_payload_bytes(self._hidden))
        for node, reply in self.accept_replies(round_, replies, lambda _: charge):
            upload, reason = self._read_upload(node, reply.content)
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
        self._asked_ahead = self._drawn_next(round_)
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
                node: self._ask_ahead(node, protocol.uniform_content(round_, *width))
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
            node: self._ask_ahead(node, protocol.codes_content(round_, payload))
            for node, payload in payloads.items()
        }
        return self.build_messages(
            round_, contents, MessageType.EVALUATE, "codes", lambda node: len(payloads[node])
        )

    def _drawn_next(self, round_: int) -> set[int]:
        """With profile-ahead, the nodes drawn for the next round: only they are asked for its
        upload (an offline one cannot be known in advance and sends it for nothing)."""
        if not self.run.config.carries_uploads or round_ >= self.run.config.rounds:
            return set()
        return {node for node, _ in self.drawn(round_ + 1)}

    def _ask_ahead(self, node: int, content: RecordDict) -> RecordDict:
        if node in self._asked_ahead:
            return protocol.ask_next_upload(content, self.upload_task)
        return content

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.collect_reports(self.run.round_of(server_round), replies)

    def charge_report(self, reply: Message) -> tuple[str, int]:
        asked = reply.metadata.src_node_id in self._asked_ahead
        if asked and protocol.UPLOAD in reply.content.config_records:
            return f"metrics+{self.upload_task}", protocol.upload_payload_bytes(self._hidden)
        return super().charge_report(reply)

    def take_next_upload(self, round_: int, node: int, content: RecordDict) -> RecordDict:
        if node not in self._asked_ahead:
            return content  # an upload nobody asked for makes the report malformed
        report, carried = protocol.split_upload(content)
        if carried is not None:
            upload, reason = self._read_upload(node, carried)
            if reason:
                # The report stands; the next round asks this device for its upload again.
                partition = self.run.partitions[node]
                log(
                    WARNING,
                    "round %d: node %d (partition %d) next round's upload refused: %s",
                    round_,
                    node,
                    partition,
                    reason,
                )
            else:
                self._next[node] = upload
        return report

    def _read_upload(self, node: int, content: RecordDict) -> tuple[Upload | None, str | None]:
        limit = int(self.run.world.budgets[self.run.partitions[node]])
        return protocol.read_upload(content, self._hidden, limit, self._floor)

    def accept_report(self, round_: int, node: int, report: dict[str, float]) -> None:
        if node in self._codes:
            self._held[node] = self._codes[node]
        super().accept_report(round_, node, report)

    def set_status(self, round_: int, node: int, status: str, reason: str = "") -> None:
        # The device's state is unknown now: its next codes go in full, and an upload it sent
        # with a refused report is not trusted.
        self._held.pop(node, None)
        self._next.pop(node, None)
        super().set_status(round_, node, status, reason)
