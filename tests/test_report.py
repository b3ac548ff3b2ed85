import csv
import struct

import pytest

from chord_fl.errors import ConfigError
from chord_fl.federation.runlog import CODE_COLUMNS, METRIC_COLUMNS, RunLog
from simulations.plots import plot_runs
from simulations.report import comparison_rows, downlink_ratio_rows, paired_rows, write_table

TIERS = {1: "low", 2: "high"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ledger_row(number: int, node: int, direction: str, kind: str, payload: int, message: int):
    return {
        "round": number,
        "node_id": node,
        "partition": node - 1,
        "tier": TIERS[node],
        "direction": direction,
        "kind": kind,
        "payload_bytes": payload,
        "message_bytes": message,
        "transfer_s": 0.01,
    }


def client_row(number: int, node: int, ndcg: float | None, **fields):
    """hr@10 = 2 * ndcg@10 and sampled = full + 0.1, so expected means follow from ndcg alone."""
    metrics = dict.fromkeys(METRIC_COLUMNS, "")
    if ndcg is not None:
        metrics.update({column: ndcg / 2 for column in METRIC_COLUMNS})
        metrics.update({"ndcg@10": ndcg, "hr@10": 2 * ndcg})
        metrics.update({"sampled_ndcg@10": ndcg + 0.1, "sampled_hr@10": 2 * ndcg + 0.1})
    row = {
        "round": number,
        "partition": node - 1,
        "node_id": node,
        "tier": TIERS[node],
        "budget_bytes": 5000,
        "status": "ok" if ndcg is not None else "error",
        **dict.fromkeys(("model_bytes", "avg_bits", "adapt_ms", *CODE_COLUMNS), ""),
        **metrics,
    }
    row.update(fields)
    return row


def make_run(root, strategy: str, ledger: list[dict], clients: list[dict], wall_s: float):
    log = RunLog(root / strategy)
    log.write_config({"strategy": strategy, "rounds": 2, "dataset": "synthetic"})
    log.append_ledger(ledger)
    log.append_clients(clients)
    log.write_summary(
        {
            "strategy": strategy,
            "wall_s": wall_s,
            "dataset": "synthetic",
            "backbone": "sasrec",
            "devices": 2,
        }
    )
    return log.dir


@pytest.fixture
def fedavg(tmp_path):
    ledger = [ledger_row(0, node, "down", "query", 8, 60) for node in (1, 2)]
    for number in (1, 2):
        for node in (1, 2):
            ledger.append(ledger_row(number, node, "down", "weights", 4000, 4100 + 10 * number))
            ledger.append(ledger_row(number, node, "up", "weights", 4000, 4090))
    ledger += [
        ledger_row(1, 1, "up", "metrics", 0, 200),
        ledger_row(1, 2, "up", "metrics", 0, 200),
        ledger_row(2, 1, "up", "error", 0, 150),
        ledger_row(2, 2, "up", "metrics", 0, 200),
    ]
    fp32 = {"model_bytes": 4096, "avg_bits": 32, "adapt_ms": 2.0}
    clients = [
        client_row(1, 1, 0.2, **fp32),
        client_row(1, 2, 0.4, **fp32),
        client_row(2, 1, None),  # an error: no metrics, left out of the means
        client_row(2, 2, 0.6, **fp32),
    ]
    return make_run(tmp_path, "fedavg", ledger, clients, wall_s=12.5)


@pytest.fixture
def chord(tmp_path):
    ledger = [ledger_row(0, node, "down", "frozen-weights", 10000, 10100) for node in (1, 2)]
    for number in (1, 2):
        ledger += [
            ledger_row(number, 1, "down", "codes", 100, 180),
            ledger_row(number, 2, "down", "codes", 120, 200),
        ]
        for node in (1, 2):
            ledger.append(ledger_row(number, node, "up", "profile", 64, 140))
            ledger.append(ledger_row(number, node, "up", "metrics", 0, 200))

    def mixed(number, node, ndcg, bits, model, adapt, codes):
        return client_row(
            number,
            node,
            ndcg,
            avg_bits=bits,
            model_bytes=model,
            adapt_ms=adapt,
            **dict(zip(CODE_COLUMNS, codes, strict=True)),
        )

    clients = [
        mixed(1, 1, 0.25, 3.0, 1024, 1.0, (10, 20, 30, 40)),
        mixed(1, 2, 0.35, 5.0, 2048, 3.0, (0, 10, 50, 40)),
        mixed(2, 1, 0.3, 3.0, 1024, 2.0, (20, 20, 20, 40)),
        mixed(2, 2, 0.5, 6.0, 3072, 4.0, (0, 0, 60, 40)),
    ]
    return make_run(tmp_path, "chord", ledger, clients, wall_s=30.0)


def test_comparison_rows_by_hand(fedavg, chord):
    reference, other = comparison_rows([fedavg, chord])
    assert list(reference) == [
        "strategy",
        "devices",
        "rounds",
        "ndcg@10",
        "hr@10",
        "sampled_ndcg@10",
        "sampled_hr@10",
        "avg_bits",
        "model_kib",
        "adapt_ms",
        "downlink_payload_bytes_per_device_round",
        "downlink_message_bytes_per_device_round",
        "uplink_payload_bytes_per_device_round",
        "uplink_message_bytes_per_device_round",
        "downlink_payload_bytes_total",
        "downlink_message_bytes_total",
        "wall_s",
    ]
    # FedAvg: round means 0.3 and 0.6 (the failed device is left out of round 2).
    assert reference["strategy"] == "fedavg"
    assert (reference["devices"], reference["rounds"]) == (2, 2)
    assert reference["ndcg@10"] == pytest.approx(0.45)
    assert reference["hr@10"] == pytest.approx(0.9)
    assert reference["sampled_ndcg@10"] == pytest.approx(0.55)
    assert reference["sampled_hr@10"] == pytest.approx(1.0)
    assert reference["avg_bits"] == pytest.approx(32)
    assert reference["model_kib"] == pytest.approx(4.0)
    assert reference["adapt_ms"] == pytest.approx(2.0)
    # Round-0 queries are out of the per-round figures but in the totals.
    assert reference["downlink_payload_bytes_per_device_round"] == pytest.approx(16000 / 4)
    assert reference["downlink_message_bytes_per_device_round"] == pytest.approx(
        (2 * 4110 + 2 * 4120) / 4
    )
    assert reference["uplink_payload_bytes_per_device_round"] == pytest.approx(16000 / 4)
    assert reference["uplink_message_bytes_per_device_round"] == pytest.approx(
        (4 * 4090 + 3 * 200 + 150) / 4
    )
    assert reference["downlink_payload_bytes_total"] == 16000 + 16
    assert reference["downlink_message_bytes_total"] == 2 * 4110 + 2 * 4120 + 120
    assert reference["wall_s"] == 12.5

    assert other["strategy"] == "chord"
    assert other["ndcg@10"] == pytest.approx((0.3 + 0.4) / 2)
    assert other["avg_bits"] == pytest.approx((4.0 + 4.5) / 2)
    assert other["model_kib"] == pytest.approx((1536 + 2048) / 2 / 1024)
    assert other["adapt_ms"] == pytest.approx((2.0 + 3.0) / 2)
    assert other["downlink_payload_bytes_per_device_round"] == pytest.approx(2 * 220 / 4)
    assert other["downlink_message_bytes_per_device_round"] == pytest.approx(2 * 380 / 4)
    assert other["uplink_payload_bytes_per_device_round"] == pytest.approx(64)
    assert other["uplink_message_bytes_per_device_round"] == pytest.approx(340)
    assert other["downlink_payload_bytes_total"] == 2 * 220 + 20000
    assert other["downlink_message_bytes_total"] == 2 * 380 + 20200


def test_downlink_ratios_per_round_and_in_total(fedavg, chord):
    rows = downlink_ratio_rows(fedavg, chord)
    assert [row["round"] for row in rows] == [
        1,
        2,
        "total (rounds)",
        "total (with one-time download)",
    ]
    expected = [  # reference payload, message; other payload, message
        (8000, 8220, 220, 380),
        (8000, 8240, 220, 380),
        (16000, 16460, 440, 760),
        (16016, 16580, 20440, 20960),
    ]
    for row, (ref_payload, ref_message, payload, message) in zip(rows, expected, strict=True):
        assert row["reference_downlink_payload_bytes"] == ref_payload
        assert row["reference_downlink_message_bytes"] == ref_message
        assert row["other_downlink_payload_bytes"] == payload
        assert row["other_downlink_message_bytes"] == message
        assert row["downlink_payload_ratio"] == pytest.approx(ref_payload / payload)
        assert row["downlink_message_ratio"] == pytest.approx(ref_message / message)
    # The one-time download outweighs two rounds of codes: CHORD sends more in total here.
    assert rows[-1]["downlink_payload_ratio"] < 1 < rows[-2]["downlink_payload_ratio"]


def test_paired_differences_by_hand(fedavg, chord):
    (row,) = paired_rows(chord, [fedavg])
    # Device 0 is compared in round 1 only (FedAvg failed it in round 2): 0.25 - 0.2 = 0.05.
    # Device 1: (0.35 - 0.4 + 0.5 - 0.6) / 2 = -0.075. Mean -0.0125; standard error
    # stdev(0.05, -0.075) / sqrt(2) = 0.0625. Sampled metrics are full + 0.1: the same differences.
    assert row["strategy"] == "fedavg"
    for metric in ("ndcg@10", "sampled_ndcg@10"):
        assert row[f"{metric}_devices"] == 2
        assert row[f"chord_minus_{metric}"] == pytest.approx(-0.0125)
        assert row[f"{metric}_standard_error"] == pytest.approx(0.0625)
        assert row[f"{metric}_z"] == pytest.approx(-0.2)
    (same,) = paired_rows(chord, [chord])
    assert same["chord_minus_ndcg@10"] == 0 and same["ndcg@10_z"] is None


def test_write_table_markdown_and_csv(fedavg, chord, tmp_path):
    rows = comparison_rows([fedavg, chord])
    md_path, csv_path = write_table(rows, tmp_path / "tables" / "compare.r2")
    assert (md_path.name, csv_path.name) == ("compare.r2.md", "compare.r2.csv")

    with csv_path.open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [list(row) for row in written] == [list(row) for row in rows]
    for row, raw in zip(written, rows, strict=True):
        assert row == {column: str(value) for column, value in raw.items()}

    lines = md_path.read_text().splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0] == "| " + " | ".join(rows[0]) + " |"
    fedavg_cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert fedavg_cells[:4] == ["fedavg", "2", "2", "0.4500"]
    assert "16,016" in fedavg_cells  # bytes with thousands separators
    assert "4,115" in fedavg_cells  # per device and round, rounded to whole bytes

    ratio_md, _ = write_table(downlink_ratio_rows(fedavg, chord), tmp_path / "ratios")
    first_round = [cell.strip() for cell in ratio_md.read_text().splitlines()[2].split("|")[1:-1]]
    assert first_round == ["1", "8,000", "8,220", "220", "380", "36.36", "21.63"]


