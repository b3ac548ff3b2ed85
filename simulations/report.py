"""Tables that compare finished runs, read from their run directories alone.

Per-device-per-round bytes count rounds 1..R only: round 0 holds the one-time download of the
frozen backbone, which would otherwise be smeared over the rounds and make a short run look
costlier than a long one. The totals report it on top.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from chord_fl.errors import ConfigError
from chord_fl.federation.runlog import read_csv
from chord_fl.metrics import mean_and_standard_error

RunDir = str | os.PathLike
DIRECTIONS = {"down": "downlink", "up": "uplink"}
SIZES = ("payload", "message")
COMPARED_METRICS = ("ndcg@10", "hr@10", "sampled_ndcg@10", "sampled_hr@10")
PAIRED_METRICS = ("ndcg@10", "sampled_ndcg@10")


def _require(run_dir: RunDir, name: str) -> Path:
    path = Path(run_dir) / name
    if not path.is_file():
        raise ConfigError(f"{path} not found: {run_dir} is not a finished run directory")
    return path


def read_summary(run_dir: RunDir) -> dict[str, Any]:
    path = _require(run_dir, "summary.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from error


def run_label(summary: Mapping[str, Any]) -> str:
    """How tables and figures name a run: its strategy, and its master when not fp32."""
    master = summary.get("master", "fp32")
    return summary["strategy"] if master == "fp32" else f"{summary['strategy']} ({master} master)"


def read_ledger(run_dir: RunDir) -> list[dict[str, str]]:
    return read_csv(_require(run_dir, "ledger.csv"))


def read_clients(run_dir: RunDir) -> list[dict[str, str]]:
    return read_csv(_require(run_dir, "clients.csv"))


def bytes_by_round(ledger: Iterable[Mapping[str, str]]) -> dict[int, Counter[str]]:
    """Bytes per round keyed "down_payload", "up_message", ...; round 0 is the one-time download."""
    by_round: dict[int, Counter[str]] = defaultdict(Counter)
    for row in ledger:
        counts = by_round[int(row["round"])]
        for size in SIZES:
            counts[f"{row['direction']}_{size}"] += int(row[f"{size}_bytes"])
    return dict(sorted(by_round.items()))


def total_bytes(by_round: Mapping[int, Counter[str]], *, one_time: bool) -> Counter[str]:
    """Sum over rounds 1..R, plus round 0 when `one_time`."""
    total: Counter[str] = Counter()
    for number, counts in by_round.items():
        if number > 0 or one_time:
            total.update(counts)  # update, unlike +, keeps zero counts
    return total


def _mean_over_rounds(rounds: list[dict[str, Any]], key: str) -> float | None:
    # A round where no device answered has None; it says nothing about the strategy's quality.
    values = [entry[key] for entry in rounds if entry.get(key) is not None]
    return fmean(values) if values else None


def _comparison_row(run_dir: RunDir) -> dict[str, Any]:
    summary = read_summary(run_dir)
    by_round = bytes_by_round(read_ledger(run_dir))
    rounds, devices = summary["rounds"], int(summary["devices"])
    if not rounds or devices < 1:
        raise ConfigError(f"{Path(run_dir) / 'summary.json'} has no rounds or no devices")
    row: dict[str, Any] = {
        "strategy": run_label(summary),
        "devices": devices,
        "rounds": len(rounds),
    }
    row.update({metric: _mean_over_rounds(rounds, metric) for metric in COMPARED_METRICS})
    row["avg_bits"] = _mean_over_rounds(rounds, "avg_bits")
    model_bytes = _mean_over_rounds(rounds, "model_bytes")
    row["model_kib"] = None if model_bytes is None else model_bytes / 1024
    row["adapt_ms"] = _mean_over_rounds(rounds, "adapt_ms")
    in_rounds = total_bytes(by_round, one_time=False)
    for direction, name in DIRECTIONS.items():
        for size in SIZES:
            row[f"{name}_{size}_bytes_per_device_round"] = in_rounds[f"{direction}_{size}"] / (
                devices * len(rounds)
            )
    everything = total_bytes(by_round, one_time=True)
    for size in SIZES:
        row[f"downlink_{size}_bytes_total"] = everything[f"down_{size}"]
    row["wall_s"] = float(summary["wall_s"])
    return row


def comparison_rows(run_dirs: Sequence[RunDir]) -> list[dict[str, Any]]:
    """One row per run: mean accuracy over rounds, model size, and bytes per device and round."""
    return [_comparison_row(run_dir) for run_dir in run_dirs]


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _ratio_row(label: int | str, reference: Counter[str], other: Counter[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"round": label}
    for side, counts in (("reference", reference), ("other", other)):
        for size in SIZES:
            row[f"{side}_downlink_{size}_bytes"] = counts[f"down_{size}"]
    for size in SIZES:
        row[f"downlink_{size}_ratio"] = _ratio(reference[f"down_{size}"], other[f"down_{size}"])
    return row


def downlink_ratio_rows(reference_dir: RunDir, other_dir: RunDir) -> list[dict[str, Any]]:
    """Downlink bytes of the reference run over the other run's, per round and in total."""
    reference, other = (bytes_by_round(read_ledger(d)) for d in (reference_dir, other_dir))
    rounds = sorted((set(reference) | set(other)) - {0})
    rows = [
        _ratio_row(number, reference.get(number, Counter()), other.get(number, Counter()))
        for number in rounds
    ]
    for label, one_time in (("total (rounds)", False), ("total (with one-time download)", True)):
        rows.append(
            _ratio_row(
                label,
                total_bytes(reference, one_time=one_time),
                total_bytes(other, one_time=one_time),
            )
        )
    return rows


