"""Run the Flower apps in this process (Flower's simulation engine on Ray), and fail loudly: unlike
`flwr run`, a failed run raises here."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from chord_fl.errors import ChordError
from chord_fl.experiment import load_split
from chord_fl.runconfig import RunConfig
from strategies import strategy_spec

QUIET_ENV = {
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def simulate(overrides: Mapping[str, Any], num_supernodes: int | None = None) -> dict[str, Any]:
    """Simulate one run; returns its summary. Every setting is checked before Ray starts."""
    from flwr.simulation import run_simulation

    from simulations.client_app import make_client_app
    from simulations.server_app import make_server_app

    config = RunConfig.from_mapping(overrides)
    strategy_spec(config.strategy)
    devices = num_supernodes or len(load_split(config.setup))
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    summary_path = config.run_dir / "summary.json"
    summary_path.unlink(missing_ok=True)
    run_simulation(
        server_app=make_server_app(config.to_mapping()),
        client_app=make_client_app(config.to_mapping()),
        num_supernodes=devices,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
        },
    )
    if not summary_path.exists():
        raise ChordError(f"the {config.strategy} run failed: no {summary_path} (see the log above)")
    return json.loads(summary_path.read_text())
