"""Figures that compare finished runs: bytes by round, accuracy against bytes, and per tier.

Everything is read from the run directories, so the figures can be redrawn without rerunning.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from chord_fl.errors import ConfigError
from chord_fl.federation.runlog import CODE_COLUMNS
from simulations.report import bytes_by_round, read_clients, read_ledger, read_summary

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
    "chord-relax": "#8073ac",
    "init-relax": "#b2abd2",
    "chord-no-element": "#b2182b",
    "chord-no-filter": "#762a83",
    "chord-no-layer": "#8c510a",
    "window": "#009e73",
    "oracle": "#0072b2",
    "fedavg": "#4d4d4d",
    "fedavg-uniform": "#f0e442",
}


def method_colour(name: str) -> str:
    return METHOD_COLOURS.get(name.split(" ")[0], "#bababa")


CODE_LABELS = ("pruned", "2-bit", "4-bit", "8-bit")  # code k of CODE_COLUMNS
SIZE_TITLES = {"payload": "payload", "message": "serialised message"}


@dataclass(frozen=True)
class _Run:
    label: str
    summary: dict[str, Any]
    by_round: dict[int, Counter[str]]  # ledger bytes, see bytes_by_round
    clients: list[dict[str, str]]


def _load_runs(run_dirs: Sequence[str | os.PathLike]) -> list[_Run]:
    if not run_dirs:
        raise ConfigError("no run directories to plot")
    summaries = [read_summary(run_dir) for run_dir in run_dirs]
    strategies = [summary["strategy"] for summary in summaries]
    runs = []
    for run_dir, summary, strategy in zip(run_dirs, summaries, strategies, strict=True):
        # Two runs of one strategy (seeds, budgets) would otherwise share a legend entry.
        label = (
            strategy if strategies.count(strategy) == 1 else f"{strategy} ({Path(run_dir).name})"
        )
        by_round = bytes_by_round(read_ledger(run_dir))
        runs.append(_Run(label, summary, by_round, read_clients(run_dir)))
    return runs


def _cumulative_bytes(run: _Run, size: str) -> np.ndarray:
    """Bytes in both directions up to and including each round, indexed by round (0 = one-time)."""
    last = max([*run.by_round, *(entry["round"] for entry in run.summary["rounds"])], default=0)
    rounds = [run.by_round.get(number, Counter()) for number in range(last + 1)]
    return np.cumsum([counts[f"down_{size}"] + counts[f"up_{size}"] for counts in rounds])


def _positive(values: np.ndarray) -> np.ndarray:
    # A log axis cannot show zero (a run with no one-time download starts at 0 bytes).
    return np.where(values > 0, values, np.nan)


def _tiers(runs: Sequence[_Run]) -> list[str]:
    """Tiers from the smallest budget to the largest."""
    budgets: dict[str, list[float]] = {}
    for run in runs:
        for row in run.clients:
            budgets.setdefault(row["tier"], []).append(float(row["budget_bytes"]))
    return sorted(budgets, key=lambda tier: float(np.mean(budgets[tier])))


def _has_codes(row: dict[str, str]) -> bool:
    return all(row[column] != "" for column in CODE_COLUMNS)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_bytes(runs: Sequence[_Run], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(SIZE_TITLES), figsize=(11, 4.2), sharey=True)
    for ax, (size, title) in zip(axes, SIZE_TITLES.items(), strict=True):
        for run in runs:
            cumulative = _cumulative_bytes(run, size)
            ax.plot(np.arange(len(cumulative)), _positive(cumulative), marker="o", label=run.label)
        ax.set_yscale("log")
        ax.set_title(f"Cumulative {title} bytes (up + down)")
        ax.set_xlabel("round (0 = one-time download)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("bytes")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _plot_ndcg_vs_bytes(runs: Sequence[_Run], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        cumulative = _cumulative_bytes(run, "message")
        points = [
            (cumulative[entry["round"]], entry["ndcg@10"])
            for entry in run.summary["rounds"]
            if entry["ndcg@10"] is not None
        ]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="o", label=run.label)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative message bytes (up + down, with one-time download)")
    ax.set_ylabel("NDCG@10 (full ranking, mean over devices)")
    ax.set_title("Accuracy against communication")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _tier_ndcg(run: _Run, tiers: Sequence[str]) -> list[float]:
    values: dict[str, list[float]] = defaultdict(list)
    for row in run.clients:
        if row["status"] == "ok" and row["ndcg@10"] != "":
            values[row["tier"]].append(float(row["ndcg@10"]))
    return [float(np.mean(values[tier])) if values[tier] else np.nan for tier in tiers]


def _plot_ndcg_by_tier(runs: Sequence[_Run], path: Path) -> Path:
    tiers = _tiers(runs)
    positions = np.arange(len(tiers))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, len(tiers) * (0.6 + 0.4 * len(runs))), 4.5))
    for index, run in enumerate(runs):
        offset = (index - (len(runs) - 1) / 2) * width
        ax.bar(positions + offset, _tier_ndcg(run, tiers), width, label=run.label)
    ax.set_xticks(positions, tiers)
    ax.set_xlabel("device tier")
    ax.set_ylabel("NDCG@10 (full ranking, mean over rounds)")
    ax.set_title("Accuracy per device tier")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


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
    for ax, run in zip(axes.flat, runs, strict=False):
        shares = _code_shares(run, tiers)
        bottom = np.zeros(len(tiers))
        for code, label in enumerate(CODE_LABELS):
            ax.bar(tiers, shares[:, code], bottom=bottom, label=label)
            bottom += np.nan_to_num(shares[:, code])
        ax.set_title(run.label)
        ax.set_xlabel("device tier")
    for row in axes:
        row[0].set_ylabel("share of channels")
    axes[0][columns - 1].legend(title="code", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Precision codes per device tier")
    fig.tight_layout()
    return _save(fig, path)


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Write the comparison figures for `run_dirs` into `out_dir`; returns the files written.

    codes_by_tier.png covers the runs that assign precision codes and is skipped when none does.
    """
    runs = _load_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_bytes(runs, out / "bytes.png"),
        _plot_ndcg_vs_bytes(runs, out / "ndcg_vs_bytes.png"),
        _plot_ndcg_by_tier(runs, out / "ndcg_by_tier.png"),
    ]
    with_codes = [run for run in runs if any(_has_codes(row) for row in run.clients)]
    if with_codes:
        written.append(_plot_codes_by_tier(with_codes, out / "codes_by_tier.png"))
    return written
