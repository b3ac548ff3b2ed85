"""Figures that compare finished runs, one question each, with the numbers of each figure in a
CSV beside it:

- bytes_per_round: what a device sends and receives in an average round, per strategy;
- cumulative_bytes: what a device has spent after each round, over a horizon (measured rounds
  solid, extrapolated dashed), with the round where each strategy breaks even against FedAvg;
- ndcg_vs_bytes: accuracy against bytes per round, one point per strategy;
- wire_time_by_tier: seconds on the wire per round on each tier's link;
- ndcg_by_tier and codes_by_tier: accuracy and precision codes per device tier.

Everything is read from the run directories, so the figures can be redrawn without rerunning.
Each strategy keeps its colour and marker in every figure.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from chord_fl.errors import ConfigError
from chord_fl.federation.runlog import CODE_COLUMNS
from chord_fl.metrics import mean_and_standard_error
from simulations.costs import (
    DEFAULT_HORIZON,
    CommunicationCost,
    break_even_round,
    communication_cost,
)
from simulations.report import read_clients, read_ledger, read_summary
from simulations.style import method_colour, method_marker

matplotlib.use("Agg")  # headless: servers and tests have no display

import matplotlib.pyplot as plt  # noqa: E402

DPI = 120
REFERENCE = "fedavg"  # the strategy every break-even round is measured against


CODE_LABELS = ("pruned", "2-bit", "4-bit", "8-bit")  # code k of CODE_COLUMNS
CODE_COLOURS = ("#d9d9d9", "#fdae6b", "#e6550d", "#7f2704")


@dataclass(frozen=True)
class _Run:
    label: str
    strategy: str
    cost: CommunicationCost
    ledger: list[dict[str, str]]
    clients: list[dict[str, str]]


def _load_runs(run_dirs: Sequence[str | os.PathLike]) -> list[_Run]:
    if not run_dirs:
        raise ConfigError("no run directories to plot")
    strategies = [read_summary(run_dir)["strategy"] for run_dir in run_dirs]
    runs = []
    for run_dir, strategy in zip(run_dirs, strategies, strict=True):
        # Two runs of one strategy (seeds, budgets) would otherwise share a legend entry.
        label = (
            strategy if strategies.count(strategy) == 1 else f"{strategy} ({Path(run_dir).name})"
        )
        cost = communication_cost(run_dir)
        runs.append(_Run(label, strategy, cost, read_ledger(run_dir), read_clients(run_dir)))
    return runs


def _tiers(runs: Sequence[_Run]) -> list[str]:
    """Tiers from the smallest budget to the largest."""
    budgets: dict[str, list[float]] = {}
    for run in runs:
        for row in run.clients:
            budgets.setdefault(row["tier"], []).append(float(row["budget_bytes"]))
    return sorted(budgets, key=lambda tier: float(np.mean(budgets[tier])))


def _has_codes(row: dict[str, str]) -> bool:
    return all(row[column] != "" for column in CODE_COLUMNS)


def _save(fig: Figure, path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """The figure as PNG, and its numbers as a CSV of the same name."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    with path.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _bar_offsets(count: int) -> tuple[np.ndarray, float]:
    width = 0.8 / count
    return (np.arange(count) - (count - 1) / 2) * width, width


def _label_bars(ax: Any, bars: Any, fmt: str) -> None:
    for bar in bars:
        height = bar.get_height()
        if np.isfinite(height) and height > 0:
            ax.annotate(
                fmt.format(height),
                (bar.get_x() + bar.get_width() / 2, height),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
                xytext=(0, 2),
                textcoords="offset points",
            )


def _log_room(ax: Any, rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """A log axis from below the smallest bar to well above the largest, so labels fit."""
    values = [float(row[key]) for row in rows if np.isfinite(float(row[key])) and row[key] > 0]
    if values:
        ax.set_yscale("log")
        ax.set_ylim(min(values) / 2, max(values) * 5)


def _plot_bytes_per_round(runs: Sequence[_Run], path: Path) -> Path:
    directions = {"downlink": "down_per_round", "uplink": "up_per_round"}
    offsets, width = _bar_offsets(len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(runs) + 2), 4.5))
    rows = []
    for run, offset in zip(runs, offsets, strict=True):
        values = [getattr(run.cost, attribute) for attribute in directions.values()]
        rows += [
            {"strategy": run.label, "direction": name, "message_bytes_per_device_round": value}
            for name, value in zip(directions, values, strict=True)
        ]
        bars = ax.bar(
            np.arange(len(directions)) + offset,
            [value if value > 0 else np.nan for value in values],
            width,
            label=run.label,
            color=method_colour(run.strategy),
        )
        _label_bars(ax, bars, "{:,.0f}")
    ax.set_xticks(np.arange(len(directions)), list(directions))
    _log_room(ax, rows, "message_bytes_per_device_round")
    ax.set_ylabel("message bytes per device per round (log)")
    ax.set_title("What a device sends and receives in an average round")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path, rows)


