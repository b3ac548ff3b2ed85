"""The figures per device tier: seconds on the wire, accuracy, and precision codes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chord_fl.federation.runlog import CODE_COLUMNS
from simulations.style import (
    RunFigures,
    bar_offsets,
    has_codes,
    label_bars,
    log_room,
    method_colour,
    plt,
    save_figure,
    tiers_by_budget,
)

CODE_LABELS = ("pruned", "2-bit", "4-bit", "8-bit")  # code k of CODE_COLUMNS
CODE_COLOURS = ("#d9d9d9", "#fdae6b", "#e6550d", "#7f2704")


def wire_seconds(run: RunFigures, tiers: Sequence[str]) -> list[float]:
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


def plot_by_tier(
    runs: Sequence[RunFigures], path: Path, values: Any, ylabel: str, title: str, log: bool
) -> Path:
    tiers = tiers_by_budget(runs)
    offsets, width = bar_offsets(len(runs))
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
            color=method_colour(run.label),
        )
        label_bars(ax, bars, "{:.3g}")
    ax.set_xticks(np.arange(len(tiers)), tiers)
    if log:
        log_room(ax, rows, "value")
    ax.set_xlabel("device tier (smallest budget first)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path, rows)


def tier_ndcg(run: RunFigures, tiers: Sequence[str]) -> list[float]:
    values: dict[str, list[float]] = defaultdict(list)
    for row in run.clients:
        if row["status"] == "ok" and row["ndcg@10"] != "":
            values[row["tier"]].append(float(row["ndcg@10"]))
    return [float(np.mean(values[tier])) if values[tier] else np.nan for tier in tiers]


def _code_shares(run: RunFigures, tiers: Sequence[str]) -> np.ndarray:
    """Share of channels at each code, one row per tier; NaN for a tier with no codes."""
    counts = {tier: np.zeros(len(CODE_COLUMNS)) for tier in tiers}
    for row in run.clients:
        if has_codes(row):
            counts[row["tier"]] += [float(row[column]) for column in CODE_COLUMNS]
    table = np.array([counts[tier] for tier in tiers])
    totals = table.sum(axis=1, keepdims=True)
    return np.divide(table, totals, out=np.full_like(table, np.nan), where=totals > 0)


def plot_codes_by_tier(runs: Sequence[RunFigures], path: Path) -> Path:
    tiers = tiers_by_budget(runs)
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
    return save_figure(fig, path, rows)
