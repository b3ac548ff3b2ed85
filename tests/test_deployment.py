"""A real deployment on 127.0.0.1: `flower-superlink` (deployment engine, not --simulation) and
three `flower-supernode` processes, one per user partition, run CHORD rounds submitted with
`flwr run` on a cloud-trained backbone. Checks the run's status, its outputs, codes and model bytes
against budgets, Flower's own traffic counters against our ledger, and a SuperNode killed mid-run.

Everything lives under tmp_path: FLWR_HOME (with the connection in config.toml), the process logs,
the data set, the run and checkpoint directories. Ports are picked free. Every process started
here, and every process it started, is stopped by pid when the test ends, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import read_csv
from chord_fl.pretrain import pretrain
from chord_fl.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flwr, flower-superlink, flower-supernode, flower-superexec
CONNECTION = "chord-deploy"  # the SuperLink connection written to FLWR_HOME/config.toml
DEVICES = 3
ROUNDS = 2
RUN_NAME = "deploy"
STARTUP_S = 90.0  # SuperLink answering /health, then all SuperNodes online
RUN_S = 420.0  # the run itself: about 100 s on a loaded 2-core machine
CLI_S = 60.0  # one `flwr` command
# Flower's per-message protocol overhead (message metadata, the object tree, request and response
# envelopes), beyond the message objects our ledger counts, measured on this deployment: 715 B for
# a message to a device and 496 B for a reply (init=random; the same envelopes carry codes from a
# trained backbone). The bound allows 1 KiB, 1.4x the larger.
SLACK_PER_MESSAGE = 1024
KILLED = 2  # the partition whose SuperNode the fault test kills after round 1
# Code messages damaged on the way down: at this rate seed 0 damages those of partitions 0 and 1
# in round 1 (the fault draws, chord_fl/federation/faults.py).
CORRUPT = 0.2
DAMAGED = {(1, 0), (1, 1)}


# -- processes ------------------------------------------------------------------------------------


def _bin(name: str) -> str:
    """The interpreter's own copy of a Flower command, else the one on PATH."""
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} not found next to {sys.executable} or on PATH"
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pids: list[int]) -> list[int]:
    tree, found, todo = _children(), [], list(pids)
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _is_flower(pid: int) -> bool:
    """Whether `pid` still is a Flower process (guards against a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"flower" in cmdline or b"flwr" in cmdline


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each started process's group and every descendant (the SuperLink starts its
    SuperExec in a session of its own; a SuperExec starts the ServerApp and ClientApp processes),
    give them a few seconds, then SIGKILL what is left."""
    descendants = _descendants([proc.pid for proc in procs])
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for proc in procs:
            _signal(proc.pid, sig, group=True)  # start_new_session: pgid == pid
        for pid in descendants:
            if _is_flower(pid):
                _signal(pid, sig, group=False)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if all(proc.poll() is not None for proc in procs) and not any(
                _is_flower(pid) for pid in descendants
            ):
                return
            time.sleep(0.2)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"({err})"
    return "\n".join(text[-lines:])


class Cluster:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.run_id: str | None = None

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                [_bin(args[0]), *args[1:]],
                cwd=self.root,  # a neutral directory: the ServerApp runs in this process tree
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def kill(self, index: int) -> subprocess.Popen:
        """Stop the `index`-th started process (and what it started); it is no longer expected
        alive."""
        proc = self.procs.pop(index)
        self.logs.pop(index)
        _stop([proc])
        return proc

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise AssertionError(f"{log.stem} exited with {proc.returncode}")

    def flwr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [_bin("flwr"), *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_S,
        )
        shown = f"flwr {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        assert not check or result.returncode == 0, shown
        return result

    def flwr_json(self, *args: str) -> dict:
        out = self.flwr(*args, "--format", "json").stdout
        return json.loads(out[out.index("{") : out.rindex("}") + 1])

    def print_logs(self) -> None:
        for log in self.logs:
            print(f"----- {log.name} (last lines) -----\n{_tail(log)}")
        if self.run_id is not None:  # the ServerApp's and ClientApps' output, kept by Flower
            try:
                shown = self.flwr("log", self.run_id, CONNECTION, "--show", check=False)
                lines = (shown.stdout + shown.stderr).splitlines()[-60:]
            except subprocess.TimeoutExpired as err:
                lines = [str(err)]
            print(f"----- flwr log {self.run_id} (last lines) -----", *lines, sep="\n")


