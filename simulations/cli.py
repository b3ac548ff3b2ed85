"""`chord-fl`: the library's commands (data, pretrain, hypernet) plus the federated ones:
`simulate` runs one strategy in-process, `compare` runs several on the same fleet and seed and
writes a table and plots, `merge` joins the shards of a run, `plot` draws finished runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from chord_fl import cli as library
from chord_fl.errors import ChordError, ConfigError
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.shards import merge_shards
from chord_fl.machine import machine_line
from simulations.costs import DEFAULT_HORIZON, break_even_round, communication_cost
from simulations.html import write_html
from simulations.plots import REFERENCE, plot_runs
from simulations.report import (
    comparison_rows,
    downlink_ratio_rows,
    paired_rows,
    read_summary,
    run_label,
    write_table,
)
from strategies.registry import STRATEGIES


def parse_run_config(pairs: list[str]) -> dict[str, Any]:
    return library.parse_pairs(pairs, "--run-config")


def _overrides(args: argparse.Namespace, strategy: str | None) -> dict[str, Any]:
    values = parse_run_config(args.run_config)
    if strategy:
        values["strategy"] = strategy
    RunConfig.from_mapping(values)  # every key and value checked before any work
    return values


def run_simulate(args: argparse.Namespace) -> dict[str, Any]:
    from simulations.simulate import resume_overrides, simulate, simulate_shards

    if args.resume:
        if args.strategy or args.run_config or args.shards:
            raise ConfigError("--resume takes the run's own settings: drop the other settings")
        overrides, supernodes = resume_overrides(args.resume)
        return simulate(overrides, args.num_supernodes or supernodes, ray_address=args.ray_address)
    overrides = _overrides(args, args.strategy)
    if args.shards:
        if args.num_supernodes:
            raise ConfigError("--shards sets one SuperNode per user: drop --num-supernodes")
        return simulate_shards(overrides, args.shards, args.ray_address)
    return simulate(overrides, args.num_supernodes, ray_address=args.ray_address)


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    base = _overrides(args, None)
    if "run-name" in base or "strategy" in base:
        raise ConfigError("compare names each run after its strategy: drop run-name/strategy")
    config = RunConfig.from_mapping(base)
    unknown = [name for name in args.strategies if name not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    from simulations.simulate import simulate_shards

    run_dirs, failed = {}, []
    for name in args.strategies:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            simulate_shards({**base, "strategy": name}, args.shards or 1)
        except ChordError:
            failed.append(name)
            continue
        run_dirs[name] = config.replace(strategy=name).run_dir
        print(f"== {name}: {time.perf_counter() - started:.0f} s", flush=True)
    if not run_dirs:
        raise ChordError(f"every run failed: {', '.join(failed)}")
    out = Path(args.out or Path(config.output_dir) / "compare")
    report = write_report(list(run_dirs.values()), out)
    if failed:
        raise ChordError(f"runs failed: {', '.join(failed)} (tables of the others in {out})")
    return {"runs": {name: str(path) for name, path in run_dirs.items()}, **report}


FIGURE_CAPTIONS = {
    "bytes_per_round": "Message bytes a device receives and sends in an average round (log).",
    "cumulative_bytes": "Bytes a device has spent after each round; dashed lines extrapolate the "
    "measured rounds; a marker shows where a strategy has spent no more than FedAvg.",
    "ndcg_vs_bytes": "Accuracy against bytes per round: up and to the left is better.",
    "wire_time_by_tier": "Seconds each round keeps a device's radio busy, on its tier's link.",
    "ndcg_by_tier": "Accuracy on each tier: small budgets are where precision is scarce.",
    "codes_by_tier": "Share of channels at each precision, per tier.",
}


def break_even_rows(run_dirs: list[Path], horizon: int) -> list[dict[str, Any]]:
    """Per strategy: one-time and per-round bytes per device, and its break-even round."""
    costs = [communication_cost(path) for path in run_dirs]
    reference = next((cost for cost in costs if cost.strategy == REFERENCE), None)
    rows = []
    for cost in costs:
        row = {
            "strategy": cost.strategy,
            "one_time_message_bytes_per_device": cost.one_time,
            "message_bytes_per_device_round": cost.per_round,
            f"cumulative_message_bytes_per_device_after_{horizon}_rounds": float(
                cost.cumulative(horizon)[-1]
            ),
        }
        if reference is not None:
            row[f"break_even_round_vs_{REFERENCE}"] = break_even_round(cost, reference)
        rows.append(row)
    return rows


def write_report(run_dirs: list[Path], out: Path, horizon: int = DEFAULT_HORIZON) -> dict[str, Any]:
    """The comparison tables (accuracy and bytes, FedAvg's downlink over CHORD's when both ran,
    paired differences, break-even rounds), the figures and one HTML page of all of them."""
    by_strategy = {run_label(read_summary(path)): path for path in run_dirs}
    break_even = break_even_rows(run_dirs, horizon)
    sections = [
        ("Accuracy and bytes per strategy", comparison_rows(run_dirs), "compare"),
        ("Bytes per device and break-even round", break_even, "break-even"),
    ]
    if "fedavg" in by_strategy and "chord" in by_strategy:
        ratios = downlink_ratio_rows(by_strategy["fedavg"], by_strategy["chord"])
        sections.append(("Downlink: FedAvg over CHORD", ratios, "downlink-fedavg-over-chord"))
    if "chord" in by_strategy and len(by_strategy) > 1:
        others = [path for name, path in by_strategy.items() if name != "chord"]
        paired = paired_rows(by_strategy["chord"], others)
        sections.append(("CHORD minus each strategy, paired by device", paired, "paired-vs-chord"))
    tables = [write_table(rows, out / stem) for _, rows, stem in sections]
    plots = plot_runs(run_dirs, out, horizon)
    machine = machine_line()
    page = write_html(
        out / "report.html",
        "chord-fl comparison: " + ", ".join(by_strategy),
        [(heading, rows) for heading, rows, _ in sections],
        [(path, FIGURE_CAPTIONS[path.stem]) for path in plots],
        f"Runs: {', '.join(str(path) for path in run_dirs)}. Machine: {machine}.",
    )
    return {
        "tables": [str(path) for pair in tables for path in pair],
        "plots": [str(path) for path in plots],
        "report": str(page),
        "break_even": {
            row["strategy"]: row.get(f"break_even_round_vs_{REFERENCE}") for row in break_even
        },
        "machine": machine,
    }


def run_merge(args: argparse.Namespace) -> dict[str, Any]:
    shard_dirs = [Path(d) for d in args.shard_dirs]
    out = Path(args.out) if args.out else shard_dirs[0].parent
    return merge_shards(shard_dirs, out)


def run_plot(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out or Path(args.run_dirs[0]).parent / "plots")
    return write_report([Path(path) for path in args.run_dirs], out, args.horizon)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _show_simulate(summary: dict[str, Any]) -> None:
    print(
        f"{summary['strategy']} on {summary['dataset']} ({summary['backbone']}): "
        f"{summary['devices']} devices, {summary['wall_s']} s "
        f"({summary['rounds_wall_s']} s of rounds)"
    )
    print(
        "round    ok  failed  ndcg@10   hr@10  avg bits  down payload B  down message B"
        "  round s  server MiB"
    )
    for row in summary["rounds"]:
        failed = row["error"] + row["rejected"] + row["timeout"]
        print(
            f"{row['round']:>5} {row['ok']:>5} {failed:>7}  {_number(row['ndcg@10'], 4):>7} "
            f"{_number(row['hr@10'], 4):>7}  {_number(row['avg_bits'], 2):>8}  "
            f"{row['downlink_payload_bytes']:>14,}  {row['downlink_message_bytes']:>14,}  "
            f"{_number(row.get('wall_s'), 1):>7}  {_number(row.get('server_rss_mib'), 0):>10}"
        )
    totals = summary["totals"]
    print(
        f"totals: down {totals['downlink_payload_bytes']:,} B payload / "
        f"{totals['downlink_message_bytes']:,} B messages, up {totals['uplink_payload_bytes']:,} / "
        f"{totals['uplink_message_bytes']:,} B"
    )


def _show_paths(report: dict[str, Any]) -> None:
    for key in ("tables", "plots"):
        for item in report.get(key, []):
            print(f"{key}: {item}")
    print(f"report: {report['report']}")
    for strategy, round_ in report["break_even"].items():
        if strategy != REFERENCE:
            reached = "never" if round_ is None else f"round {round_}"
            print(f"break-even against {REFERENCE}: {strategy} at {reached}")


def add_commands(commands: argparse._SubParsersAction) -> None:
    run_config = {
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "run config override, as for flwr run (repeatable; see pyproject.toml)",
    }
    shards = {
        "type": int,
        "metavar": "K",
        "help": "serve the fleet with K simulations in turn, each a share of the users, merged "
        "into one run (faster for fleets of many thousands)",
    }
    simulate = commands.add_parser("simulate", help="run one strategy in-process on Ray")
    simulate.add_argument("--strategy", choices=list(STRATEGIES))
    simulate.add_argument("--run-config", "-c", **run_config)
    simulate.add_argument("--num-supernodes", type=int, help="default: one per user")
    simulate.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    simulate.add_argument(
        "--ray-address", metavar="HOST:PORT", help="run on this Ray cluster (its head node)"
    )
    simulate.add_argument("--shards", **shards)
    simulate.add_argument("--json", action="store_true", help="print the summary as JSON")
    simulate.set_defaults(run=run_simulate, show=_show_simulate)

    compare = commands.add_parser("compare", help="run strategies on one fleet; table and plots")
    compare.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    compare.add_argument("--run-config", "-c", **run_config)
    compare.add_argument("--shards", **shards)
    compare.add_argument("--out", help="table and plot directory (default: OUTPUT-DIR/compare)")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(run=run_compare, show=_show_paths)

    merge = commands.add_parser("merge", help="merge a run's shards (flwr run, shard=I/K)")
    merge.add_argument("shard_dirs", nargs="+", metavar="SHARD_DIR")
    merge.add_argument("--out", help="the run's directory (default: the shards' parent)")
    merge.add_argument("--json", action="store_true", help="print the summary as JSON")
    merge.set_defaults(run=run_merge, show=_show_simulate)

    plot = commands.add_parser("plot", help="table and plots of finished runs")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="default: RUN_DIR/../plots")
    plot.add_argument(
        "--horizon", type=int, default=DEFAULT_HORIZON, help="rounds of the cumulative figure"
    )
    plot.add_argument("--json", action="store_true")
    plot.set_defaults(run=run_plot, show=_show_paths)


def main(argv: list[str] | None = None) -> int:
    return library.main(argv, (add_commands,), __doc__)


if __name__ == "__main__":
    sys.exit(main())
