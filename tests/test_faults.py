"""Faults and hostile devices in small in-process simulations: injected failures get the right
status, bad replies are dropped without touching anyone else's codes, a corrupted downlink becomes
an error reply and full codes next round."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
from flwr.app import Array, ArrayRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

import chord_fl.federation.world as world_module
from chord_fl.errors import ChordError
from chord_fl.federation.faults import (
    ERROR,
    SLOW,
    damage,
    damaged_downlink,
    device_fault,
    is_offline,
)
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import read_csv
from chord_fl.federation.world import load_cloud, load_world
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.methods import method_codes
from chord_fl.quant.codec import encode_strategy
from chord_fl.tiers import DEFAULT_FLEET
from simulations.client import DeviceError, answer, device_runtime
from simulations.simulate import simulate
from strategies import chord as chord_strategy
from strategies import protocol
from strategies.protocol import Task

# Ray workers cannot import this file: send its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

USERS = 16
ROUNDS = 2


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_fleet):
    return small_fleet(tmp_path_factory.mktemp("faults"), USERS, 5, ROUNDS, init="random")


def _run(base, name, client_app=None, **changes):
    overrides = {**base, "run-name": name, **changes}
    simulate(overrides, client_app=client_app)
    run_dir = RunConfig.from_mapping(overrides).run_dir
    return read_csv(run_dir / "clients.csv"), read_csv(run_dir / "ledger.csv")


def _payloads(ledger, round_):
    return {
        int(r["partition"]): int(r["payload_bytes"])
        for r in ledger
        if int(r["round"]) == round_ and r["kind"] == "codes"
    }


def test_injected_faults_get_their_status_and_returning_devices_full_codes(base):
    changes = {"strategy": "global", "offline": True, "fail-rate": 0.2, "slow-rate": 0.2}
    clients, ledger = _run(base, "faults", **changes)
    config = RunConfig.from_mapping({**base, **changes})
    world = load_world(config)
    expected = {}
    for round_ in range(1, ROUNDS + 1):
        for partition in range(USERS):
            fault = device_fault(config, round_, partition)
            if is_offline(config, world.tier(partition), round_, partition):
                status = "offline"
            else:
                status = {ERROR: "error", SLOW: "timeout", None: "ok"}[fault]
            expected[(round_, partition)] = status
    assert {(int(r["round"]), int(r["partition"])): r["status"] for r in clients} == expected
    assert len(set(expected.values())) == 4  # the seed exercises every status
    for row in clients:
        values = [row[k] for k in ("ndcg@10", "hr@10", "model_bytes")]
        assert (row["status"] == "ok") == all(v != "" and math.isfinite(float(v)) for v in values)
    # Global codes never change: a device that held round 1's codes gets a tiny delta, one that
    # missed round 1 gets its codes in full.
    cloud = load_cloud(world, "global", config)
    codes = method_codes("global", cloud, np.empty((USERS, 0)), world.budgets)
    assert _payloads(ledger, 2)
    for partition, size in _payloads(ledger, 2).items():
        held = expected[(1, partition)] == "ok"
        base_codes = codes[partition] if held else None
        assert size == len(encode_strategy(codes[partition], base_codes))
    assert [r for r in ledger if r["kind"] == "late"]  # slow replies are on the ledger


def test_the_global_exponent_is_chosen_once_and_cached(base, monkeypatch):
    config = RunConfig.from_mapping({**base, "strategy": "global"})
    world = load_world(config)
    for old in Path(config.checkpoint_dir).glob("*-global-fisher-exponent-*.json"):
        old.unlink()
    first = load_cloud(world, "global", config).global_importance
    (cached,) = Path(config.checkpoint_dir).glob("*-global-fisher-exponent-*.json")

    def chosen_again(*args, **kwargs):
        raise AssertionError("the exponent was chosen again")

    monkeypatch.setattr(world_module, "global_exponent", chosen_again)
    np.testing.assert_array_equal(load_cloud(world, "global", config).global_importance, first)
    cached.write_text("{damaged")  # an unreadable cache is chosen again, not trusted
    with pytest.raises(AssertionError, match="chosen again"):
        load_cloud(world, "global", config)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_cloud(world, "global", config).global_importance, first)
    assert json.loads(cached.read_text())["exponent"] in config.hypernet_training.exponents


def test_damaged_code_messages_become_errors_and_full_codes_next_round(base):
    changes = {"strategy": "global", "corrupt-rate": 0.3}
    clients, ledger = _run(base, "damaged", **changes)
    config = RunConfig.from_mapping({**base, **changes})
    damaged = {
        (r, p)
        for r in range(1, ROUNDS + 1)
        for p in range(USERS)
        if damaged_downlink(config, r, p) is not None
    }
    assert damaged and any(r == 1 for r, _ in damaged)  # the seed damages something in round 1
    status = {(int(r["round"]), int(r["partition"])): r["status"] for r in clients}
    assert {key for key, value in status.items() if value != "ok"} == damaged
    assert {status[key] for key in damaged} == {"error"}
    # What was sent is what the cloud meant: the damage happened on the way.
    world = load_world(config)
    codes = method_codes("global", load_cloud(world, "global", config), np.empty((USERS, 0)),
                         world.budgets)  # fmt: skip
    for partition, size in _payloads(ledger, 2).items():
        held = (1, partition) not in damaged
        assert size == len(encode_strategy(codes[partition], codes[partition] if held else None))


def test_damage_draws_meet_the_configured_rate_and_always_change_a_byte():
    config = RunConfig(corrupt_rate=0.01, seed=3)
    draws = [damaged_downlink(config, r, p) for r in range(1, 4) for p in range(10_000)]
    hits = sum(d is not None for d in draws)
    n = len(draws)
    assert abs(hits / n - 0.01) <= 5 * math.sqrt(0.01 * 0.99 / n), hits
    payload = bytes(range(40))
    for mask in {d for d in draws if d is not None}:
        assert damage(payload, mask) != payload and len(damage(payload, mask)) == len(payload)


def _bad_profile(content: RecordDict, kind: str) -> RecordDict:
    upload = content.config_records[protocol.UPLOAD]
    if kind == "nan":
        upload[protocol.PROFILE] = np.full(
            len(upload[protocol.PROFILE]) // 2, np.nan, np.float16
        ).tobytes()
    elif kind == "shape":
        upload[protocol.PROFILE] = upload[protocol.PROFILE][:-6]
    else:  # a 100 MB array riding along
        content["junk"] = ArrayRecord({"x": Array(np.zeros(25_000_000, np.float32))})
    return content


def _corrupt_codes(content: RecordDict) -> RecordDict:
    payload = bytearray(protocol.read_codes(content))
    payload[-1] ^= 0xFF
    content.config_records[protocol.CONFIG][protocol.PAYLOAD] = bytes(payload)
    return content


HOSTILE = {1: "nan", 2: "shape", 3: "oversized"}
CORRUPTED = 4  # receives a damaged code payload in round 1


def tampering_app(overrides, received=None, replied=None) -> ClientApp:
    """Honest devices, except that `received(partition, round_, task, content)` may change what a
    device gets and `replied(partition, round_, task, reply)` what it answers."""
    app = ClientApp()

    def respond(msg: Message, context: Context) -> Message:
        config = RunConfig.from_mapping({**overrides})
        partition = int(context.node_config["partition-id"])
        round_, task = protocol.read_instruction(msg.content)
        content = msg.content
        if received is not None:
            content = received(partition, round_, task, content)
        try:
            reply = answer(device_runtime(config), content, partition, context.state)
        except DeviceError as exc:
            return Message(Error(2, str(exc)), reply_to=msg)
        if replied is not None:
            reply = replied(partition, round_, task, reply)
        return Message(reply, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        return Message(protocol.partition_content(partition), reply_to=msg)

    app.train()(respond)
    app.evaluate()(respond)
    return app


def _damaged_codes(partition, round_, task, content):
    """Device CORRUPTED's round-1 codes arrive damaged."""
    if partition == CORRUPTED and task is Task.CODES and round_ == 1:
        return _corrupt_codes(content)
    return content