def _plot_cumulative_bytes(runs: Sequence[_Run], path: Path, horizon: int) -> Path:
    reference = next((run.cost for run in runs if run.strategy == REFERENCE), None)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    rows = []
    for run in runs:
        cumulative = run.cost.cumulative(horizon)
        measured = min(run.cost.rounds, horizon)
        colour, marker = method_colour(run.strategy), method_marker(run.strategy)
        ax.plot(np.arange(measured + 1), cumulative[: measured + 1], color=colour, label=run.label)
        ax.plot(np.arange(measured, horizon + 1), cumulative[measured:], color=colour, ls="--")
        even = None if reference is None else break_even_round(run.cost, reference)
        if even is not None and run.strategy != REFERENCE and even <= horizon:
            ax.plot(even, cumulative[even], marker=marker, color=colour, ms=9, mec="white")
            ax.annotate(
                f"breaks even: round {even}",
                (even, cumulative[even]),
                xytext=(6, -12),
                textcoords="offset points",
                fontsize=8,
                color=colour,
            )
        rows += [
            {
                "strategy": run.label,
                "round": number,
                "cumulative_message_bytes_per_device": float(cumulative[number]),
                "measured": number <= run.cost.rounds,
                "break_even_round_vs_fedavg": "" if even is None else even,
            }
            for number in range(horizon + 1)
        ]
    ax.set_yscale("log")
    ax.set_xlabel("round (0 = one-time download; dashed: extrapolated from the measured rounds)")
    ax.set_ylabel("cumulative message bytes per device (log)")
    ax.set_title(f"What a device has spent after each round, up and down ({horizon} rounds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path, rows)


def _device_ndcg(run: _Run) -> list[float]:
    """Each device's NDCG@10 (full ranking) averaged over its rounds."""
    by_device: dict[str, list[float]] = defaultdict(list)
    for row in run.clients:
        if row["status"] == "ok" and row["ndcg@10"] != "":
            by_device[row["partition"]].append(float(row["ndcg@10"]))
    return [float(np.mean(values)) for values in by_device.values()]


def _spread_labels(values: Sequence[float], gap: float) -> list[float]:
    """Positions for labels at `values` (axis fraction), at least `gap` apart, in value order."""
    order = np.argsort(values)
    placed = np.array(values, dtype=float)
    for previous, current in zip(order, order[1:], strict=False):
        placed[current] = max(placed[current], placed[previous] + gap)
    return placed.tolist()


def _plot_ndcg_vs_bytes(runs: Sequence[_Run], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    rows = []
    for run in runs:
        mean, error = mean_and_standard_error(_device_ndcg(run))
        if mean is None:
            continue
        rows.append(
            {
                "strategy": run.label,
                "message_bytes_per_device_round": run.cost.per_round,
                "ndcg@10": mean,
                "standard_error": error or 0.0,
                "devices": len(_device_ndcg(run)),
            }
        )
        ax.errorbar(
            max(run.cost.per_round, 1.0),
            mean,
            yerr=error or 0.0,
            marker=method_marker(run.strategy),
            color=method_colour(run.strategy),
            capsize=3,
            ms=8,
            ls="none",
        )
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)
    fig.canvas.draw()  # limits are final: labels can be spread in axis fractions
    low, high = ax.get_ylim()
    height = ax.get_window_extent().height * 72 / fig.dpi  # the axes' height in points
    fractions = [(row["ndcg@10"] - low) / (high - low) for row in rows]
    for row, fraction, placed in zip(rows, fractions, _spread_labels(fractions, 0.05), strict=True):
        ax.annotate(
            row["strategy"],
            (max(row["message_bytes_per_device_round"], 1.0), row["ndcg@10"]),
            xytext=(10, (placed - fraction) * height),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=method_colour(row["strategy"]),
        )
    ax.set_xlabel("message bytes per device per round, up + down (log)")
    ax.set_ylabel("NDCG@10, full ranking (device mean, +- s.e.)")
    ax.set_title("Accuracy against what each round costs")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path, rows)


def _wire_seconds(run: _Run, tiers: Sequence[str]) -> list[float]:
    """Mean seconds on the wire per device per round (rounds >= 1, both directions), per tier."""
    seconds: dict[str, float] = defaultdict(float)
    devices: dict[str, set[str]] = defaultdict(set)
    for row in run.ledger:
        if int(row["round"]) > 0:
            seconds[row["tier"]] += float(row["transfer_s"])
        devices[row["tier"]].add(row["partition"])
    rounds = max(run.cost.rounds, 1)
    return [
        seconds[tier] / (len(devices[tier]) * rounds) if devices[tier] else np.nan for tier in tiers
    ]


