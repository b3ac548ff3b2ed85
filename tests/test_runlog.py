import numpy as np
import pytest

from chord_fl.federation.runlog import (
    CLIENT_COLUMNS,
    METRIC_COLUMNS,
    STATUSES,
    RunLog,
    read_csv,
    summarize,
)

ROUNDS, DEVICES = 4, 6


def _ledger_rows(number: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for node in range(DEVICES):
        for direction, kind in (("down", "codes"), ("up", "metrics")):
            payload = int(rng.integers(1, 500))
            rows.append(
                {
                    "round": number,
                    "node_id": node,
                    "partition": node,
                    "tier": "low",
                    "direction": direction,
                    "kind": kind,
                    "payload_bytes": payload,
                    "message_bytes": payload + int(rng.integers(0, 90)),
                    "transfer_s": 0.01,
                }
            )
        if number == 1 and node % 2:
            rows.append({**rows[-2], "round": 0, "kind": "frozen-weights", "payload_bytes": 7})
    return rows


def _client_rows(number: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for node in range(DEVICES):
        status = STATUSES[int(rng.integers(0, len(STATUSES)))] if node else "ok"
        row = dict.fromkeys(CLIENT_COLUMNS, "")
        row.update({"round": number, "partition": node, "node_id": node, "status": status})
        if status == "ok":
            row.update({column: float(rng.random()) for column in METRIC_COLUMNS})
            row.update(avg_bits=float(rng.random() * 4), model_bytes=int(rng.integers(100, 900)))
            row["adapt_ms"] = "" if node == 3 else float(rng.random())
        rows.append(row)
    return rows


def _write_run(run_dir, rng: np.random.Generator) -> tuple[RunLog, list[dict]]:
    log = RunLog(run_dir, fresh=True)
    live = []
    for number in range(1, ROUNDS + 1):
        log.append_ledger(_ledger_rows(number, rng))
        log.append_round({"round": number, "wall_s": float(number), "server_rss_mib": 100.0})
        log.append_clients(_client_rows(number, rng))
        live.append(log.write_summary())
    return log, live


def _by_hand(run_dir) -> dict:
    """The summary from every row of the files at once, the plain way."""
    ledger, clients = read_csv(run_dir / "ledger.csv"), read_csv(run_dir / "clients.csv")
    timings = {int(row["round"]): row for row in read_csv(run_dir / "rounds.csv")}

    def sizes(rows, direction):
        side = "downlink" if direction == "down" else "uplink"
        chosen = [row for row in rows if row["direction"] == direction]
        return {
            f"{side}_{what}_bytes": sum(int(row[f"{what}_bytes"]) for row in chosen)
            for what in ("payload", "message")
        }

    entries = []
    for number in sorted({int(row["round"]) for row in clients}):
        members = [row for row in clients if int(row["round"]) == number]
        ok = [row for row in members if row["status"] == "ok"]
        entry = {"round": number, "devices": len(members)}
        entry.update(
            {status: sum(row["status"] == status for row in members) for status in STATUSES}
        )
        for column in (*METRIC_COLUMNS, "avg_bits", "model_bytes", "adapt_ms"):
            values = [float(row[column]) for row in ok if row[column] != ""]
            entry[column] = pytest.approx(np.mean(values)) if values else None
        in_round = [row for row in ledger if int(row["round"]) == number]
        entry.update({**sizes(in_round, "down"), **sizes(in_round, "up")})
        entry.update(
            {"wall_s": float(number), "server_rss_mib": 100.0} if number in timings else {}
        )
        entries.append(entry)
    frozen = [row for row in ledger if row["kind"] == "frozen-weights"]
    totals = {**sizes(ledger, "down"), **sizes(ledger, "up")}
    totals["frozen_weights_payload_bytes"] = sum(int(row["payload_bytes"]) for row in frozen)
    totals["frozen_weights_message_bytes"] = sum(int(row["message_bytes"]) for row in frozen)
    return {"rounds": entries, "totals": totals}


def test_the_summary_kept_during_a_run_is_the_one_computed_from_its_files(tmp_path):
    log, live = _write_run(tmp_path / "run", np.random.default_rng(0))
    assert live[-1] == _by_hand(log.dir)
    assert [len(summary["rounds"]) for summary in live] == list(range(1, ROUNDS + 1))
    assert summarize(log.dir) == live[-1]
    # A statuses mix with errors and a device without adapt_ms, so the means skip cells.
    assert {row["status"] for row in read_csv(log.dir / "clients.csv")} > {"ok"}


def test_a_resumed_log_continues_the_summary_from_its_files(tmp_path):
    log, live = _write_run(tmp_path / "run", np.random.default_rng(1))
    resumed = RunLog(log.dir)
    assert resumed.write_summary() == live[-1]
    resumed.truncate_after(2)
    assert resumed.write_summary()["rounds"] == live[1]["rounds"]
    assert resumed.write_summary() == _by_hand(log.dir)
