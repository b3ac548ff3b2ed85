"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chord_fl.data import synthetic_interactions


def _small_fleet(root: Path, users: int, seed: int, rounds: int, **changes: Any) -> dict[str, Any]:
    """Run-config overrides for a fast simulation: a synthetic data set of `users` users written
    under `root`, few negatives, one hypernetwork epoch, outputs and checkpoints under `root`."""
    data = root / "interactions.csv"
    synthetic_interactions(num_users=users, num_items=40, seed=seed).to_csv(data, index=False)
    return {
        "dataset": str(data),
        "rounds": rounds,
        "negatives": 10,
        "hypernet-epochs": 1,
        "output-dir": str(root / "runs"),
        "checkpoint-dir": str(root / "checkpoints"),
        "node-wait": 5.0,
        **changes,
    }


@pytest.fixture(scope="session")
def small_fleet():
    """`small_fleet(root, users, seed, rounds, **changes)`: see `_small_fleet`."""
    return _small_fleet
