"""A small fleet run by the code as it stood before the architecture pass (the refactor that moved
the federation runtime into `chord_fl.federation`) gives the same codes, metrics and ledger bytes
today. The reference (`tests/data/small-fleet-reference.json`) was written by this module's
`main` with the earlier code first on the path:

    PYTHONPATH=/path/to/earlier/checkout CHORD_DATA_DIR= python tests/test_behaviour_unchanged.py

Node ids and measured times differ between runs, so a snapshot keeps everything else: per
(round, partition) each device's metrics, bytes, code counts and status, and per message its
round, partition, direction, kind, payload and serialised bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "small-fleet-reference.json"
STRATEGIES = ("chord", "fp32", "fedavg")
# What each reference run is called now: `chord` became the better on validation of two recipes,
# and the relaxation-trained network it was then is `chord-relax`.
NOW = {"chord": "chord-relax", "fp32": "fp32", "fedavg": "fedavg"}
USERS, SEED, ROUNDS = 12, 4, 2
VOLATILE = {"node_id", "adapt_ms", "transfer_s"}
MESSAGE_ID_BYTES = 8
PINNED_TRAINING = {
    "epochs": 2,
    "num_negatives": 10,
    "lr": 1e-3,
    "loss": "sampled",
    "eval_every": 1,
    "patience": 10,
    "schedule": "constant",
    "batch_by_length": False,
}
PINNED_BACKBONE = {
    "dropout": 0.2,
    "attention_dropout": 0.2,
    "fast_dropout": False,
    "max_len": 200,
}


def _known(config_class: type, settings: dict) -> dict:
    """The settings `config_class` has: code older than a setting ran without it."""
    names = {field.name for field in dataclasses.fields(config_class)}
    return {key: value for key, value in settings.items() if key in names}


def _rows(path: Path, keys: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [
            {k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(handle)
        ]
    return sorted(rows, key=lambda row: tuple(row[k] for k in keys))


def snapshot(root: Path, names: dict[str, str]) -> dict[str, dict[str, list[dict[str, str]]]]:
    """Run the strategies `names` maps to (keyed by run name) on the small fleet under `root`;
    keep what is stable."""
    from chord_fl.data import synthetic_interactions
    from chord_fl.models.sasrec import SASRecConfig
    from chord_fl.pretrain import default_checkpoint, pretrain
    from chord_fl.train import TrainConfig
    from simulations.simulate import simulate

    data = root / "interactions.csv"
    synthetic_interactions(num_users=USERS, num_items=40, seed=SEED).to_csv(data, index=False)
    base = {
        "dataset": str(data),
        "rounds": ROUNDS,
        "negatives": 10,
        "hypernet-epochs": 1,
        "hypernet-lr": 3e-3,  # the default then
        "select-margin": 0.0,  # the reference kept the best validation score, whatever the margin
        "tier-guard": False,  # or the tiers
        "importance-exponents": "1",  # and allocated importances as they are
        "local-epochs": 1,
        "output-dir": str(root / "runs"),
        "checkpoint-dir": str(root / "checkpoints"),
        "node-wait": 5.0,
        "seed": SEED,
    }
    # A briefly trained backbone where the run config will look for it (both code versions name
    # it the same way), so the one-time download of frozen weights is in the ledger.
    checkpoint = root / "checkpoints" / default_checkpoint(str(data), "sasrec", ROUNDS, SEED).name
    # The backbone is trained as the reference's code trained it (today's defaults differ).
    train = TrainConfig(**_known(TrainConfig, {**PINNED_TRAINING, "seed": SEED}))
    backbone = _known(SASRecConfig, PINNED_BACKBONE)
    torch.manual_seed(SEED)  # the backbone's initial weights
    pretrain(str(data), "sasrec", None, ROUNDS, train, backbone, checkpoint, None, False)
    out = {}
    for name, strategy in names.items():
        settings = {**base, "strategy": strategy, "run-name": name}
        if strategy.startswith("chord"):  # the reference asked for each profile in its own round
            settings["profile-ahead"] = False
        simulate(settings, num_supernodes=USERS)
        run = root / "runs" / name
        out[name] = {
            "clients": _rows(run / "clients.csv", ("round", "partition")),
            "ledger": _rows(run / "ledger.csv", ("round", "partition", "direction", "kind")),
        }
    return out


# Issue 13: codes ride in the instruction's record and each reply's device time in the reply's
# own record: one Flower record fewer per message of these kinds, the payload the same.
LEANER = {
    ("down", "codes"),
    *(("up", kind) for kind in ("profile", "budget", "metrics", "weights")),
}
LEANER_BYTES = 100


def _metrics_close(now: list[dict], then: list[dict]) -> None:
    assert len(now) == len(then)
    for new, old in zip(now, then, strict=True):
        assert new.keys() == old.keys()
        if (new.get("direction"), new.get("kind")) in LEANER:
            # The payload is the same; the message around it shrank on purpose.
            assert int(new["message_bytes"]) < int(old["message_bytes"]) - LEANER_BYTES, new
            new, old = (
                {k: v for k, v in row.items() if k != "message_bytes"} for row in (new, old)
            )
        for key, value in old.items():
            # Serialised messages carry random node and message ids as varints, whose length
            # varies by a few bytes from run to run (two runs of the same code differ so).
            tolerance = MESSAGE_ID_BYTES if key == "message_bytes" else 1e-9
            try:
                assert float(new[key]) == pytest.approx(float(value), abs=tolerance), key
            except ValueError:
                assert new[key] == value, key


def _fixed_length_root() -> tempfile.TemporaryDirectory:
    # Paths travel in some messages, so their length must not vary between runs.
    return tempfile.TemporaryDirectory(prefix="chord-reference-", dir="/tmp")


def test_small_fleet_matches_the_code_before_the_architecture_pass():
    reference = json.loads(REFERENCE.read_text())
    with _fixed_length_root() as directory:
        now = snapshot(Path(directory), NOW)
    for strategy in STRATEGIES:
        _metrics_close(now[strategy]["clients"], reference[strategy]["clients"])
        _metrics_close(now[strategy]["ledger"], reference[strategy]["ledger"])


def main() -> None:
    with _fixed_length_root() as directory:
        result = snapshot(Path(directory), {name: name for name in STRATEGIES})
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}", file=sys.stderr)


if __name__ == "__main__":
    main()
