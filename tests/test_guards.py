"""The two byte guards of the cloud: a device that misreports its model size is rejected, and an
allocation over a device's budget stops the run."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from chord_fl.errors import BudgetExceeded, ChordError
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import read_csv
from simulations.client import answer, device_runtime
from simulations.simulate import simulate
from strategies import chord as chord_strategy
from strategies import protocol
from strategies.protocol import Task

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

USERS, ROUNDS = 8, 1
LIAR = 3


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_fleet):
    return small_fleet(tmp_path_factory.mktemp("guards"), USERS, 6, ROUNDS, init="random")


def lying_app(overrides) -> ClientApp:
    """Device LIAR reports one byte less than its codes take; everyone else is honest."""
    app = ClientApp()

    def respond(msg: Message, context: Context) -> Message:
        config = RunConfig.from_mapping(overrides)
        partition = int(context.node_config["partition-id"])
        _, task = protocol.read_instruction(msg.content)
        reply = answer(device_runtime(config), msg.content, partition, context.state)
        if partition == LIAR and task is Task.CODES:
            reply.metric_records[protocol.METRICS]["model_bytes"] -= 1
        return Message(reply, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        return Message(protocol.partition_content(partition), reply_to=msg)

    app.train()(respond)
    app.evaluate()(respond)
    return app


def test_a_device_that_misreports_its_model_bytes_is_rejected(base, caplog):
    overrides = {**base, "strategy": "chord", "run-name": "liar"}
    simulate(overrides, client_app=lying_app(RunConfig.from_mapping(overrides).to_mapping()))
    clients = read_csv(RunConfig.from_mapping(overrides).run_dir / "clients.csv")
    status = {int(r["partition"]): r["status"] for r in clients}
    assert status.pop(LIAR) == "rejected"
    assert set(status.values()) == {"ok"}
    assert any("its codes take" in record.getMessage() for record in caplog.records)


def test_an_allocation_over_budget_stops_the_run(base, monkeypatch):
    honest = chord_strategy.method_codes

    def greedy(*args, **kwargs):  # every channel at the widest code: over any real budget
        return np.full_like(honest(*args, **kwargs), 3)

    monkeypatch.setattr(chord_strategy, "method_codes", greedy)
    overrides = {**base, "strategy": "chord", "run-name": "over-budget"}
    with pytest.raises((BudgetExceeded, ChordError)) as raised:
        simulate(overrides)
    run_dir = RunConfig.from_mapping(overrides).run_dir
    # Nothing was sent: the check runs before any codes leave the cloud.
    ledger = read_csv(run_dir / "ledger.csv") if (run_dir / "ledger.csv").exists() else []
    assert not [row for row in ledger if row["kind"] == "codes"]
    assert isinstance(raised.value, BudgetExceeded) or "failed" in str(raised.value)
