"""A run's output directory: config.json, ledger.csv, clients.csv, rounds.csv, summary.json.

Rows are appended and flushed once per round, so a crash loses at most the round in progress.
`summarize` rebuilds summary.json from the CSV files alone, so anyone can recompute it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

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
    "metrics+profile",  # a report carrying the next round's profile and budget (profile-ahead)
    "metrics+budget",  # a report carrying the next round's budget (profile-ahead)
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
        self.tally = Tally.of(self.dir)

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
        self.tally = Tally.of(self.dir)

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
        rows = list(rows)
        _append(self.ledger_path, LEDGER_COLUMNS, rows)
        self.tally.add_ledger(rows)

    def append_clients(self, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        _append(self.clients_path, CLIENT_COLUMNS, rows)
        self.tally.add_clients(rows)

    def append_round(self, row: Mapping[str, Any]) -> None:
        _append(self.rounds_path, ROUND_COLUMNS, [row])
        self.tally.add_timing(row)

    def write_summary(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        summary = {**self.meta, **(extra or {}), **self.tally.summary()}
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


def iter_csv(path: Path) -> Iterator[dict[str, str]]:
    if path.exists():  # run directories written before rounds.csv existed have none
        with path.open(newline="") as handle:
            yield from csv.DictReader(handle)


def _number(value: Any) -> float | None:
    """A cell as a number, whether kept in memory or read back from a CSV ("": missing)."""
    return None if value is None or value == "" else float(value)


def _bytes_key(direction: str, what: str) -> str:
    return f"{'downlink' if direction == 'down' else 'uplink'}_{what}_bytes"


MEANS = (*METRIC_COLUMNS, "avg_bits", "model_bytes", "adapt_ms")
BYTE_KEYS = tuple(_bytes_key(d, w) for d in ("down", "up") for w in ("payload", "message"))


class Tally:
    """Running sums of a run's rows: enough for its summary without keeping a row, so writing
    the summary after every round costs the same in round 100 as in round 1."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, Any]] = {}
        self.timings: dict[int, dict[str, float]] = {}
        self.totals: dict[str, int] = dict.fromkeys(
            (*BYTE_KEYS, "frozen_weights_payload_bytes", "frozen_weights_message_bytes"), 0
        )

    @classmethod
    def of(cls, run_dir: str | os.PathLike) -> Tally:
        """The tally of a run directory's CSV files, read one row at a time."""
        run_dir = Path(run_dir)
        tally = cls()
        tally.add_ledger(iter_csv(run_dir / "ledger.csv"))
        tally.add_clients(iter_csv(run_dir / "clients.csv"))
        for row in iter_csv(run_dir / "rounds.csv"):
            tally.add_timing(row)
        return tally

    def _round(self, number: int) -> dict[str, Any]:
        if number not in self.rounds:
            self.rounds[number] = {
                "devices": 0,
                **dict.fromkeys(STATUSES, 0),
                **{column: [0.0, 0] for column in MEANS},
                **dict.fromkeys(BYTE_KEYS, 0),
            }
        return self.rounds[number]

    def add_ledger(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            counts = self._round(int(row["round"]))
            for what in ("payload", "message"):
                size = int(row[f"{what}_bytes"])
                key = _bytes_key(row["direction"], what)
                counts[key] += size
                self.totals[key] += size
                if row["kind"] == "frozen-weights":
                    self.totals[f"frozen_weights_{what}_bytes"] += size

    def add_clients(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            counts = self._round(int(row["round"]))
            counts["devices"] += 1
            counts[row["status"]] += 1
            if row["status"] != "ok":
                continue
            for column in MEANS:
                value = _number(row.get(column))  # a row written short: ''
                if value is not None:
                    counts[column][0] += value
                    counts[column][1] += 1

    def add_timing(self, row: Mapping[str, Any]) -> None:
        values = {column: _number(row.get(column)) for column in ROUND_COLUMNS[1:]}
        self.timings[int(row["round"])] = {k: v for k, v in values.items() if v is not None}

    def summary(self) -> dict[str, Any]:
        """Per-round means over devices that answered, status counts, bytes, the round's wall
        time and the ServerApp's memory, plus totals."""
        per_round = []
        for number in sorted(set(self.rounds) - {0}):
            counts = self.rounds[number]
            entry: dict[str, Any] = {"round": number, "devices": counts["devices"]}
            entry.update({status: counts[status] for status in STATUSES})
            for column in MEANS:
                total, count = counts[column]
                entry[column] = total / count if count else None
            entry.update({key: counts[key] for key in BYTE_KEYS})
            entry.update(self.timings.get(number, {}))
            per_round.append(entry)
        return {"rounds": per_round, "totals": dict(self.totals)}


def summarize(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's summary rebuilt from its CSV files alone (`Tally.summary`)."""
    return Tally.of(run_dir).summary()
