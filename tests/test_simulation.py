"""In-process Flower simulations on a small synthetic fleet: outputs, byte ledger, budgets and
repeatability, checked against sizes and codes computed here independently of the strategies."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import CLIENT_COLUMNS, KINDS, LEDGER_COLUMNS, read_csv
from chord_fl.federation.world import load_cloud, load_world
from chord_fl.hypernet.profile import PROFILE_DTYPE, encode_profiles
from chord_fl.methods import method_codes
from chord_fl.pretrain import pretrain
from chord_fl.quant.budget import uniform_bytes
from chord_fl.quant.codec import encode_strategy
from chord_fl.refine import refine_item_rows
from chord_fl.train import TrainConfig
from simulations.simulate import simulate, simulate_shards

ROUNDS = 2
USERS = 16
SHARDS = 3
MASTER_SHARED = {"master": "int8", "code-bits": "0,2,3,4", "scales": "tensor"}


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_fleet):
    root = tmp_path_factory.mktemp("fleet")
    overrides = small_fleet(root, USERS, 3, ROUNDS)
    data = overrides["dataset"]
    config = RunConfig.from_mapping(overrides)
    # A briefly trained backbone, so the one-time download of frozen weights is in the ledger.
    train = TrainConfig(epochs=2, num_negatives=10)
    pretrain(data, "sasrec", None, ROUNDS, train, None, config.setup.checkpoint_path, None, False)
    return overrides


def _again_checkpoints(base) -> Path:
    """Where the second same-seed chord run keeps its checkpoints: the backbone only, at first."""
    return Path(base["checkpoint-dir"]).with_name("checkpoints-again")


@pytest.fixture(scope="module")
def runs(base):
    """Each strategy's run directory; chord twice with the same seed, the second training its
    hypernetworks afresh (its checkpoint directory holds only the backbone)."""
    out = {}
    again = _again_checkpoints(base)
    again.mkdir()
    backbone = RunConfig.from_mapping(base).setup.checkpoint_path
    shutil.copy(backbone, again / backbone.name)
    for name, strategy in (
        ("chord", "chord"),
        ("chord-again", "chord"),
        ("fedavg", "fedavg"),
        ("uniform", "uniform"),
        ("fedavg-uniform", "fedavg-uniform"),
        ("global-int8", "global"),
        ("chord-refined", "chord"),
        ("chord-two-trips", "chord"),
    ):
        overrides = {**base, "strategy": strategy, "run-name": name}
        if name.endswith("int8"):  # the 8-bit master, and a code table with shared scales
            overrides.update(MASTER_SHARED)
        if name.endswith("refined"):
            overrides["refine-items"] = True
        if name.endswith("two-trips"):
            overrides["profile-ahead"] = False
        if name == "chord-again":
            overrides["checkpoint-dir"] = str(again)
        simulate(overrides)
        out[name] = RunConfig.from_mapping(overrides).run_dir
    sharded = {**base, "strategy": "chord", "run-name": "chord-shards"}
    simulate_shards(sharded, SHARDS)
    out["chord-shards"] = RunConfig.from_mapping(sharded).run_dir
    return out


def _world(base):
    config = RunConfig.from_mapping(base)
    return config, load_world(config)


def _state_bytes(world) -> int:
    return sum(t.numel() * t.element_size() for t in world.prepared.frozen.state_dict().values())


@pytest.mark.parametrize("name", ["chord", "fedavg", "uniform"])
def test_outputs_have_every_column_and_one_row_per_device_and_round(runs, name):
    run_dir = runs[name]
    ledger, clients = read_csv(run_dir / "ledger.csv"), read_csv(run_dir / "clients.csv")
    assert tuple(ledger[0]) == LEDGER_COLUMNS and tuple(clients[0]) == CLIENT_COLUMNS
    assert Counter((r["round"], r["partition"]) for r in clients) == Counter(
        {(str(r), str(p)): 1 for r in range(1, ROUNDS + 1) for p in range(USERS)}
    )
    assert {row["status"] for row in clients} == {"ok"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [entry["round"] for entry in summary["rounds"]] == [1, 2]
    timings = read_csv(run_dir / "rounds.csv")
    assert [int(row["round"]) for row in timings] == [1, 2]
    for row, entry in zip(timings, summary["rounds"], strict=True):
        assert float(row["wall_s"]) > 0 and entry["wall_s"] == float(row["wall_s"])
        assert 0 < entry["server_rss_mib"] <= entry["server_peak_rss_mib"]
    down = sum(int(r["message_bytes"]) for r in ledger if r["direction"] == "down")
    assert summary["totals"]["downlink_message_bytes"] == down
    config = json.loads((run_dir / "config.json").read_text())
    assert config["strategy"] == summary["strategy"] and config["devices"] == USERS
    assert all(int(r["message_bytes"]) >= int(r["payload_bytes"]) for r in ledger)
    assert {r["kind"] for r in ledger} <= set(KINDS)


def test_chord_codes_in_the_ledger_are_the_codes_computed_here(runs, base):
    config, world = _world(base)
    cloud = load_cloud(world, "chord", config)
    ledger = read_csv(runs["chord"] / "ledger.csv")
    clients = read_csv(runs["chord"] / "clients.csv")
    cost = world.prepared.channels.cost(world.prepared.table)
    hidden = world.prepared.frozen.hidden_size
    held = None
    for round_ in range(1, ROUNDS + 1):
        windows = world.split.windows(round_)
        profiles = np.stack([encode_profiles(world.prepared.frozen, [w])[0] for w in windows])
        codes = method_codes("chord", cloud, profiles, world.budgets)
        sent = {
            int(r["partition"]): int(r["payload_bytes"])
            for r in ledger
            if int(r["round"]) == round_ and r["kind"] == "codes"
        }
        expected = {
            p: len(encode_strategy(codes[p], None if held is None else held[p]))
            for p in range(USERS)
        }
        assert sent == expected
        # this round's profiles: asked for now, or carried by last round's reports
        uploads = [
            int(r["payload_bytes"])
            for r in ledger
            if (int(r["round"]), r["kind"])
            in {(round_, "profile"), (round_ - 1, "metrics+profile")}
        ]
        assert uploads == [hidden * np.dtype(PROFILE_DTYPE).itemsize + 8] * USERS
        for row in (r for r in clients if int(r["round"]) == round_):
            own = codes[int(row["partition"])]
            counts = np.bincount(own, minlength=4)
            assert [int(row[f"codes_{k}"]) for k in range(4)] == counts.tolist()
            spent = world.prepared.channels.fixed_bytes + cost[np.arange(len(own)), own].sum()
            assert int(row["model_bytes"]) == spent <= int(row["budget_bytes"])
        held = codes


def test_refining_devices_hold_their_own_item_rows_and_send_what_chord_sends(runs, base):
    config, world = _world(base)
    cloud = load_cloud(world, "chord", config)
    prepared = world.prepared
    cost = prepared.channels.cost(prepared.table)
    clients = read_csv(runs["chord-refined"] / "clients.csv")
    assert {r["status"] for r in clients} == {"ok"}
    changed = 0
    for round_ in range(1, ROUNDS + 1):
        windows = world.split.windows(round_)
        profiles = np.stack([encode_profiles(prepared.frozen, [w])[0] for w in windows])
        codes = method_codes("chord", cloud, profiles, world.budgets)
        for row in (r for r in clients if int(r["round"]) == round_):
            partition = int(row["partition"])
            own = refine_item_rows(prepared, codes[partition], windows[partition])
            changed += not np.array_equal(own, codes[partition])
            assert [int(row[f"codes_{k}"]) for k in range(4)] == np.bincount(
                own, minlength=4
            ).tolist()
            spent = prepared.channels.fixed_bytes + cost[np.arange(len(own)), own].sum()
            sent = prepared.channels.fixed_bytes + cost[np.arange(len(own)), codes[partition]].sum()
            assert int(row["model_bytes"]) == spent <= sent <= int(row["budget_bytes"])
    assert changed > 0
    # Refining is the device's own business: the network carries exactly what chord's does.
    traffic = {
        name: sorted(
            (r["round"], r["partition"], r["kind"], r["payload_bytes"])
            for r in read_csv(runs[name] / "ledger.csv")
        )
        for name in ("chord", "chord-refined")
    }
    assert traffic["chord-refined"] == traffic["chord"]


def test_a_fleet_served_in_shards_gets_the_codes_metrics_and_bytes_of_one_simulation(runs):
    def device_rows(run_dir):
        drop = {"node_id", "adapt_ms"}  # node ids are random; adapt_ms is wall time
        rows = read_csv(run_dir / "clients.csv")
        return sorted(tuple((k, v) for k, v in row.items() if k not in drop) for row in rows)

    def traffic(run_dir):
        rows = read_csv(run_dir / "ledger.csv")
        return sorted(
            (r["round"], r["partition"], r["direction"], r["kind"], r["payload_bytes"])
            for r in rows
        )

    whole, sharded = runs["chord"], runs["chord-shards"]
    assert device_rows(sharded) == device_rows(whole)
    assert traffic(sharded) == traffic(whole)
    served = [
        {int(r["partition"]) for r in read_csv(sharded / f"shard-{i}-of-{SHARDS}" / "clients.csv")}
        for i in range(SHARDS)
    ]
    assert served == [set(range(i, USERS, SHARDS)) for i in range(SHARDS)]
    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["devices"] == USERS
    expected = json.loads((whole / "summary.json").read_text())
    for mine, theirs in zip(summary["rounds"], expected["rounds"], strict=True):
        assert mine["ndcg@10"] == pytest.approx(theirs["ndcg@10"])
        assert mine["downlink_payload_bytes"] == theirs["downlink_payload_bytes"]


def test_reports_carrying_the_next_upload_save_a_message_and_change_no_code(runs):
    """profile-ahead: round 1's reports carry round 2's profiles, so round 2 has no train phase;
    every code, metric and payload byte is that of the plain run, in fewer, larger messages."""
    plain, ahead = runs["chord-two-trips"], runs["chord"]
    drop = {"node_id", "adapt_ms"}

    def device_rows(run_dir):
        return [
            {k: v for k, v in r.items() if k not in drop} for r in read_csv(run_dir / "clients.csv")
        ]

    assert device_rows(ahead) == device_rows(plain)
    ledgers = {
        name: read_csv(run / "ledger.csv") for name, run in (("plain", plain), ("ahead", ahead))
    }

    def kinds(name, round_):
        return Counter(
            (r["direction"], r["kind"]) for r in ledgers[name] if int(r["round"]) == round_
        )

    assert kinds("plain", 2) == kinds("plain", 1)
    expected = kinds("plain", 1)
    expected[("up", "metrics+profile")] = expected.pop(("up", "metrics"))
    assert kinds("ahead", 1) == expected and expected[("up", "metrics+profile")] == USERS
    assert kinds("ahead", 2) == {("down", "codes"): USERS, ("up", "metrics"): USERS}

    assert _payloads_by_device(ahead) == _payloads_by_device(plain)

    def total(name, direction):
        return sum(int(r["message_bytes"]) for r in ledgers[name] if r["direction"] == direction)

    assert total("ahead", "up") < total("plain", "up")
    assert total("ahead", "down") < total("plain", "down")


def _payloads_by_device(run_dir) -> Counter:
    """Payload bytes each device sent and received over the run (whatever round carried them)."""
    totals = Counter()
    for r in read_csv(run_dir / "ledger.csv"):
        totals[(r["partition"], r["direction"])] += int(r["payload_bytes"])
    return totals


def test_with_a_fraction_only_devices_drawn_next_round_send_their_upload_ahead(
    tmp_path, small_fleet
):
    """uniform (budgets, widths) over 3 rounds, half the fleet drawn each round: a report
    carries a budget exactly where its device is drawn next round, a train phase asks exactly
    the devices it holds none for, and every row and payload equals the plain run's."""
    overrides = small_fleet(tmp_path, USERS, 3, 3, strategy="uniform", fraction=0.5)
    train = TrainConfig(epochs=2, num_negatives=10)
    checkpoint = RunConfig.from_mapping(overrides).setup.checkpoint_path
    pretrain(overrides["dataset"], "sasrec", None, 3, train, None, checkpoint, None, False)
    run_dirs = {}
    for name, ahead in (("plain", False), ("ahead", True)):
        settings = {**overrides, "run-name": name, "profile-ahead": ahead}
        simulate(settings)
        run_dirs[name] = RunConfig.from_mapping(settings).run_dir
    drop = {"node_id", "adapt_ms"}
    rows = {
        name: [{k: v for k, v in r.items() if k not in drop} for r in read_csv(d / "clients.csv")]
        for name, d in run_dirs.items()
    }
    assert rows["ahead"] == rows["plain"]
    drawn = {(int(r["round"]), int(r["partition"])) for r in rows["plain"]}
    assert len(drawn) == 3 * USERS // 2

    def uploads(kind):
        return {
            (int(r["round"]), int(r["partition"]))
            for r in read_csv(run_dirs["ahead"] / "ledger.csv")
            if (r["direction"], r["kind"]) == ("up", kind)
        }

    carried = {(r, p) for r, p in drawn if (r + 1, p) in drawn}
    assert uploads("metrics+budget") == carried and carried
    assert uploads("budget") == {(r, p) for r, p in drawn if (r - 1, p) not in drawn}
    assert _payloads_by_device(run_dirs["ahead"]) == _payloads_by_device(run_dirs["plain"])


