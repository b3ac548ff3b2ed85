"""The simulation on an existing Ray cluster: a head and one worker node started with `ray start` on
127.0.0.1, two rounds of 16 devices run on it with `chord-fl simulate --ray-address`, and every
process of the cluster stopped by pid when the test ends, pass or fail.

The cluster's processes are found by its temporary directory (every Ray process of a node names
its session directory on its command line); a short one under /tmp, since Ray's Unix sockets live
there and their paths are limited to about 100 characters.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import read_csv

BIN = Path(sys.executable).parent
USERS, ROUNDS = 16, 2
MEMORY = str(100 * 1024 * 1024)  # object store per node: the runs move a few kilobytes
START_S, RUN_S = 120, 600


def _cluster_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _stop(marker: str) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in _cluster_pids(marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while _cluster_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_dir():
    path = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        yield path
    finally:
        _stop(path)
        left = _cluster_pids(path)
        shutil.rmtree(path, ignore_errors=True)
        assert not left, f"Ray processes still running: {left}"


def _ray(env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=START_S
    )
    assert result.returncode == 0, f"ray {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def test_two_rounds_of_16_devices_on_a_ray_head_and_a_worker_node(tmp_path, ray_dir, small_fleet):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(Path.cwd())}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    node = ["--num-cpus", "1", "--object-store-memory", MEMORY, "--temp-dir", ray_dir]
    _ray(env, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--include-dashboard", "false", *node)  # fmt: skip
    _ray(env, "start", "--address", address, "--node-ip-address", "127.0.0.1", *node)
    nodes = subprocess.run(
        [sys.executable, "-c",
         f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
         "print(sum(n['Alive'] for n in ray.nodes()))"],
        env=env, capture_output=True, text=True, timeout=START_S,
    )  # fmt: skip
    assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stdout + nodes.stderr

    overrides = small_fleet(tmp_path, USERS, 4, ROUNDS, init="random", strategy="global")
    settings = [f"{key}={value!r}" for key, value in overrides.items()]
    run = subprocess.run(
        [str(BIN / "chord-fl"), "simulate", "--ray-address", address,
         *(arg for setting in settings for arg in ("-c", setting))],
        env=env, capture_output=True, text=True, timeout=RUN_S,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    clients = read_csv(RunConfig.from_mapping(overrides).run_dir / "clients.csv")
    assert len(clients) == USERS * ROUNDS
    assert {row["status"] for row in clients} == {"ok"}
    assert _cluster_pids(ray_dir), "the cluster is gone before the test stops it"