def _device_means(run_dir: RunDir, metric: str) -> dict[tuple[str, str], float]:
    """(round, partition) -> the device's metric, for devices that answered."""
    return {
        (row["round"], row["partition"]): float(row[metric])
        for row in read_clients(run_dir)
        if row["status"] == "ok" and row[metric] != ""
    }


def paired_rows(reference_dir: RunDir, other_dirs: Sequence[RunDir]) -> list[dict[str, Any]]:
    """The reference run minus each other run, device by device: mean and standard error.

    Both runs score the same devices on the same targets, so the difference per device removes
    the spread between users that dominates each run's own mean. The unit is the device (its
    rounds averaged, over the rounds where both runs have its metrics), since one device's rounds
    are not independent.
    """
    reference = run_label(read_summary(reference_dir))
    rows = []
    for other_dir in other_dirs:
        row: dict[str, Any] = {"strategy": run_label(read_summary(other_dir))}
        for metric in PAIRED_METRICS:
            ours, theirs = _device_means(reference_dir, metric), _device_means(other_dir, metric)
            by_device: dict[str, list[float]] = defaultdict(list)
            for key in ours.keys() & theirs.keys():
                by_device[key[1]].append(ours[key] - theirs[key])
            differences = [fmean(values) for values in by_device.values()]
            row[f"{metric}_devices"] = len(differences)
            mean, error = mean_and_standard_error(differences)
            row[f"{reference}_minus_{metric}"] = mean
            row[f"{metric}_standard_error"] = error
            row[f"{metric}_z"] = mean / error if mean is not None and error else None
        rows.append(row)
    return rows


def format_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value).replace("|", r"\|")  # a bare pipe would split the cell
    if "bytes" in column:
        return f"{value:,.0f}"
    if isinstance(value, int):  # counts: devices, rounds, epochs
        return str(value)
    if column.endswith(("ratio", "_z")):
        return f"{value:.2f}"
    if "@" in column:
        return f"{value:.4f}"
    return f"{value:,.2f}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Numbers right-aligned: bytes with thousands separators, metrics 4 and ratios 2 decimals."""
    align = [
        "---:" if all(_is_number(row.get(c)) for row in rows if row.get(c) is not None) else "---"
        for c in columns
    ]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(format_cell(c, row.get(c)) for c in columns) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def write_table(
    rows: Sequence[Mapping[str, Any]], path_stem: str | os.PathLike
) -> tuple[Path, Path]:
    """Write `path_stem`.md for reading and `path_stem`.csv with the raw values."""
    if not rows:
        raise ValueError(f"no rows to write to {path_stem}")
    columns = list(dict.fromkeys(column for row in rows for column in row))
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    # with_name, not with_suffix: a stem such as "fedavg-vs-chord.r3" keeps its dot
    md_path, csv_path = (stem.with_name(stem.name + suffix) for suffix in (".md", ".csv"))
    md_path.write_text(_markdown_table(rows, columns))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return md_path, csv_path