@pytest.fixture
def cluster(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = dict(os.environ)
    no_proxy = ",".join(filter(None, ["127.0.0.1", "localhost", env.get("NO_PROXY", "")]))
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "OMP_NUM_THREADS": "1",  # each message starts a ClientApp process: one thread each
            "PYTHONUNBUFFERED": "1",
        }
    )
    (tmp_path / "logs").mkdir()
    cluster = Cluster(tmp_path / "logs", env)
    try:
        yield cluster
    finally:
        began = time.monotonic()
        _stop(cluster.procs)
        print(f"stopped {len(cluster.procs)} processes in {time.monotonic() - began:.1f} s")


def _wait(what: str, done, cluster: Cluster, timeout: float, every: float):
    deadline = time.monotonic() + timeout
    while True:
        cluster.check_alive()
        value = done()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _healthy(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


# -- the tests -----------------------------------------------------------------------------------


def _start_superlink(cluster: Cluster, port: int, name: str, *extra: str) -> None:
    cluster.start(
        name,
        ["flower-superlink", "--insecure", "--isolation", "subprocess", "--host", "127.0.0.1",
         "--port", str(port), *extra],  # Fleet, Control, Runtime APIs
    )  # fmt: skip
    _wait("the SuperLink", lambda: _healthy(port), cluster, STARTUP_S, 0.5)


def _all_online(cluster: Cluster) -> None:
    def online() -> bool:
        nodes = cluster.flwr_json("supernode", "ls", CONNECTION)["nodes"]
        return sum(node["status"] == "online" for node in nodes) == DEVICES

    # All of them before the run: the ServerApp starts with those present after node-wait s.
    _wait(f"{DEVICES} SuperNodes online", online, cluster, STARTUP_S, 1.0)


def _submit(cluster: Cluster, run_config: Path) -> str:
    started = cluster.flwr_json("run", ".", CONNECTION, "--run-config", str(run_config))
    assert started["success"], started
    cluster.run_id = started["run-id"]
    return cluster.run_id


def _deploy(
    cluster: Cluster,
    tmp_path: Path,
    small_fleet,
    rounds: int = ROUNDS,
    superlink: tuple[str, ...] = (),
    **changes,
) -> tuple[str, Path, int]:
    """Pretrain a small backbone, start a SuperLink (with `superlink` options) and DEVICES
    SuperNodes, submit a CHORD run; returns the run id, its run directory and the SuperLink's
    port."""
    link_port, *node_ports = _free_ports(1 + DEVICES)
    (Path(cluster.env["FLWR_HOME"]) / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    # Absolute paths: the ServerApp runs under the SuperLink, in its working directory.
    overrides = small_fleet(
        tmp_path, 12, 0, rounds, **{"node-wait": 3, "run-name": RUN_NAME, **changes}
    )
    config = RunConfig.from_mapping(overrides)
    train = TrainConfig(epochs=2, num_negatives=10)
    pretrain(overrides["dataset"], "sasrec", None, config.rounds, train, None,
             config.setup.checkpoint_path, None, False)  # fmt: skip
    run_config = tmp_path / "run-config.toml"  # a file: no quoting trouble with odd paths
    run_config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in overrides.items()))

    began = time.monotonic()
    _start_superlink(cluster, link_port, "superlink", *superlink)
    for partition, port in enumerate(node_ports):
        cluster.start(
            f"supernode-{partition}",
            ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
             "--isolation", "subprocess", "--host", "127.0.0.1",
             "--port", str(port),  # its own Runtime API for ClientApps
             "--node-config", f"partition-id={partition}"],
        )  # fmt: skip

    _all_online(cluster)
    print(f"SuperLink and {DEVICES} SuperNodes up in {time.monotonic() - began:.1f} s")
    return _submit(cluster, run_config), config.run_dir, link_port