def _bad_uploads(partition, round_, task, reply):
    """The HOSTILE devices send bad uploads every round."""
    if partition in HOSTILE and task is Task.PROFILE:
        return _bad_profile(reply, HOSTILE[partition])
    return reply


def hostile_app(overrides) -> ClientApp:
    return tampering_app(overrides, _damaged_codes, _bad_uploads)


def test_hostile_devices_are_dropped_and_change_no_one_elses_codes(base):
    clean_clients, clean_ledger = _run(base, "clean", strategy="chord")
    overrides = {**base, "strategy": "chord", "run-name": "hostile"}
    clients, ledger = _run(
        base,
        "hostile",
        hostile_app(RunConfig.from_mapping(overrides).to_mapping()),
        strategy="chord",
    )
    status = {(int(r["round"]), int(r["partition"])): r["status"] for r in clients}
    for round_ in range(1, ROUNDS + 1):
        assert all(status[(round_, p)] == "rejected" for p in HOSTILE)
    assert status[(1, CORRUPTED)] == "error"
    assert status[(2, CORRUPTED)] == "ok"

    def by_key(rows):
        return {
            (r["round"], r["partition"]): {
                k: v for k, v in r.items() if k not in ("node_id", "adapt_ms")
            }
            for r in rows
        }

    clean, hostile = by_key(clean_clients), by_key(clients)
    bystanders = [p for p in range(USERS) if p not in HOSTILE and p != CORRUPTED]
    for round_ in range(1, ROUNDS + 1):
        for p in bystanders:
            assert hostile[(str(round_), str(p))] == clean[(str(round_), str(p))]
        sizes, clean_sizes = _payloads(ledger, round_), _payloads(clean_ledger, round_)
        assert {p: sizes[p] for p in bystanders} == {p: clean_sizes[p] for p in bystanders}
    # The device that rejected its codes gets them in full next round, not as a delta.
    config = RunConfig.from_mapping(overrides)
    world = load_world(config)
    cloud = load_cloud(world, "chord", config)
    window = world.split.users[CORRUPTED].window(2)
    profile = encode_profiles(world.prepared.frozen, [window])
    codes = method_codes("chord", cloud, profile, world.budgets[[CORRUPTED]])[0]
    assert _payloads(ledger, 2)[CORRUPTED] == len(encode_strategy(codes, None))
    kinds = Counter(r["kind"] for r in ledger if int(r["partition"]) in HOSTILE)
    assert kinds["codes"] == 0 and kinds["profile"] == len(HOSTILE) * ROUNDS


