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

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chord_fl.metrics import mean_and_standard_error
from simulations.costs import DEFAULT_HORIZON, break_even_round
from simulations.style import (
    RunFigures,
    bar_offsets,
    has_codes,
    label_bars,
    load_runs,
    log_room,
    method_colour,
    method_marker,
    plt,
    save_figure,
)
from simulations.tier_plots import plot_by_tier, plot_codes_by_tier, tier_ndcg, wire_seconds

REFERENCE = "fedavg"  # the strategy every break-even round is measured against


def _plot_bytes_per_round(runs: Sequence[RunFigures], path: Path) -> Path:
    directions = {"downlink": "down_per_round", "uplink": "up_per_round"}
    offsets, width = bar_offsets(len(runs))
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
            color=method_colour(run.label),
        )
        label_bars(ax, bars, "{:,.0f}")
    ax.set_xticks(np.arange(len(directions)), list(directions))
    log_room(ax, rows, "message_bytes_per_device_round")
    ax.set_ylabel("message bytes per device per round (log)")
    ax.set_title("What a device sends and receives in an average round")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path, rows)


def _plot_cumulative_bytes(runs: Sequence[RunFigures], path: Path, horizon: int) -> Path:
    """Left: every strategy on a log axis, with the break-even rounds against FedAvg. Right, when
    some strategies spend far less than the others: those alone on a linear axis, where their
    differences show instead of hiding under one another."""
    reference = next((run.cost for run in runs if run.strategy == REFERENCE), None)
    finals = {run.label: float(run.cost.cumulative(horizon)[-1]) for run in runs}
    light = [run for run in runs if finals[run.label] < max(finals.values()) / 10]
    panels = 2 if len(light) > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 + 5 * (panels - 1), 4.8), squeeze=False)
    rows, evens = [], defaultdict(list)
    for run in runs:
        cumulative = run.cost.cumulative(horizon)
        measured = min(run.cost.rounds, horizon)
        colour = method_colour(run.label)
        for ax in axes[0] if run in light else axes[0][:1]:
            ax.plot(
                np.arange(measured + 1), cumulative[: measured + 1], color=colour, label=run.label
            )
            ax.plot(np.arange(measured, horizon + 1), cumulative[measured:], color=colour, ls="--")
        even = None if reference is None else break_even_round(run.cost, reference)
        if even is not None and run.strategy != REFERENCE and even <= horizon:
            evens[even].append(run)
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
    left = axes[0][0]
    for even, reached in evens.items():  # one label per round, naming every strategy there
        for run in reached:
            point = run.cost.cumulative(horizon)[even]
            left.plot(
                even,
                point,
                marker=method_marker(run.strategy),
                color=method_colour(run.label),
                ms=8,
            )
        names = ", ".join(run.label for run in reached)
        left.annotate(
            f"{names}: cheaper than {REFERENCE} from round {even}",
            (even, reached[0].cost.cumulative(horizon)[even]),
            xytext=(8, -16),
            textcoords="offset points",
            fontsize=8,
        )
    left.set_yscale("log")
    left.set_title(f"Every strategy ({horizon} rounds, log)")
    if panels == 2:
        axes[0][1].set_title("The ones that send no weights (linear)")
        axes[0][1].yaxis.get_major_formatter().set_scientific(False)
    for ax in axes[0]:
        ax.set_xlabel("round (0 = one-time download; dashed: extrapolated)")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("cumulative message bytes per device, up + down")
    fig.suptitle("What a device has spent after each round")
    fig.tight_layout()
    # The legend from the left panel, which holds every strategy.
    fig.legend(*left.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.9))
    return save_figure(fig, path, rows)


def _device_ndcg(run: RunFigures) -> list[float]:
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


def _plot_ndcg_vs_bytes(runs: Sequence[RunFigures], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    rows = []
    for run in runs:
        per_device = _device_ndcg(run)
        mean, error = mean_and_standard_error(per_device)
        if mean is None:
            continue
        rows.append(
            {
                "strategy": run.label,
                "message_bytes_per_device_round": run.cost.per_round,
                "ndcg@10": mean,
                "standard_error": error or 0.0,
                "devices": len(per_device),
            }
        )
        ax.errorbar(
            max(run.cost.per_round, 1.0),
            mean,
            yerr=error or 0.0,
            marker=method_marker(run.strategy),
            color=method_colour(run.label),
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
    return save_figure(fig, path, rows)


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    horizon: int = DEFAULT_HORIZON,
) -> list[Path]:
    """Write the comparison figures (and their CSV files) for `run_dirs` into `out_dir`; returns
    the figures written. codes_by_tier.png covers the runs that assign precision codes and is
    skipped when none does."""
    runs = load_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_bytes_per_round(runs, out / "bytes_per_round.png"),
        _plot_cumulative_bytes(runs, out / "cumulative_bytes.png", horizon),
        _plot_ndcg_vs_bytes(runs, out / "ndcg_vs_bytes.png"),
        plot_by_tier(
            runs,
            out / "wire_time_by_tier.png",
            wire_seconds,
            "seconds on the wire per device per round (log)",
            "Time on each tier's link per round, up + down",
            log=True,
        ),
        plot_by_tier(
            runs,
            out / "ndcg_by_tier.png",
            tier_ndcg,
            "NDCG@10, full ranking (mean over devices and rounds)",
            "Accuracy per device tier",
            log=False,
        ),
    ]
    with_codes = [run for run in runs if any(has_codes(row) for row in run.clients)]
    if with_codes:
        written.append(plot_codes_by_tier(with_codes, out / "codes_by_tier.png"))
    return written
