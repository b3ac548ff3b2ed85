"""A run killed mid-way and resumed ends with the clients.csv and ledger.csv of an uninterrupted
run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import read_csv
from chord_fl.federation.world import load_cloud, load_world
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.methods import method_codes
from chord_fl.pretrain import pretrain
from chord_fl.quant.codec import encode_strategy
from chord_fl.train import TrainConfig
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


def _run_killed_after_round_one(base: dict) -> RunConfig:
    """Start `base` as its own process, kill it once round 1 is written, and return its config
    (the run directory then holds a partial run)."""
    stopped = RunConfig.from_mapping(base)
    pairs = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in base.items())
    command = [sys.executable, "-m", "simulations.cli", "simulate", "--run-config", pairs]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    clients = stopped.run_dir / "clients.csv"
    try:
        deadline = time.monotonic() + 240
        while not (clients.exists() and len(read_csv(clients)) > 0):
            assert process.poll() is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.2)
    finally:
        _kill_tree(process)
    assert {row["round"] for row in read_csv(clients)} < {str(r) for r in range(1, ROUNDS + 1)}
    return stopped


def _resume(run_dir: Path) -> None:
    from simulations.simulate import resume_overrides

    overrides, devices = resume_overrides(run_dir)
    simulate(overrides, devices)


def test_a_killed_fedavg_run_resumes_to_the_same_clients_csv(tmp_path, small_fleet):
    """FedAvg, the strategy with state across rounds: the global weights."""
    base = small_fleet(tmp_path, 12, 7, ROUNDS, strategy="fedavg", init="random")
    base["local-epochs"] = 2
    simulate({**base, "run-name": "whole"})
    whole = read_csv(RunConfig.from_mapping(base).replace(run_name="whole").run_dir / "clients.csv")
    stopped = _run_killed_after_round_one({**base, "run-name": "stopped"})
    _resume(stopped.run_dir)
    assert _stable(read_csv(stopped.run_dir / "clients.csv")) == _stable(whole)
    timings = read_csv(stopped.run_dir / "rounds.csv")
    assert [int(row["round"]) for row in timings] == list(range(1, ROUNDS + 1))


def _by_row(ledger: list[dict]) -> dict[tuple, int]:
    """Payload bytes by (round, partition, direction, kind): what a ledger row means, without
    node ids (new in every run) and message sizes (which hold the node ids)."""
    keyed = Counter((r["round"], r["partition"], r["direction"], r["kind"]) for r in ledger)
    assert max(keyed.values()) == 1, "a ledger row is duplicated"
    return {
        (r["round"], r["partition"], r["direction"], r["kind"]): int(r["payload_bytes"])
        for r in ledger
    }


def test_a_killed_chord_run_resumes_with_its_ledger_and_full_codes(tmp_path, small_fleet):
    """CHORD: the devices' delta base is lost with the server, and so are the uploads the killed
    run's last reports carried (profile-ahead), the one-time download of frozen weights must not
    be charged twice, and a half-written round must leave no rows."""
    base = small_fleet(tmp_path, 12, 7, ROUNDS, strategy="chord")
    config = RunConfig.from_mapping(base)
    train = TrainConfig(epochs=2, num_negatives=10)
    pretrain(base["dataset"], "sasrec", None, ROUNDS, train, None, config.setup.checkpoint_path)
    simulate({**base, "run-name": "whole"})
    whole_dir = config.replace(run_name="whole").run_dir
    stopped = _run_killed_after_round_one({**base, "run-name": "stopped"})
    done = max(int(row["round"]) for row in read_csv(stopped.run_dir / "clients.csv"))
    _resume(stopped.run_dir)

    clients = read_csv(stopped.run_dir / "clients.csv")
    assert _stable(clients) == _stable(read_csv(whole_dir / "clients.csv"))
    ledger = read_csv(stopped.run_dir / "ledger.csv")
    whole_ledger = read_csv(whole_dir / "ledger.csv")
    # The resumed server asks every node for its partition again: real traffic, round 0.
    queries = Counter(r["partition"] for r in ledger if r["kind"] == "query")
    assert set(queries.values()) == {4}
    resumed, whole = (
        _by_row([r for r in rows if r["kind"] != "query"]) for rows in (ledger, whole_ledger)
    )
    first = done + 1
    # The resumed server's first round asks every device for the profile its report had carried.
    asked_again = {key for key in resumed if key not in whole}
    assert asked_again == {
        (str(first), str(p), direction, kind)
        for p in range(12)
        for direction, kind in (("down", "request"), ("up", "profile"))
    }
    for p in range(12):
        carried = whole[(str(done), str(p), "up", "metrics+profile")]
        assert resumed[(str(first), str(p), "up", "profile")] == carried
    assert sorted(key for key in resumed if key not in asked_again) == sorted(whole)
    frozen = [key for key in resumed if key[3] == "frozen-weights"]
    assert len(frozen) == 12  # once per device, not again after the resumption

    world = load_world(config)
    cloud = load_cloud(world, "chord", config)
    # Each device encodes its own window, alone.
    windows = world.split.windows(first)
    profiles = np.stack([encode_profiles(world.prepared.frozen, [w])[0] for w in windows])
    codes = method_codes("chord", cloud, profiles, world.budgets)
    for key, payload in resumed.items():
        if key[3] == "codes" and int(key[0]) == first:
            assert payload == len(encode_strategy(codes[int(key[1])], None)), key
        elif key not in asked_again:
            assert payload == whole[key], key


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