MISCARRIED = 5  # its round-1 report carries a profile of the wrong length (profile-ahead)
UNASKED = 6  # sends an upload with its last report, which nobody asked for
REFUSED = 7  # its round-1 report is refused (a wrong model size), its carried profile sound


def _bad_carried_uploads(partition, round_, task, reply):
    if task is Task.CODES and round_ == 1 and partition == MISCARRIED:
        return _bad_profile(reply, "shape")
    if task is Task.CODES and round_ == 1 and partition == REFUSED:
        reply.metric_records[protocol.METRICS]["model_bytes"] += 1
        return reply
    if task is Task.CODES and round_ == ROUNDS and partition == UNASKED:
        return protocol.with_upload(reply, protocol.upload_content(5_000, None))
    return reply


def _device_rows(table):
    """Each (round, partition)'s row without what differs between two runs of the same code."""
    drop = ("node_id", "adapt_ms")
    return {
        (int(r["round"]), int(r["partition"])): {k: v for k, v in r.items() if k not in drop}
        for r in table
    }


def test_a_bad_upload_carried_by_a_report_is_asked_for_again(base):
    """profile-ahead: a report whose carried upload is malformed still counts, and the device
    is asked for its upload in the next train phase, as is a device whose report was refused;
    an upload nobody asked for spoils its report; no one else's codes or metrics change."""
    clean_clients, _ = _run(base, "ahead-clean", strategy="chord", **{"profile-ahead": True})
    overrides = {**base, "strategy": "chord", "run-name": "ahead-bad", "profile-ahead": True}
    app = tampering_app(RunConfig.from_mapping(overrides).to_mapping(), None, _bad_carried_uploads)
    clients, ledger = _run(base, "ahead-bad", app, strategy="chord", **{"profile-ahead": True})
    clean, tampered = _device_rows(clean_clients), _device_rows(clients)
    spoiled = [(1, REFUSED), (ROUNDS, UNASKED)]
    assert [tampered.pop(key)["status"] for key in spoiled] == ["rejected"] * 2
    assert tampered == {key: row for key, row in clean.items() if key not in spoiled}
    asked_again = [
        int(r["partition"])
        for r in ledger
        if int(r["round"]) == 2 and (r["direction"], r["kind"]) == ("up", "profile")
    ]
    assert asked_again == [MISCARRIED, REFUSED]
    unasked = [
        r
        for r in ledger
        if (r["round"], r["partition"], r["direction"]) == (str(ROUNDS), str(UNASKED), "up")
    ]
    assert [(r["kind"], r["payload_bytes"]) for r in unasked] == [("metrics", "0")]


