"""A run's output directory: config.json, ledger.csv, clients.csv, rounds.csv, summary.json.

Rows are appended and flushed once per round, so a crash loses at most the round in progress.
`summarize` rebuilds summary.json from the CSV files alone, so anyone can recompute it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chord_fl.errors import ConfigError

LEDGER_COLUMNS = (
    "round",
    "node_id",
    "partition",
    "tier",
    "direction",  # "down" (cloud to device) or "up"
    "kind",  # see KINDS
    "payload_bytes",  # what the method needs: packed codes, fp16 profile, fp32 weights
    "message_bytes",  # the serialised Flower message
    "transfer_s",  # simulated, from the device tier's bandwidth
)
KINDS = (
    "query",  # node id -> partition mapping
    "frozen-weights",  # one-time download of the frozen backbone, round 0
    "request",  # a round's instruction with no method payload
    "profile",  # fp16 profile plus the device's budget
    "budget",  # the device's budget alone
    "codes",  # packed precision codes
    "width",  # a uniform width: its bits and scale mode
    "weights",  # fp32 model weights
    "metrics",  # a device's evaluation report
    "error",  # an error reply
    "late",  # a reply that came after the round's deadline, discarded
)
METRIC_COLUMNS = (
    "hr@5",
    "hr@10",
    "ndcg@5",
    "ndcg@10",
    "sampled_hr@5",
    "sampled_hr@10",
    "sampled_ndcg@5",
    "sampled_ndcg@10",
)
CODE_COLUMNS = ("codes_0", "codes_1", "codes_2", "codes_3")  # channels at each code
CLIENT_COLUMNS = (
    "round",
    "partition",
    "node_id",
    "tier",
    "budget_bytes",
    "model_bytes",
    "avg_bits",
    *METRIC_COLUMNS,
    "adapt_ms",
    *CODE_COLUMNS,
    "status",  # "ok", or why the device has no metrics this round
)
STATUSES = ("ok", "offline", "error", "rejected", "timeout")
ROUND_COLUMNS = (
    "round",
    "wall_s",  # since the previous round ended (the first: since the strategy was built)
    "server_rss_mib",  # the ServerApp's process at the round's end: flat when nothing leaks
    "server_peak_rss_mib",
)


class RunLog:
    """Appends ledger and client rows to a run directory and writes its JSON files."""

    FILES = ("config.json", "ledger.csv", "clients.csv", "rounds.csv", "summary.json")

    def __init__(self, run_dir: str | os.PathLike, fresh: bool = False) -> None:
        """`fresh`: start the directory's files over (a new run under the same name)."""
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for name in self.FILES:
                (self.dir / name).unlink(missing_ok=True)
            for state in self.dir.glob("global-weights-round-*.pt"):
                state.unlink()
        self.ledger_path = self.dir / "ledger.csv"
        self.clients_path = self.dir / "clients.csv"
        self.rounds_path = self.dir / "rounds.csv"
        self.meta: dict[str, Any] = {}  # written at the top of every summary
        for path, columns in self._tables():
            if not path.exists():
                _append(path, columns, [], header=True)

    def completed_round(self) -> int:
        """The last round whose client rows were written (0: none)."""
        return max((int(row["round"]) for row in read_csv(self.clients_path)), default=0)

    def truncate_after(self, round_: int) -> None:
        """Drop rows of rounds after `round_`: what a crash left of an unfinished round."""
        for path, columns in self._tables():
            kept = [row for row in read_csv(path) if int(row["round"]) <= round_]
            tmp = path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            _append(tmp, columns, kept, header=True)
            tmp.replace(path)

    def _tables(self) -> tuple[tuple[Path, tuple[str, ...]], ...]:
        return (
            (self.ledger_path, LEDGER_COLUMNS),
            (self.clients_path, CLIENT_COLUMNS),
            (self.rounds_path, ROUND_COLUMNS),
        )

    def read_config(self) -> dict[str, Any]:
        path = self.dir / "config.json"
        if not path.exists():
            raise ConfigError(f"{self.dir} holds no run to resume: {path} is missing")
        return json.loads(path.read_text())

    def write_config(self, config: Mapping[str, Any]) -> None:
        _write_json(self.dir / "config.json", config)

    def append_ledger(self, rows: Iterable[Mapping[str, Any]]) -> None:
        _append(self.ledger_path, LEDGER_COLUMNS, rows)

    def append_clients(self, rows: Iterable[Mapping[str, Any]]) -> None:
        _append(self.clients_path, CLIENT_COLUMNS, rows)

    def append_round(self, row: Mapping[str, Any]) -> None:
        _append(self.rounds_path, ROUND_COLUMNS, [row])

    def write_summary(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        summary = {**self.meta, **(extra or {}), **summarize(self.dir)}
        _write_json(self.dir / "summary.json", summary)
        return summary


def _append(
    path: Path, columns: tuple[str, ...], rows: Iterable[Mapping[str, Any]], header: bool = False
) -> None:
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="raise", restval="")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _bytes_by(rows: list[dict[str, str]], direction: str) -> dict[str, int]:
    chosen = [row for row in rows if row["direction"] == direction]
    return {
        f"{'downlink' if direction == 'down' else 'uplink'}_{what}_bytes": int(
            sum(int(row[f"{what}_bytes"]) for row in chosen)
        )
        for what in ("payload", "message")
    }


def summarize(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Per-round means over devices that answered, status counts, bytes, the round's wall time
    and the ServerApp's memory, plus totals."""
    run_dir = Path(run_dir)
    ledger = read_csv(run_dir / "ledger.csv")
    clients = read_csv(run_dir / "clients.csv")
    # Run directories written before rounds.csv existed have none.
    timings = read_csv(run_dir / "rounds.csv") if (run_dir / "rounds.csv").exists() else []
    by_round = {int(row["round"]): row for row in timings}
    seen = {int(row["round"]) for row in clients} | {int(row["round"]) for row in ledger}
    rounds = sorted(seen - {0})
    per_round = []
    for number in rounds:
        members = [row for row in clients if int(row["round"]) == number]
        ok = [row for row in members if row["status"] == "ok"]
        entry: dict[str, Any] = {"round": number, "devices": len(members)}
        entry.update(
            {status: sum(row["status"] == status for row in members) for status in STATUSES}
        )
        for column in (*METRIC_COLUMNS, "avg_bits", "model_bytes", "adapt_ms"):
            values = [float(row[column]) for row in ok if row[column] != ""]
            entry[column] = float(np.mean(values)) if values else None
        round_rows = [row for row in ledger if int(row["round"]) == number]
        entry.update(_bytes_by(round_rows, "down"))
        entry.update(_bytes_by(round_rows, "up"))
        timing = by_round.get(number, {})
        entry.update({column: float(timing[column]) for column in ROUND_COLUMNS[1:] if timing})
        per_round.append(entry)
    one_time = [row for row in ledger if row["kind"] == "frozen-weights"]
    totals: dict[str, Any] = {**_bytes_by(ledger, "down"), **_bytes_by(ledger, "up")}
    totals["frozen_weights_payload_bytes"] = int(sum(int(r["payload_bytes"]) for r in one_time))
    totals["frozen_weights_message_bytes"] = int(sum(int(r["message_bytes"]) for r in one_time))
    return {"rounds": per_round, "totals": totals}