def _plot_by_tier(
    runs: Sequence[_Run], path: Path, values: Any, ylabel: str, title: str, log: bool
) -> Path:
    tiers = _tiers(runs)
    offsets, width = _bar_offsets(len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, len(tiers) * (0.6 + 0.4 * len(runs))), 4.5))
    rows = []
    for run, offset in zip(runs, offsets, strict=True):
        heights = values(run, tiers)
        rows += [
            {"strategy": run.label, "tier": tier, "value": value}
            for tier, value in zip(tiers, heights, strict=True)
        ]
        bars = ax.bar(
            np.arange(len(tiers)) + offset,
            heights,
            width,
            label=run.label,
            color=method_colour(run.strategy),
        )
        _label_bars(ax, bars, "{:.3g}")
    ax.set_xticks(np.arange(len(tiers)), tiers)
    if log:
        _log_room(ax, rows, "value")
    ax.set_xlabel("device tier (smallest budget first)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path, rows)


def _tier_ndcg(run: _Run, tiers: Sequence[str]) -> list[float]:
    values: dict[str, list[float]] = defaultdict(list)
    for row in run.clients:
        if row["status"] == "ok" and row["ndcg@10"] != "":
            values[row["tier"]].append(float(row["ndcg@10"]))
    return [float(np.mean(values[tier])) if values[tier] else np.nan for tier in tiers]


def _code_shares(run: _Run, tiers: Sequence[str]) -> np.ndarray:
    """Share of channels at each code, one row per tier; NaN for a tier with no codes."""
    counts = {tier: np.zeros(len(CODE_COLUMNS)) for tier in tiers}
    for row in run.clients:
        if _has_codes(row):
            counts[row["tier"]] += [float(row[column]) for column in CODE_COLUMNS]
    table = np.array([counts[tier] for tier in tiers])
    totals = table.sum(axis=1, keepdims=True)
    return np.divide(table, totals, out=np.full_like(table, np.nan), where=totals > 0)


def _plot_codes_by_tier(runs: Sequence[_Run], path: Path) -> Path:
    tiers = _tiers(runs)
    columns = min(4, len(runs))
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1 + 4 * columns, 4 * rows), sharey=True, squeeze=False
    )
    for ax in axes.flat[len(runs) :]:
        ax.set_visible(False)
    rows: list[dict[str, Any]] = []
    for ax, run in zip(axes.flat, runs, strict=False):
        shares = _code_shares(run, tiers)
        rows += [
            {"strategy": run.label, "tier": tier, "code": label, "share": shares[t, code]}
            for t, tier in enumerate(tiers)
            for code, label in enumerate(CODE_LABELS)
        ]
        bottom = np.zeros(len(tiers))
        for code, label in enumerate(CODE_LABELS):
            ax.bar(tiers, shares[:, code], bottom=bottom, label=label, color=CODE_COLOURS[code])
            bottom += np.nan_to_num(shares[:, code])
        ax.set_title(run.label)
        ax.set_xlabel("device tier")
    for row in axes:
        row[0].set_ylabel("share of channels")
    axes[0][columns - 1].legend(title="code", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Which precision each tier's channels get")
    fig.tight_layout()
    return _save(fig, path, rows)


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    horizon: int = DEFAULT_HORIZON,
) -> list[Path]:
    """Write the comparison figures (and their CSV files) for `run_dirs` into `out_dir`; returns
    the figures written. codes_by_tier.png covers the runs that assign precision codes and is
    skipped when none does."""
    runs = _load_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_bytes_per_round(runs, out / "bytes_per_round.png"),
        _plot_cumulative_bytes(runs, out / "cumulative_bytes.png", horizon),
        _plot_ndcg_vs_bytes(runs, out / "ndcg_vs_bytes.png"),
        _plot_by_tier(
            runs,
            out / "wire_time_by_tier.png",
            _wire_seconds,
            "seconds on the wire per device per round (log)",
            "Time on each tier's link per round, up + down",
            log=True,
        ),
        _plot_by_tier(
            runs,
            out / "ndcg_by_tier.png",
            _tier_ndcg,
            "NDCG@10, full ranking (mean over devices and rounds)",
            "Accuracy per device tier",
            log=False,
        ),
    ]
    with_codes = [run for run in runs if any(_has_codes(row) for row in run.clients)]
    if with_codes:
        written.append(_plot_codes_by_tier(with_codes, out / "codes_by_tier.png"))
    return written
