"""The cloud's side of a run: load the shared state and cloud models, wait for the SuperNodes, map
node ids to partitions, run the strategy, write the summary."""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from chord_fl.errors import ConfigError
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import RunLog, read_csv
from chord_fl.federation.world import World, load_cloud, load_world
from chord_fl.machine import machine_info
from chord_fl.quant.master import master_arrays
from strategies import protocol
from strategies.base import FleetRun
from strategies.ledger import ledger_row
from strategies.registry import build_strategy, strategy_spec

POLL_SECONDS = 0.5
NO_NODES_SECONDS = 300.0  # a federation with no node at all: give up


def serve(grid: Grid, config: RunConfig) -> dict[str, Any]:
    """Run `config` on the nodes behind `grid`; returns the summary written to the run dir."""
    started = time.perf_counter()
    spec = strategy_spec(config.strategy)
    # Everything that can fail on bad settings runs before the run directory is touched.
    world = load_world(config, train_missing=True, progress=True)
    cloud = load_cloud(world, spec.method, config, progress=True) if spec.frozen_weights else None
    if config.resume and not (config.run_dir / "config.json").exists():
        raise ConfigError(f"{config.run_dir} holds no run to resume: config.json is missing")
    run_log = RunLog(config.run_dir, fresh=not config.resume)
    done = resume_point(run_log, config) if config.resume else 0
    download = master_arrays(world.prepared.frozen, config.master)  # what devices hold once
    description = {
        "devices": world.devices,
        "channels": world.prepared.channels.channels,
        "fp32_bytes": world.prepared.channels.fp32_bytes,
        "master_bytes": sum(array.nbytes for array in download.values()),
        "machine": machine_info(),
    }
    run_log.write_config({**config.replace(resume=False).to_mapping(), **description})
    run_log.meta = {"strategy": config.strategy, "dataset": config.dataset}
    run_log.meta["backbone"] = config.backbone
    run_log.meta["master"] = config.master
    nodes = wait_for_nodes(grid, len(config.users(world.devices)), config.node_wait)
    partitions = map_partitions(grid, nodes, world, config, run_log)
    run_log.meta["devices"] = len(partitions)
    frozen = None
    if spec.frozen_weights and config.init == "pretrained":
        frozen = frozen_download_bytes(download, next(iter(partitions)))
    holds = frozenset(
        int(row["partition"])
        for row in read_csv(run_log.ledger_path)
        if row["kind"] == "frozen-weights"
    )
    run = FleetRun(config, world, partitions, run_log, frozen, done + 1, holds)
    strategy = build_strategy(run, cloud)
    rounds_started = time.perf_counter()
    if done < config.rounds:
        strategy.start(
            grid,
            strategy.initial_arrays(),
            num_rounds=config.rounds - done,
            timeout=config.round_timeout,
        )
    now = time.perf_counter()
    summary = run_log.write_summary(
        {"wall_s": round(now - started, 2), "rounds_wall_s": round(now - rounds_started, 2)}
    )
    log(
        INFO,
        "chord-fl: %s finished in %.1f s; results in %s",
        config.strategy,
        now - started,
        run_log.dir,
    )
    return summary


def resume_point(run_log: RunLog, config: RunConfig) -> int:
    """The last complete round of the run being resumed; later rows are dropped."""
    saved = run_log.read_config()
    known = config.replace(resume=False).to_mapping()
    where = {"output-dir", "run-name"}  # they locate the run; the directory is the same one
    changed = sorted(k for k in known if k in saved and k not in where and saved[k] != known[k])
    if changed:
        raise ConfigError(
            f"cannot resume {run_log.dir}: it was run with other settings for {changed}"
        )
    done = run_log.completed_round()
    run_log.truncate_after(done)
    log(INFO, "chord-fl: resuming %s after round %d of %d", run_log.dir, done, config.rounds)
    return done


def wait_for_nodes(grid: Grid, expected: int, patience: float) -> list[int]:
    """Node ids once `expected` have registered, or once none has joined for `patience` s.

    Flower starts the ServerApp before simulated nodes exist, and a federation may hold fewer
    nodes than the data set has users: then the run goes on with those present."""
    count, last_change = -1, time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if len(nodes) != count:
            count, last_change = len(nodes), time.monotonic()
        elif not nodes and time.monotonic() - last_change >= max(patience, NO_NODES_SECONDS):
            raise ConfigError(f"no SuperNode registered within {max(patience, NO_NODES_SECONDS)} s")
        elif nodes and time.monotonic() - last_change >= patience:
            log(
                WARNING,
                "chord-fl: %d SuperNodes for %d users; running with those present (simulation: "
                '--federation-config "num-supernodes=%d"; deployment: start more SuperNodes)',
                len(nodes),
                expected,
                expected,
            )
            return nodes
        time.sleep(POLL_SECONDS)


def map_partitions(
    grid: Grid, nodes: list[int], world: World, config: RunConfig, run_log: RunLog
) -> dict[int, int]:
    """Node id -> partition, from a QUERY round (node ids are random in every run); its ledger
    rows are setup traffic, round 0, like the one-time download."""
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
    ]
    sizes = {message.metadata.dst_node_id: protocol.message_bytes(message) for message in messages}
    users = config.users(world.devices)
    partitions: dict[int, int] = {}
    rows = []
    for reply in grid.send_and_receive(messages, timeout=config.round_timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            partition, reason = None, f"error reply: {reply.error.reason}"
        else:
            partition, reason = protocol.read_partition(reply.content)
        if partition is not None and not 0 <= partition < world.devices:
            partition, reason = None, f"partition {partition} has no user ({world.devices} users)"
        elif partition is not None and partition not in users:
            partition, reason = None, f"user {partition} is not in shard {config.shard}"
        elif partition is not None and partition in partitions.values():
            partition, reason = None, f"partition {partition} is claimed by another node"
        if partition is None:
            log(WARNING, "chord-fl: node %d left out: %s", node, reason)
            continue
        partitions[node] = partition
        rows.append(ledger_row(world, 0, node, partition, "down", "query", 0, sizes[node]))
        size = protocol.message_bytes(reply)
        rows.append(ledger_row(world, 0, node, partition, "up", "query", 0, size))
    silent = len(nodes) - len(partitions)
    if silent:
        log(
            WARNING,
            "chord-fl: %d of %d nodes take no part (see above, or no reply)",
            silent,
            len(nodes),
        )
    if not partitions:
        raise ConfigError("no SuperNode answered the partition query")
    run_log.append_ledger(rows)
    return partitions


def frozen_download_bytes(download: dict[str, np.ndarray], node: int) -> tuple[int, int]:
    """Payload and message bytes of sending the frozen backbone's `download` arrays (fp32, or
    its 8-bit master) to a device once."""
    arrays = ArrayRecord({name: Array(a) for name, a in download.items()})
    content = RecordDict({protocol.ARRAYS: arrays})
    message = Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
    return protocol.weights_nbytes(arrays), protocol.message_bytes(message)