def test_frozen_weights_are_downloaded_once_by_code_strategies_only(runs, base):
    _, world = _world(base)
    size = _state_bytes(world)
    chord = [r for r in read_csv(runs["chord"] / "ledger.csv") if r["kind"] == "frozen-weights"]
    assert sorted(int(r["partition"]) for r in chord) == list(range(USERS))
    assert {(r["round"], int(r["payload_bytes"])) for r in chord} == {("0", size)}
    fedavg = read_csv(runs["fedavg"] / "ledger.csv")
    assert not [r for r in fedavg if r["kind"] == "frozen-weights"]
    weights = [r for r in fedavg if r["kind"] == "weights"]
    # Per round: weights down for training, up from every device, down again for evaluation.
    assert len(weights) == 3 * USERS * ROUNDS
    assert {int(r["payload_bytes"]) for r in weights} == {size}


def test_an_int8_master_is_downloaded_once_and_shared_scales_cost_no_channel_bytes(runs, base):
    _, world = _world(base)
    # Counted here from the state dict: every matrix 1 byte a weight and a 2-byte scale a row
    # (SASRec's rows are its first axis), every vector fp32.
    size = sum(
        t.numel() + 2 * t.shape[0] if t.dim() >= 2 else 4 * t.numel()
        for t in world.prepared.frozen.state_dict().values()
    )
    ledger = read_csv(runs["global-int8"] / "ledger.csv")
    frozen = [r for r in ledger if r["kind"] == "frozen-weights"]
    assert sorted(int(r["partition"]) for r in frozen) == list(range(USERS))
    assert {(r["round"], int(r["payload_bytes"])) for r in frozen} == {("0", size)}
    clients = read_csv(runs["global-int8"] / "clients.csv")
    assert {r["status"] for r in clients} == {"ok"}
    assert all(int(r["model_bytes"]) <= int(r["budget_bytes"]) for r in clients)
    assert all(0.0 <= float(r["ndcg@10"]) <= 1.0 for r in clients)
    # Shared scales: a channel costs only its packed integers (SASRec's rows are all `hidden` long).
    _, shared = _world({**base, **MASTER_SHARED})
    hidden, fixed = shared.prepared.frozen.hidden_size, shared.prepared.channels.fixed_bytes
    for row in clients:
        counts = [int(row[f"codes_{k}"]) for k in range(4)]
        packed = sum(
            n * -(-hidden * bits // 8) for n, bits in zip(counts, (0, 2, 3, 4), strict=True)
        )
        assert int(row["model_bytes"]) == fixed + packed


def test_fedavg_uniform_devices_hold_the_size_the_cloud_computed_within_budget(runs):
    clients = read_csv(runs["fedavg-uniform"] / "clients.csv")
    # A device reporting other bytes than the cloud computed for its budget would be rejected.
    assert {r["status"] for r in clients} == {"ok"}
    assert all(int(r["model_bytes"]) <= int(r["budget_bytes"]) for r in clients)
    assert all(float(r["avg_bits"]) < 32 for r in clients)


def test_uniform_devices_get_the_widest_width_that_fits(runs, base):
    ledger = read_csv(runs["uniform"] / "ledger.csv")
    assert {int(r["payload_bytes"]) for r in ledger if r["kind"] == "budget"} == {8}
    assert {int(r["payload_bytes"]) for r in ledger if r["kind"] == "width"} == {2}
    clients = read_csv(runs["uniform"] / "clients.csv")
    assert {r["status"] for r in clients} == {"ok"}
    channels = _world(base)[1].prepared.channels
    for row in clients:
        bits = float(row["avg_bits"])
        assert bits == int(bits) and 1 <= bits <= 8
        budget, held = int(row["budget_bytes"]), int(row["model_bytes"])
        assert held <= budget
        # The widest width that fits: one bit more fits neither way.
        assert held in {uniform_bytes(channels, int(bits), t) for t in (False, True)}
        if bits < 8:
            assert min(uniform_bytes(channels, int(bits) + 1, t) for t in (False, True)) > budget


def test_same_seed_gives_identical_codes_and_metrics(runs, base):
    def stable(run_dir):
        clients = [
            {k: v for k, v in row.items() if k not in ("node_id", "adapt_ms")}
            for row in read_csv(run_dir / "clients.csv")
        ]
        ledger = Counter(
            (r["round"], r["partition"], r["direction"], r["kind"], r["payload_bytes"])
            for r in read_csv(run_dir / "ledger.csv")
        )
        return clients, ledger

    # The second run trained its own hypernetworks, from the same seed.
    assert len(list(_again_checkpoints(base).glob("*-chord-*.pt"))) == 1
    assert stable(runs["chord"]) == stable(runs["chord-again"])


def test_fedavg_trains_on_devices_and_reports_its_training_time(runs):
    clients = read_csv(runs["fedavg"] / "clients.csv")
    assert all(float(r["avg_bits"]) == 32.0 and float(r["adapt_ms"]) > 0 for r in clients)
    assert all(r["codes_0"] == "" for r in clients)


def test_plot_command_writes_the_table_ratio_and_figures(runs, tmp_path):
    from simulations.cli import main

    out = tmp_path / "report"
    assert main(["plot", str(runs["chord"]), str(runs["fedavg"]), "--out", str(out)]) == 0
    names = {path.name for path in out.iterdir()}
    assert {"compare.md", "bytes_per_round.png", "cumulative_bytes.png", "report.html"} <= names
    # The break-even round, counted round by round from the two ledgers alone.
    spent = {}
    for name in ("chord", "fedavg"):
        ledger = read_csv(runs[name] / "ledger.csv")
        once = sum(int(r["message_bytes"]) for r in ledger if r["round"] == "0") / USERS
        rounds = sum(int(r["message_bytes"]) for r in ledger if r["round"] != "0")
        spent[name] = (once, rounds / (USERS * ROUNDS))
    round_ = 1
    while (
        spent["chord"][0] + round_ * spent["chord"][1]
        > spent["fedavg"][0] + round_ * spent["fedavg"][1]
    ):
        round_ += 1
    rows = {row["strategy"]: row for row in read_csv(out / "break-even.csv")}
    assert int(rows["chord"]["break_even_round_vs_fedavg"]) == round_
    (paired,) = read_csv(out / "paired-vs-chord.csv")
    assert paired["strategy"] == "fedavg" and int(paired["ndcg@10_devices"]) > 1
    ratios = read_csv(out / "downlink-fedavg-over-chord.csv")
    assert [row["round"] for row in ratios][:ROUNDS] == [str(r) for r in range(1, ROUNDS + 1)]
    # FedAvg's downlink carries the weights twice a round; CHORD's a few hundred bytes of codes,
    # after a one-time download of the frozen weights that shrinks the ratio of the totals.
    per_round = [float(row["downlink_payload_ratio"]) for row in ratios[: ROUNDS + 1]]
    assert min(per_round) > 100
    assert 1 < float(ratios[-1]["downlink_payload_ratio"]) < min(per_round)


def test_plot_names_a_run_by_its_master_and_counts_its_smaller_download(runs, tmp_path):
    from simulations.cli import main

    out = tmp_path / "report"
    assert main(["plot", str(runs["chord"]), str(runs["global-int8"]), "--out", str(out)]) == 0
    rows = {row["strategy"]: row for row in read_csv(out / "compare.csv")}
    assert set(rows) == {"chord", "global (int8 master)"}
    total = "downlink_payload_bytes_total"
    assert float(rows["global (int8 master)"][total]) < 0.6 * float(rows["chord"][total])
