"""A run killed mid-way and resumed ends with the clients.csv of an uninterrupted run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import read_csv
from simulations.simulate import simulate

ROUNDS = 3
TIMING = ("node_id", "adapt_ms")  # node ids are new in every run; times are measured


def _stable(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _kill_tree(process: subprocess.Popen) -> None:
    """The simulation and every process it started (Ray's included) share its session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_a_killed_fedavg_run_resumes_to_the_same_clients_csv(tmp_path, small_fleet):
    """FedAvg, the strategy with state across rounds: the global weights."""
    base = small_fleet(tmp_path, 12, 7, ROUNDS, strategy="fedavg", init="random")
    base["local-epochs"] = 2
    simulate({**base, "run-name": "whole"})
    whole = read_csv(RunConfig.from_mapping(base).replace(run_name="whole").run_dir / "clients.csv")

    stopped = RunConfig.from_mapping({**base, "run-name": "stopped"}).run_dir
    pairs = " ".join(
        f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
        for k, v in {**base, "run-name": "stopped"}.items()
    )
    command = [sys.executable, "-m", "simulations.cli", "simulate", "--run-config", pairs]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        clients = stopped / "clients.csv"
        while not (clients.exists() and len(read_csv(clients)) > 0):
            assert process.poll() is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.2)
    finally:
        _kill_tree(process)
    assert {row["round"] for row in read_csv(clients)} < {str(r) for r in range(1, ROUNDS + 1)}

    from simulations.simulate import resume_overrides

    overrides, devices = resume_overrides(stopped)
    simulate(overrides, devices)
    assert _stable(read_csv(stopped / "clients.csv")) == _stable(whole)


def test_resuming_checks_the_settings_but_not_where_the_run_lives(tmp_path):
    from chord_fl.errors import ConfigError
    from chord_fl.federation.runlog import RunLog
    from simulations.server import resume_point

    original = RunConfig(output_dir="elsewhere")  # run-name empty: the default directory name
    run_log = RunLog(tmp_path / "chord-run")
    run_log.write_config({**original.to_mapping(), "devices": 3})
    run_log.append_clients(
        [{"round": r, "partition": p, "status": "ok"} for r in (1, 2) for p in range(3)]
    )
    resumed = original.replace(output_dir=str(tmp_path), run_name="chord-run", resume=True)
    assert resume_point(run_log, resumed) == 2
    with pytest.raises(ConfigError, match="seed"):
        resume_point(run_log, resumed.replace(seed=1))
