"""Triage of one phase's replies: which came in time and well-formed, which did not and why."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import WARNING

from flwr.app import Message
from flwr.common import log

from strategies import protocol

OK, ERROR, REJECTED, TIMEOUT = "ok", "error", "rejected", "timeout"


@dataclass(frozen=True)
class Triaged:
    node: int
    reply: Message
    status: str  # OK, ERROR (the device failed), REJECTED (malformed), TIMEOUT (came late)
    reason: str = ""


def triage(
    replies: Iterable[Message], partitions: dict[int, int], round_: int, timeout: float
) -> list[Triaged]:
    """Every reply from a known node with its status; a reply from an unknown node is logged and
    dropped. Only the reply's envelope (error, device time) is checked here: each phase checks its
    own content."""
    triaged = []
    for reply in replies:
        node = reply.metadata.src_node_id
        if node not in partitions:
            log(WARNING, "round %d: reply from unknown node %d ignored", round_, node)
            continue
        if reply.has_error():
            triaged.append(Triaged(node, reply, ERROR, reply.error.reason))
            continue
        seconds, reason = protocol.read_device_seconds(reply.content)
        if reason:
            triaged.append(Triaged(node, reply, REJECTED, reason))
        elif seconds > timeout:
            # Arrived after the deadline: the cloud has moved on without it.
            triaged.append(Triaged(node, reply, TIMEOUT))
        else:
            triaged.append(Triaged(node, reply, OK))
    return triaged