FIGURES = [
    "bytes_per_round.png",
    "cumulative_bytes.png",
    "ndcg_vs_bytes.png",
    "wire_time_by_tier.png",
    "ndcg_by_tier.png",
]


def _read(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_plot_runs_writes_png_files_with_their_numbers(fedavg, chord, tmp_path):
    written = plot_runs([fedavg, chord], tmp_path / "figures", horizon=10)
    assert [path.name for path in written] == [*FIGURES, "codes_by_tier.png"]
    for path in written:
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
        assert width > 100 and height > 100
        assert path.with_suffix(".csv").exists()


def test_figure_numbers_match_the_ledger_by_hand(fedavg, chord, tmp_path):
    """FedAvg: 60 B of query per device once; rounds carry 16,460 B down and 17,110 B up over
    2 devices x 2 rounds. CHORD: 10,100 B of frozen weights per device once; 760 B down and
    1,360 B up over its rounds."""
    plot_runs([fedavg, chord], tmp_path, horizon=10)
    per_round = {
        (row["strategy"], row["direction"]): float(row["message_bytes_per_device_round"])
        for row in _read(tmp_path / "bytes_per_round.csv")
    }
    assert per_round == {
        ("fedavg", "downlink"): 4115.0,
        ("fedavg", "uplink"): 4277.5,
        ("chord", "downlink"): 190.0,
        ("chord", "uplink"): 340.0,
    }
    cumulative = {
        (row["strategy"], int(row["round"])): row
        for row in _read(tmp_path / "cumulative_bytes.csv")
    }
    assert float(cumulative["chord", 2]["cumulative_message_bytes_per_device"]) == 10100 + 2 * 530
    assert float(cumulative["fedavg", 10]["cumulative_message_bytes_per_device"]) == 60 + 83925
    assert cumulative["chord", 2]["measured"] == "True"
    assert cumulative["chord", 3]["measured"] == "False"
    # CHORD spends more by round 1 (10,630 against 8,452.5 B) and less from round 2 on
    # (11,160 against 16,845 B).
    assert cumulative["chord", 0]["break_even_round_vs_fedavg"] == "2"
    wire = {
        (row["strategy"], row["tier"]): float(row["value"])
        for row in _read(tmp_path / "wire_time_by_tier.csv")
    }
    # Every ledger row of the fixtures takes 0.01 s; FedAvg's device 1 (tier low) has 2 rows
    # per round plus its metrics or error reply.
    assert wire["fedavg", "low"] == pytest.approx(0.03)
    assert wire["chord", "high"] == pytest.approx(0.03)


def test_break_even_by_formula():
    from simulations.costs import CommunicationCost, break_even_round

    def cost(one_time, per_round):
        return CommunicationCost("s", 1, 3, one_time, per_round, 0.0)

    reference = cost(0.0, 100.0)
    assert break_even_round(cost(50.0, 10.0), reference) == 1
    assert break_even_round(cost(1000.0, 10.0), reference) == 12  # 1000 / 90 = 11.1
    assert break_even_round(cost(900.0, 10.0), reference) == 10  # exactly 900 / 90
    assert break_even_round(cost(1000.0, 100.0), reference) is None


def test_report_page_holds_every_table_and_figure(fedavg, chord, tmp_path):
    from simulations.cli import write_report

    report = write_report([fedavg, chord], tmp_path / "out", horizon=10)
    page = (tmp_path / "out" / "report.html").read_text()
    assert report["break_even"] == {"fedavg": 1, "chord": 2}
    assert page.count("data:image/png;base64,") == len(report["plots"]) == 6
    for heading in ("Accuracy and bytes per strategy", "break-even round", "FedAvg over CHORD"):
        assert heading in page
    assert "<script" not in page and 'src="http' not in page  # nothing to fetch


def test_codes_plot_skipped_without_codes(fedavg, tmp_path):
    written = plot_runs([fedavg], tmp_path / "figures")
    assert [path.name for path in written] == FIGURES
    assert not (tmp_path / "figures" / "codes_by_tier.png").exists()


def test_missing_run_files_are_config_errors(fedavg, tmp_path):
    unfinished = RunLog(tmp_path / "unfinished").dir  # ledger and clients, no summary yet
    with pytest.raises(ConfigError, match=r"unfinished/summary\.json"):
        comparison_rows([fedavg, unfinished])
    with pytest.raises(ConfigError, match=r"unfinished/summary\.json"):
        plot_runs([unfinished], tmp_path / "figures")

    (unfinished / "ledger.csv").unlink()
    with pytest.raises(ConfigError, match=r"unfinished/ledger\.csv"):
        downlink_ratio_rows(fedavg, unfinished)
