"""Run the Flower apps in this process (Flower's simulation engine on Ray), and fail loudly: unlike
`flwr run`, a failed run raises here."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp

from chord_fl.errors import ChordError, ConfigError
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.shards import merge_shards
from chord_fl.federation.world import load_cloud, load_world
from strategies.registry import strategy_spec

QUIET_ENV = {
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def simulate(
    overrides: Mapping[str, Any],
    num_supernodes: int | None = None,
    client_app: ClientApp | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Simulate one run and return its summary.

    Settings, data, checkpoints and budgets are all checked (and missing cloud models trained)
    before Ray starts. `client_app` replaces the ClientApp (tests use it to play hostile devices).
    `ray_address` ("HOST:PORT" of a running Ray head): run the devices on that cluster instead of
    a Ray instance started here; every node must be able to import this project and read the
    data and checkpoint paths of the run config.
    """
    from flwr.simulation import run_simulation

    from simulations.client_app import make_client_app
    from simulations.server_app import make_server_app

    config = RunConfig.from_mapping(overrides)
    spec = strategy_spec(config.strategy)
    world = load_world(config, progress=True)
    if spec.frozen_weights:
        load_cloud(world, spec.method, config, progress=True)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    summary_path = config.run_dir / "summary.json"
    started = time.time()
    run_simulation(
        server_app=make_server_app(config.to_mapping()),
        client_app=client_app or make_client_app(config.to_mapping()),
        num_supernodes=num_supernodes or len(config.users(world.devices)),
        backend_config=backend_config(ray_address),
    )
    # The server writes wall_s only once the last round is done.
    if not summary_path.exists() or summary_path.stat().st_mtime < started:
        raise ChordError(
            f"the {config.strategy} run failed: see the log above and {config.run_dir}"
        )
    summary = json.loads(summary_path.read_text())
    if "wall_s" not in summary:
        raise ChordError(f"the {config.strategy} run stopped early: see {config.run_dir}")
    return summary


def simulate_shards(
    overrides: Mapping[str, Any], shards: int = 1, ray_address: str | None = None
) -> dict[str, Any]:
    """Simulate one run as `shards` simulations, one after another, each in a fresh process with
    its share of the users, and merge them into the run's directory; returns its summary.

    Flower's engine costs more per message the more SuperNodes one simulation holds, so a big
    fleet runs faster in shards of a few thousand. `shards=1` is one simulation in a fresh
    process (Ray and the cached worlds start clean)."""
    config = RunConfig.from_mapping(overrides)
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    if config.shard or config.resume:
        raise ConfigError("a sharded run sets each shard and starts fresh: drop shard and resume")
    shard_dirs = []
    for index in range(shards):
        part = {**overrides, "shard": f"{index}/{shards}"} if shards > 1 else dict(overrides)
        if shards > 1:
            print(f"== {config.strategy}: shard {index + 1} of {shards}", flush=True)
        child = multiprocessing.get_context("spawn").Process(
            target=_simulate_in_child, args=(part, ray_address)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise ChordError(f"the {config.strategy} run failed: see the log above")
        shard_dirs.append(RunConfig.from_mapping(part).run_dir)
    if shards == 1:
        return json.loads((config.run_dir / "summary.json").read_text())
    return merge_shards(shard_dirs, config.run_dir)


def _simulate_in_child(overrides: dict[str, Any], ray_address: str | None) -> None:
    try:
        simulate(overrides, ray_address=ray_address)
    except ChordError as exc:
        print(f"chord-fl: {overrides.get('strategy', 'chord')}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def backend_config(ray_address: str | None = None) -> dict[str, Any]:
    """Ray: one CPU per simulated device, as many devices at once as the machine has cores, or
    as the cluster at `ray_address` has CPUs."""
    cluster = {"address": ray_address} if ray_address else {"num_cpus": os.cpu_count() or 1}
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {**cluster, "include_dashboard": False},
    }


def resume_overrides(run_dir: str | os.PathLike) -> tuple[dict[str, Any], int | None]:
    """The run config of the run in `run_dir`, set to resume it, and its number of devices."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise ConfigError(f"{run_dir} holds no run to resume: {path} is missing")
    saved = json.loads(path.read_text())
    known = RunConfig().to_mapping()
    values = {key: value for key, value in saved.items() if key in known}
    values.update({"resume": True, "output-dir": str(run_dir.parent), "run-name": run_dir.name})
    summary = run_dir / "summary.json"
    devices = json.loads(summary.read_text()).get("devices") if summary.exists() else None
    return values, devices