def _finished(cluster: Cluster, run_id: str) -> dict:
    def finished() -> dict | None:
        row = cluster.flwr_json("ls", CONNECTION, "--run-id", run_id)["runs"][0]
        return row if row["status"].startswith("finished") else None

    # `flwr run` exits 0 whatever becomes of the run: its status tells.
    run = _wait(f"run {run_id} to finish", finished, cluster, RUN_S, 3.0)
    print(f"run {run_id}: {run['status']} after {run['elapsed']:.1f} s")
    assert run["status"] == "finished:completed", json.dumps(run, indent=1)
    return run


def _wait_for_round_one(cluster: Cluster, clients_csv: Path) -> None:
    def done() -> bool:
        return clients_csv.exists() and any(r["round"] == "1" for r in read_csv(clients_csv))

    _wait("round 1", done, cluster, RUN_S, 0.2)


def _check_codes_within_budgets(run_dir: Path, rows: list[dict]) -> None:
    """Every answering device ran a model within its budget, under one code per channel, and
    received its codes in the ledger."""
    channels = json.loads((run_dir / "config.json").read_text())["channels"]
    codes = {(r["round"], r["partition"]) for r in read_csv(run_dir / "ledger.csv")
             if r["kind"] == "codes" and int(r["payload_bytes"]) > 0}  # fmt: skip
    for row in rows:
        assert 0 < int(row["model_bytes"]) <= int(row["budget_bytes"]), row
        assert sum(int(row[f"codes_{q}"]) for q in range(4)) == channels, row
        assert (row["round"], row["partition"]) in codes, row


def test_chord_rounds_on_a_real_superlink_and_supernodes(tmp_path, cluster, small_fleet):
    try:
        run_id, run_dir, _ = _deploy(cluster, tmp_path, small_fleet, **{"corrupt-rate": CORRUPT})
        run = _finished(cluster, run_id)
        clients = read_csv(run_dir / "clients.csv")
        assert Counter((int(r["round"]), int(r["partition"])) for r in clients) == Counter(
            {(number, p): 1 for number in range(1, ROUNDS + 1) for p in range(DEVICES)}
        )
        # Damaged code messages (seeded) get an error reply; the device's next codes are full.
        status = {(int(r["round"]), int(r["partition"])): r["status"] for r in clients}
        assert {key for key, value in status.items() if value == "error"} == DAMAGED
        assert {value for key, value in status.items() if key not in DAMAGED} == {"ok"}
        assert json.loads((run_dir / "summary.json").read_text())["devices"] == DEVICES
        _check_codes_within_budgets(run_dir, [r for r in clients if r["status"] == "ok"])

        # Flower counts, at the SuperLink's Fleet API and per run, the bytes of each message
        # object a SuperNode pulls (outbound) or pushes (inbound), which are the same deflated
        # objects our ledger's message_bytes sums, plus the protobuf envelopes of the pull and
        # push calls (metadata, object trees of 64-hex-digit ids). It leaves out heartbeats,
        # registration and the app bundle (GetFab). So per direction
        #     ledger <= Flower <= ledger + SLACK_PER_MESSAGE * messages.
        # The lower bound could break only if a large reply object were deduplicated by the
        # SuperLink's object store (an object already held is not pushed again and not counted);
        # CHORD's replies are small and distinct, and the envelope overhead outweighs any small
        # deduplicated record.
        ledger = read_csv(run_dir / "ledger.csv")
        frozen = [row for row in ledger if row["kind"] == "frozen-weights"]
        # The one-time download is charged in the ledger but never carried by Flower here: the
        # devices already hold the backbone (the cloud's checkpoint).
        assert sorted(int(row["partition"]) for row in frozen) == list(range(DEVICES))
        traffic = run["network-traffic"]
        for direction, flower_key in (("down", "outbound-bytes"), ("up", "inbound-bytes")):
            rows = [r for r in ledger if r["direction"] == direction and r not in frozen]
            ours = sum(int(row["message_bytes"]) for row in rows)
            flower = int(traffic[flower_key])
            print(
                f"{direction}: ledger {ours} B in {len(rows)} messages; Flower {flower_key} "
                f"{flower} B ({flower / ours:.2f}x, {(flower - ours) / len(rows):.0f} B/message)"
            )
            assert rows and ours > 0
            assert ours <= flower <= ours + SLACK_PER_MESSAGE * len(rows), (direction, ours, flower)
    except BaseException:
        cluster.print_logs()
        raise