def test_an_upload_from_a_device_not_drawn_next_round_spoils_its_report(base):
    """profile-ahead with half the fleet drawn each round: a device drawn in both rounds carries
    its round-2 upload on its round-1 report; one drawn in round 1 but not in round 2 is not
    asked for it, so one it sends anyway with its round-1 report is refused, and no one else's
    row changes."""
    half = {"strategy": "chord", "fraction": 0.5, "profile-ahead": True}
    clean_clients, clean_ledger = _run(base, "half-clean", **half)
    drawn = {(int(r["round"]), int(r["partition"])) for r in clean_clients}
    stray = min(p for r, p in drawn if r == 1 and (2, p) not in drawn)
    twice = min(p for r, p in drawn if r == 1 and (2, p) in drawn)
    twice_up = [
        (r["round"], r["kind"])
        for r in clean_ledger
        if (r["partition"], r["direction"]) == (str(twice), "up") and r["kind"] != "query"
    ]
    assert twice_up == [("1", "profile"), ("1", "metrics+profile"), ("2", "metrics")]

    def send_unasked(partition, round_, task, reply):
        if task is Task.CODES and round_ == 1 and partition == stray:
            return protocol.with_upload(reply, protocol.upload_content(5_000, None))
        return reply

    overrides = {**base, **half, "run-name": "half-stray"}
    app = tampering_app(RunConfig.from_mapping(overrides).to_mapping(), None, send_unasked)
    clients, ledger = _run(base, "half-stray", app, **half)
    clean, tampered = _device_rows(clean_clients), _device_rows(clients)
    assert tampered.pop((1, stray))["status"] == "rejected"
    assert tampered == {key: row for key, row in clean.items() if key != (1, stray)}
    stray_up = [
        (r["kind"], r["payload_bytes"])
        for r in ledger
        if (r["round"], r["partition"], r["direction"]) == ("1", str(stray), "up")
    ]
    assert [kind for kind, _ in stray_up] == ["profile", "metrics"]  # its report carried nothing


