"""Bad settings, data and checkpoints end `chord-fl simulate` with a clear message and exit
status 2 before Ray or any round starts."""

from __future__ import annotations

import flwr.simulation
import pytest

from chord_fl.data import synthetic_interactions
from simulations.cli import main


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the simulation started despite a bad setting")

    monkeypatch.setattr(flwr.simulation, "run_simulation", never)
    data = tmp_path / "interactions.csv"
    synthetic_interactions(num_users=12, num_items=40, seed=0).to_csv(data, index=False)
    return tmp_path, data


TINY_TIER = (
    'tier = [{name = "tiny", share = 1.0, uplink_bps = 1e6, downlink_bps = 1e6, speed = 1.0, '
    "availability = 1.0, memory_bytes = 10}]"
)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("strategy='fedprox'", "unknown strategy 'fedprox'"),
        ("backbone='gru4rec'", "unknown backbone 'gru4rec'"),
        ("rounds=500", "rounds=500"),
        ("dataset='{root}/missing.csv'", "missing.csv"),
        ("dataset='{root}/broken.csv'", "broken.csv, line 3"),
        ("init='pretrained'", "cannot read checkpoint"),
        ("tiers='{tier}'", "below the all-pruned floor"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(fleet, capsys, setting, message):
    root, data = fleet
    (root / "broken.csv").write_text("user,item,timestamp\n1,2,3\n1,x\n")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "interactions-sasrec-r2-s0.pt").write_bytes(b"not a checkpoint")
    base = (
        f"dataset='{data}' rounds=2 init='random' negatives=10 checkpoint-dir='{checkpoints}' "
        f"output-dir='{root / 'runs'}'"
    )
    override = setting.format(root=root, tier=TINY_TIER)
    assert main(["simulate", "-c", base, "-c", override]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (root / "runs").exists()  # nothing was started or written
