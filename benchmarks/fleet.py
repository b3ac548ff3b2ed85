"""Per-device cost of a federated round against Flower's own floor, on one fleet.

The floor is a trivial pair of apps: the ServerApp sends every node an empty train and an empty
evaluate message each round (two round trips, as CHORD without `profile-ahead` makes), and the
ClientApp answers with an empty reply. Each strategy then runs the same fleet and rounds.
Printed: milliseconds per device-round (rounds only, after the nodes have registered), the ratio
to the floor, the peak RSS of the process that hosts the ServerApp, its RSS after round 1 and how
much it grew per later round (whether memory grows with rounds, and whether Flower's own floor
grows too). Each case runs in a fresh process. Then where CHORD's own time goes, per device, timed
outside Flower on the same cloud models: the profile, the cloud's codes (batched) and their
encoding (the smallest wire form), and on the device decode, quantize and scoring.

    python benchmarks/fleet.py --dataset ml-100k --rounds 3 --strategies chord fp32 fedavg
    python benchmarks/fleet.py --strategies chord:profile-ahead=false chord
    python benchmarks/fleet.py --scaling 30431 --plot benchmarks/results/fleet-scaling.png
    python benchmarks/fleet.py --dataset yelp --devices 30431 --rounds 1 --shards 6 \
        --strategies chord fp32 --breakdown-devices 0

`--shards K` serves the fleet with K simulations in turn (`chord-fl simulate --shards`); its floor
is one trivial simulation of a shard's size, the floor each of them pays per device-round.

Each case's row is printed and appended to a JSON-lines file as soon as it ends (with the case's
whole wall time, cloud training included), so a long fleet keeps what finished; a case that dies
is reported and the next one runs. `--scaling` reads those rows back: the cost per message
against the number of SuperNodes, and what that means for a larger fleet.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import tempfile
import time
from pathlib import Path
from typing import Any

from results_file import append_row, read_rows

from chord_fl.cli import parse_pairs
from chord_fl.machine import machine_line, memory_mib

FLOOR = "floor"


def _floor(devices: int, rounds: int) -> tuple[float, list[float]]:
    """Seconds of `rounds` trivial rounds over `devices` nodes, and the process's resident memory
    (MiB) at the end of each round."""
    from flwr.app import Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from simulations.server import wait_for_nodes
    from simulations.simulate import QUIET_ENV, backend_config

    seconds: list[float] = []
    memory: list[float] = []
    server, client = ServerApp(), ClientApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = wait_for_nodes(grid, devices, patience=30.0)
        started = time.perf_counter()
        for _ in range(rounds):
            for kind in (MessageType.TRAIN, MessageType.EVALUATE):
                messages = [Message(RecordDict(), dst_node_id=n, message_type=kind) for n in nodes]
                replies = list(grid.send_and_receive(messages, timeout=600))
                assert len(replies) == len(nodes), "a trivial node did not answer"
            memory.append(memory_mib()[0])
        seconds.append(time.perf_counter() - started)

    def answer(message: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=message)

    client.train()(answer)
    client.evaluate()(answer)

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    run_simulation(server, client, num_supernodes=devices, backend_config=backend_config())
    return seconds[0], memory


def _strategy(overrides: dict[str, Any], shards: int) -> tuple[float, int, float, list[float]]:
    """Seconds of the rounds, devices, the ServerApp's peak and per-round resident memory."""
    from simulations.simulate import simulate, simulate_shards

    # Sharded: each shard's ServerApp runs in a child process, so its memory is in the summary.
    summary = simulate_shards(overrides, shards) if shards > 1 else simulate(overrides)
    memory = [entry["server_rss_mib"] for entry in summary["rounds"]]
    peak = max([memory_mib()[1], *(entry["server_peak_rss_mib"] for entry in summary["rounds"])])
    return summary["rounds_wall_s"], int(summary["devices"]), peak, memory