def test_a_round_where_every_device_fails_is_reported_not_a_crash(base):
    clients, ledger = _run(base, "all-fail", strategy="chord", **{"fail-rate": 1.0})
    assert {r["status"] for r in clients} == {"error"} and len(clients) == USERS * ROUNDS
    config = RunConfig.from_mapping({**base, "run-name": "all-fail"})
    summary = json.loads((config.run_dir / "summary.json").read_text())
    assert [r["error"] for r in summary["rounds"]] == [USERS] * ROUNDS
    assert all(r["ndcg@10"] is None for r in summary["rounds"])
    assert not [r for r in ledger if r["kind"] == "codes"]


@pytest.mark.parametrize("rates", [(0.2, 0.1), (0.05, 0.3)])
def test_fault_draws_meet_the_configured_rates_over_a_big_fleet(rates):
    """Counted independently: over 3 x 4,000 device-rounds each status's share lies within five
    binomial standard deviations of its configured rate (availability for offline)."""
    fail, slow = rates
    config = RunConfig(offline=True, fail_rate=fail, slow_rate=slow, seed=11)
    tier = DEFAULT_FLEET.tiers[0]
    draws = [(r, p) for r in range(1, 4) for p in range(4000)]
    faults = Counter(device_fault(config, r, p) for r, p in draws)
    offline = sum(is_offline(config, tier, r, p) for r, p in draws)
    n = len(draws)
    for observed, rate in (
        (faults[ERROR], fail),
        (faults[SLOW], slow),
        (offline, 1 - tier.availability),
    ):
        assert abs(observed / n - rate) <= 5 * math.sqrt(rate * (1 - rate) / n), (observed, rate)
    # Independent draws: a device's fault in one round says nothing of the next.
    both = sum(
        device_fault(config, 1, p) == ERROR == device_fault(config, 2, p) for p in range(4000)
    )
    assert abs(both / 4000 - fail**2) <= 5 * math.sqrt(fail**2 * (1 - fail**2) / 4000)


# -- the cloud's byte guards ---------------------------------------------------------------------

LIAR = 3


def _one_byte_less(partition, round_, task, reply):
    """Device LIAR reports one byte less than its codes take."""
    if partition == LIAR and task is Task.CODES:
        reply.metric_records[protocol.METRICS]["model_bytes"] -= 1
    return reply


def test_a_device_that_misreports_its_model_bytes_is_rejected(base, caplog):
    overrides = {**base, "strategy": "chord", "run-name": "liar"}
    app = tampering_app(RunConfig.from_mapping(overrides).to_mapping(), replied=_one_byte_less)
    simulate(overrides, client_app=app)
    clients = read_csv(RunConfig.from_mapping(overrides).run_dir / "clients.csv")
    status = {(int(r["round"]), int(r["partition"])): r["status"] for r in clients}
    assert {key: value for key, value in status.items() if key[1] == LIAR} == {
        (round_, LIAR): "rejected" for round_ in range(1, ROUNDS + 1)
    }
    assert {value for key, value in status.items() if key[1] != LIAR} == {"ok"}
    assert any("its codes take" in record.getMessage() for record in caplog.records)


def test_an_allocation_over_budget_stops_the_run_before_codes_are_sent(base, monkeypatch, caplog):
    honest = chord_strategy.method_codes

    def greedy(*args, **kwargs):  # every channel at the widest code: over any real budget
        return np.full_like(honest(*args, **kwargs), 3)

    monkeypatch.setattr(chord_strategy, "method_codes", greedy)
    overrides = {**base, "strategy": "chord", "run-name": "over-budget"}
    with pytest.raises(ChordError) as raised:
        simulate(overrides)
    said = [str(raised.value), *(record.getMessage() for record in caplog.records)]
    assert any("over its budget" in text for text in said), said[-5:]
    run_dir = RunConfig.from_mapping(overrides).run_dir
    ledger = read_csv(run_dir / "ledger.csv") if (run_dir / "ledger.csv").exists() else []
    assert not [row for row in ledger if row["kind"] == "codes"]
