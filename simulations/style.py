"""How every figure looks and is saved: one colour and one marker per method in every figure of
the project (strategies, and the benchmarks' reference points), the runs a comparison figure
reads, bars with their values, and a CSV of each figure's numbers beside it."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from chord_fl.errors import ConfigError
from chord_fl.federation.runlog import CODE_COLUMNS
from simulations.costs import CommunicationCost, communication_cost
from simulations.report import read_clients, read_ledger, read_summary, run_label

matplotlib.use("Agg")  # headless: servers and tests have no display

import matplotlib.pyplot as plt  # noqa: E402

DPI = 120

# One colour per method in every figure (strategies, and the benchmarks' reference points).
METHOD_COLOURS = {
    "fp32": "#000000",
    "uniform": "#e69f00",
    "random": "#999999",
    "global": "#56b4e9",
    "global-target": "#a6cee3",
    "chord": "#d55e00",
    "init": "#f4a582",
    "chord-sens": "#cc79a7",
    "init-sens": "#f1b6da",
    "chord-sens-relax": "#17becf",
    "init-sens-relax": "#f1b6da",  # the same network as init-sens
    "chord-relax": "#8073ac",
    "init-relax": "#b2abd2",
    "chord-no-element": "#b2182b",
    "chord-no-filter": "#762a83",
    "chord-no-layer": "#8c510a",
    "chord+refined": "#67001f",
    "global+refined": "#01665e",
    "window": "#009e73",
    "oracle": "#0072b2",
    "fedavg": "#4d4d4d",
    "fedavg-uniform": "#f0e442",
    "floor": "#33a02c",  # Flower's own engine with trivial apps (benchmarks/fleet.py)
}
# A method run with devices holding the 8-bit master: its own shade (labels from `run_label`).
MASTER_COLOURS = {"int8": "#7f2704"}
METHOD_MARKERS = {
    "fp32": "s",
    "uniform": "D",
    "random": "x",
    "global": "^",
    "chord": "o",
    "chord+refined": "p",
    "global+refined": "d",
    "chord-sens": "P",
    "chord-relax": "X",
    "chord-sens-relax": "H",
    "chord-no-element": "v",
    "chord-no-filter": "<",
    "chord-no-layer": ">",
    "fedavg": "*",
    "fedavg-uniform": "h",
}


def method_colour(name: str) -> str:
    for master, colour in MASTER_COLOURS.items():
        if name.endswith(f"({master} master)"):
            return colour
    return METHOD_COLOURS.get(name.split(" ")[0], "#bababa")


def method_marker(name: str) -> str:
    return METHOD_MARKERS.get(name.split(" ")[0], "o")


@dataclass(frozen=True)
class RunFigures:
    label: str
    strategy: str
    cost: CommunicationCost
    ledger: list[dict[str, str]]
    clients: list[dict[str, str]]


def load_runs(run_dirs: Sequence[str | os.PathLike]) -> list[RunFigures]:
    if not run_dirs:
        raise ConfigError("no run directories to plot")
    summaries = [read_summary(run_dir) for run_dir in run_dirs]
    labels = [run_label(summary) for summary in summaries]
    runs = []
    for run_dir, summary, label in zip(run_dirs, summaries, labels, strict=True):
        # Two runs of one strategy (seeds, budgets) would otherwise share a legend entry.
        if labels.count(label) > 1:
            label = f"{label} ({Path(run_dir).name})"
        cost = communication_cost(run_dir)
        ledger, clients = read_ledger(run_dir), read_clients(run_dir)
        runs.append(RunFigures(label, summary["strategy"], cost, ledger, clients))
    return runs


def tiers_by_budget(runs: Sequence[RunFigures]) -> list[str]:
    """Tiers from the smallest budget to the largest."""
    budgets: dict[str, list[float]] = {}
    for run in runs:
        for row in run.clients:
            budgets.setdefault(row["tier"], []).append(float(row["budget_bytes"]))
    return sorted(budgets, key=lambda tier: float(np.mean(budgets[tier])))


def has_codes(row: dict[str, str]) -> bool:
    return all(row[column] != "" for column in CODE_COLUMNS)


def save_figure(fig: Figure, path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """The figure as PNG, and its numbers as a CSV of the same name."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    with path.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def bar_offsets(count: int) -> tuple[np.ndarray, float]:
    width = 0.8 / count
    return (np.arange(count) - (count - 1) / 2) * width, width


def label_bars(ax: Any, bars: Any, fmt: str) -> None:
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


def log_room(ax: Any, rows: Sequence[Mapping[str, Any]], key: str) -> None:
    """A log axis from below the smallest bar to well above the largest, so labels fit."""
    values = [float(row[key]) for row in rows if np.isfinite(float(row[key])) and row[key] > 0]
    if values:
        ax.set_yscale("log")
        ax.set_ylim(min(values) / 2, max(values) * 5)