def _case(name: str, args: argparse.Namespace, out: Any) -> None:
    """One case in this (fresh) process: seconds of the rounds, devices, peak RSS in MiB, the
    wall time of the whole case and the resident memory at the end of each round."""
    started = time.perf_counter()
    if name == FLOOR:
        devices = -(-args.devices // args.shards)  # as many nodes as the largest shard holds
        seconds, memory = _floor(devices, args.rounds)
        peak = memory_mib()[1]
    else:
        seconds, devices, peak, memory = _strategy(case_settings(name, args), args.shards)
    out.put((name, seconds, devices, peak, time.perf_counter() - started, memory))


def case_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The run settings of strategy case `name` ('STRATEGY' or 'STRATEGY:KEY=VALUE ...')."""
    strategy, _, settings = name.partition(":")
    return {
        **run_config(args),
        **parse_pairs([settings], f"case {name!r}"),
        "strategy": strategy,
        "output-dir": args.output_dir,
        "run-name": "fleet-" + "".join(c if c.isalnum() else "-" for c in name),
    }


def case_carries_uploads(name: str, args: argparse.Namespace) -> bool:
    """Whether strategy case `name`'s reports carry the next round's upload (`profile-ahead`
    where its devices upload: false for fp32 and FedAvg whatever the setting)."""
    from chord_fl.federation.runconfig import RunConfig

    return RunConfig.from_mapping(case_settings(name, args)).carries_uploads


def row_carries_uploads(row: dict[str, Any]) -> bool:
    """Whether a row's case ran with reports carrying the next round's upload (profile-ahead).
    Rows from before the field was recorded ran with it off unless their case named it."""
    return row.get("profile_ahead", row["case"].endswith("profile-ahead=true"))


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings every strategy case and the breakdown share (so both load one backbone:
    its checkpoint depends on the rounds)."""
    return {
        **parse_pairs(args.run_config, "--run-config"),
        "dataset": args.dataset,
        "rounds": args.rounds,
    }


def run_case(name: str, args: argparse.Namespace) -> tuple | None:
    """`_case` in a fresh spawned process; None when that process dies without a result."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_case, args=(name, args, results))
    process.start()
    while True:
        try:
            row = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                row = None
                break
    process.join()
    return row


def growth_per_round(memory: list[float]) -> float:
    """MiB a round by which resident memory grows after round 1, from the means of rounds 2-3 and
    of the last two rounds: pairs, so that memory alternating between two levels from one round
    to the next (as the allocator's does) cancels out. Fewer than 4 rounds: last minus first."""
    if len(memory) < 4:
        return (memory[-1] - memory[0]) / (len(memory) - 1) if len(memory) > 1 else 0.0
    early, late = (memory[1] + memory[2]) / 2, (memory[-2] + memory[-1]) / 2
    return (late - early) / (len(memory) - 3)


def breakdown(settings: dict[str, Any], devices: int) -> dict[str, float]:
    """Milliseconds per device of each CHORD step, over the first `devices` devices, round 1."""
    import numpy as np

    from chord_fl.federation.phone import Phone
    from chord_fl.federation.runconfig import RunConfig
    from chord_fl.federation.world import load_cloud, load_world
    from chord_fl.methods import method_codes
    from chord_fl.quant.codec import decode_strategy, encode_strategy

    config = RunConfig.from_mapping(settings)
    world = load_world(config)
    cloud, phone, prepared = (
        load_cloud(world, "chord", config),
        Phone(world, config),
        world.prepared,
    )
    devices = min(devices, world.devices)
    steps = dict.fromkeys(("profile", "cloud codes", "encode", "decode", "quantize", "score"), 0.0)

    def timed(step: str, work: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = work(*args, **kwargs)
        steps[step] += (time.perf_counter() - started) * 1000 / devices
        return result

    profiles = np.stack([timed("profile", phone.profile, p, 1) for p in range(devices)])
    budgets = world.budgets[:devices]
    codes = timed("cloud codes", method_codes, "chord", cloud, profiles, budgets)
    count = prepared.channels.channels
    for partition, own in enumerate(codes):
        payload = timed("encode", encode_strategy, own, None)
        decoded = timed("decode", decode_strategy, payload, count, None)
        quantized = timed("quantize", prepared.quantize, decoded, fresh_model=False)
        timed("score", phone.score, quantized.model, partition, 1)
    return steps


def scaling(results: Path, sizes: list[int], figure: Path | None) -> None:
    """Seconds per 1,000 device-rounds against the number of SuperNodes, from the latest row of
    each case and size in `results`, with a polynomial through the floor's points (a line for two
    sizes, a parabola for three or more) extended to `sizes`: Flower's cost per message grows with
    the number of nodes, so a round's cost grows faster than the fleet."""
    import numpy as np

    chord = ("chord", "chord:profile-ahead=true", "chord:profile-ahead=false")
    latest = {
        (_protocol(row), row["devices"], row.get("shards", 1)): row
        for row in read_rows(results)
        if row["case"] in (FLOOR, *chord)
    }
    measured = [
        {"case": _label(case, shards), "supernodes": size, "s_per_1000": row["ms_per_device_round"]}
        for (case, size, shards), row in sorted(latest.items())
    ]
    floor = [(row["supernodes"], row["s_per_1000"]) for row in measured if row["case"] == FLOOR]
    if len(floor) < 2:
        raise SystemExit(f"{results} needs floor rows at two fleet sizes or more")
    fit = np.poly1d(np.polyfit(*zip(*floor, strict=True), min(2, len(floor) - 1)))
    rows = measured + [{"case": "floor fit", "supernodes": n, "s_per_1000": ""} for n in sizes]
    for row in rows:
        row["floor_fit"] = fit(row["supernodes"])
        row["round_s_fit"] = row["floor_fit"] * row["supernodes"] / 1000
    print(f"floor fit, s per 1,000 device-rounds at x SuperNodes:\n{fit}\n")
    print("| case | SuperNodes | s per 1,000 device-rounds | floor fit | one round s (fit) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        value = f"{row['s_per_1000']:.1f}" if row["s_per_1000"] != "" else ""
        print(
            f"| {row['case']} | {row['supernodes']:,} | {value} | {row['floor_fit']:.1f} "
            f"| {row['round_s_fit']:.0f} |"
        )
    if figure is None:
        return
    import matplotlib.pyplot as plt

    from simulations.style import METHOD_COLOURS, save_figure

    axes = plt.figure(figsize=(6, 4)).add_subplot()
    span = np.linspace(0, max(row["supernodes"] for row in rows), 50)
    axes.plot(span, fit(span), "--", color=METHOD_COLOURS[FLOOR], label="floor fit")
    for label in dict.fromkeys(row["case"] for row in measured):
        points = [(r["supernodes"], r["s_per_1000"]) for r in measured if r["case"] == label]
        case = label.split(",")[0]
        # filled: the floor or profile-ahead; hollow: two round trips a round; squares: shards
        style = {"marker": "s" if "shards" in label else "o", "linestyle": "none"}
        if "two round trips" in label:
            style["markerfacecolor"] = "none"
        axes.plot(*zip(*points, strict=True), color=METHOD_COLOURS[case], label=label, **style)
    axes.set(
        xlabel="devices (SuperNodes of one simulation, unless in shards)",
        ylabel="s per 1,000 device-rounds",
        ylim=(0, None),
    )
    axes.set_title("Flower's cost per message grows with the fleet")
    axes.legend()
    save_figure(axes.figure, figure, rows)


def _protocol(row: dict[str, Any]) -> str:
    """A floor or chord row's label in the scaling table."""
    if row["case"] == FLOOR:
        return FLOOR
    return "chord, profile-ahead" if row_carries_uploads(row) else "chord, two round trips"


def _label(case: str, shards: int) -> str:
    # The floor is always one simulation, of a shard's size when sharded.
    return case if shards == 1 or case == FLOOR else f"{case}, {shards} shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--devices", type=int, default=943, help="floor nodes (= the data's users)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--strategies",
        nargs="*",
        default=["chord", "fp32", "fedavg"],
        help="none: the floor only; 'STRATEGY:KEY=VALUE KEY=VALUE' runs it with those run "
        "settings (as -c takes them), e.g. chord:profile-ahead=false",
    )
    parser.add_argument("--output-dir", default=os.path.join(tempfile.gettempdir(), "chord-fleet"))
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="serve the fleet in this many simulations (chord-fl simulate --shards); the floor "
        "runs one trivial simulation of a shard's size",
    )
    parser.add_argument("--breakdown-devices", type=int, default=300, help="0: no breakdown")
    parser.add_argument("--breakdown-only", action="store_true", help="skip the fleet runs")
    parser.add_argument("--results", default="benchmarks/results/fleet.jsonl")
    parser.add_argument(
        "--scaling",
        nargs="*",
        type=int,
        metavar="SUPERNODES",
        help="print (and with --plot draw) the cost per message against the fleet size from "
        "--results, extended to these sizes, and exit",
    )
    parser.add_argument("--plot", type=Path, help="PNG of --scaling")
    parser.add_argument(
        "--no-floor", action="store_true", help="strategies only (the floor is in --results)"
    )
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run config of every strategy case, e.g. round-timeout=3600 for a big fleet",
    )
    args = parser.parse_args()
    if args.scaling is not None:
        scaling(Path(args.results), args.scaling, args.plot)
        return
    if args.breakdown_devices:
        steps = breakdown(run_config(args), args.breakdown_devices)
        print(f"CHORD per device, ms ({args.breakdown_devices} devices, one thread of work):")
        print("| " + " | ".join(steps) + " | total |")
        print("|" + "---:|" * (len(steps) + 1))
        print(
            "| "
            + " | ".join(f"{ms:.2f}" for ms in steps.values())
            + f" | {sum(steps.values()):.2f} |"
        )
    if args.breakdown_only:
        return
    print(f"\n{args.dataset}, {args.rounds} rounds; {machine_line()}\n")
    print(
        "| case | devices | rounds s | ms per device-round | x floor | case s "
        "| ServerApp peak RSS MiB | RSS after round 1 MiB | RSS growth per round MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    floor_ms = None
    for name in ([] if args.no_floor else [FLOOR]) + args.strategies:
        row = run_case(name, args)
        if row is None:
            print(
                f"| {name} | the case's process died without a result | | | | | | | |", flush=True
            )
            continue
        _, seconds, devices, rss, case_seconds, memory = row
        growth = growth_per_round(memory)
        ms = seconds * 1000 / (devices * args.rounds)
        floor_ms = floor_ms or (ms if name == FLOOR else None)
        ratio = f"{ms / floor_ms:.2f}" if floor_ms else "-"
        print(
            f"| {name} | {devices} | {seconds:.1f} | {ms:.1f} | {ratio} | {case_seconds:.0f} "
            f"| {rss:.0f} | {memory[0]:.0f} | {growth:+.2f} |",
            flush=True,
        )
        append_row(
            Path(args.results),
            {
                "case": name,
                **({} if name == FLOOR else {"profile_ahead": case_carries_uploads(name, args)}),
                "dataset": args.dataset,
                "devices": devices,
                "rounds": args.rounds,
                "shards": args.shards,
                "rounds_s": seconds,
                "ms_per_device_round": ms,
                "case_s": case_seconds,
                "server_peak_rss_mib": rss,
                "server_rss_mib_by_round": memory,
                "machine": machine_line(),
            },
        )


if __name__ == "__main__":
    main()