def test_a_supernode_killed_mid_run_times_out_and_the_run_goes_on(tmp_path, cluster, small_fleet):
    rounds = 3
    try:
        run_id, run_dir, _ = _deploy(
            cluster, tmp_path, small_fleet, rounds, **{"round-timeout": 20}
        )
        clients_csv = run_dir / "clients.csv"
        _wait_for_round_one(cluster, clients_csv)
        victim = cluster.kill(1 + KILLED)  # after the SuperLink, in partition order
        print(f"killed supernode-{KILLED} (pid {victim.pid})")
        _finished(cluster, run_id)

        clients = read_csv(clients_csv)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert len(summary["rounds"]) == rounds
        by_round = {n: [r for r in clients if int(r["round"]) == n] for n in range(1, rounds + 1)}
        assert {r["status"] for r in by_round[1]} == {"ok"}
        for number in range(2, rounds + 1):
            alive = [r for r in by_round[number] if int(r["partition"]) != KILLED]
            assert sorted(int(r["partition"]) for r in alive) == [
                p for p in range(DEVICES) if p != KILLED
            ]
            assert {r["status"] for r in alive} == {"ok"}
            _check_codes_within_budgets(run_dir, alive)
        # The killed device answers no round after the kill's round; the last one is surely after.
        killed = [r for r in by_round[rounds] if int(r["partition"]) == KILLED]
        print("killed device, last round:", [r["status"] for r in killed])
        assert all(r["status"] in {"timeout", "error"} for r in killed), killed
        assert killed, "the killed device was not asked in the last round"
    except BaseException:
        cluster.print_logs()
        raise


def test_a_superlink_killed_mid_run_restarts_and_the_run_resumes(tmp_path, cluster, small_fleet):
    """The SuperLink keeps its state in a database file; killed after round 1 (with its ServerApp)
    and restarted on the same port, it gets the SuperNodes back, and the run submitted again with
    `resume=true` continues after its last complete round: every (round, device) once, the
    one-time download charged once."""
    rounds = 3
    database = str(tmp_path / "superlink.db")
    try:
        _, run_dir, port = _deploy(cluster, tmp_path, small_fleet, rounds, ("--database", database))
        _wait_for_round_one(cluster, run_dir / "clients.csv")
        cluster.kill(0)
        done = {int(r["round"]) for r in read_csv(run_dir / "clients.csv")}
        print(f"killed the SuperLink and its ServerApp after rounds {sorted(done)}")
        assert max(done) < rounds  # mid-run
        _start_superlink(cluster, port, "superlink-restarted", "--database", database)
        _all_online(cluster)
        resumed = tmp_path / "run-config-resume.toml"
        resumed.write_text((tmp_path / "run-config.toml").read_text() + "resume = true\n")
        _finished(cluster, _submit(cluster, resumed))

        clients = read_csv(run_dir / "clients.csv")
        assert Counter((int(r["round"]), int(r["partition"])) for r in clients) == Counter(
            {(number, p): 1 for number in range(1, rounds + 1) for p in range(DEVICES)}
        )
        assert {r["status"] for r in clients} == {"ok"}
        _check_codes_within_budgets(run_dir, clients)
        ledger = read_csv(run_dir / "ledger.csv")
        # Both starts asked every node for its partition: the second continued the first's
        # files (a fresh run would have started them over).
        queries = Counter((r["partition"], r["direction"]) for r in ledger if r["kind"] == "query")
        assert queries == {(str(p), d): 2 for p in range(DEVICES) for d in ("down", "up")}
        per_message = Counter(
            (r["round"], r["partition"], r["direction"], r["kind"])
            for r in ledger
            if r["kind"] != "query"  # each start asks every node for its partition again
        )
        assert set(per_message.values()) == {1}, per_message
        frozen = sorted(int(r["partition"]) for r in ledger if r["kind"] == "frozen-weights")
        assert frozen == list(range(DEVICES))
        assert len(json.loads((run_dir / "summary.json").read_text())["rounds"]) == rounds
    except BaseException:
        cluster.print_logs()
        raise
