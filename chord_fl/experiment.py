"""The cloud's setup for one data set and backbone, shared by the `hypernet` command, the benchmarks
and (later) the Flower server: the split, the frozen backbone (trained once and cached, or
regenerated from a seed), the prepared quantizer and the global importance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chord_fl.checkpoint import load_checkpoint
from chord_fl.cloud import channel_sensitivity, evaluate_codes
from chord_fl.comparators import CloudModels, method_codes
from chord_fl.data import RoundSplit, load_dataset, make_split
from chord_fl.errors import ConfigError
from chord_fl.models import SequentialRecommender, seeded_backbone
from chord_fl.pretrain import default_checkpoint, pretrain
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.train import TrainConfig

INITS = ("pretrained", "random")


@dataclass(frozen=True)
class Setup:
    dataset: str = "ml-100k"
    backbone: str = "sasrec"
    data_dir: str | None = None
    rounds: int = 1
    init: str = "pretrained"
    seed: int = 0
    checkpoint: str | None = None  # default: where `chord-fl pretrain` writes it
    fmt: str | None = None
    user_min: int | None = None
    item_min: int | None = None

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")

    @property
    def data_options(self) -> dict[str, Any]:
        return {"fmt": self.fmt, "user_min": self.user_min, "item_min": self.item_min}

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint:
            return Path(self.checkpoint)
        return default_checkpoint(self.dataset, self.backbone, self.rounds, self.seed)


def load_backbone(
    setup: Setup, split: RoundSplit, progress: bool = True, **backbone_options: Any
) -> SequentialRecommender:
    """The frozen backbone: regenerated from the seed (init "random"), or the cached cloud
    checkpoint, trained on the history split first if there is none."""
    if setup.init == "random":
        model = seeded_backbone(setup.backbone, split.num_items, setup.seed, **backbone_options)
        return model.eval()
    path = setup.checkpoint_path
    if not path.exists():
        pretrain(
            setup.dataset,
            setup.backbone,
            setup.data_dir,
            setup.rounds,
            TrainConfig(seed=setup.seed),
            backbone_options,
            path,
            setup.data_options,
            progress=progress,
        )
    model, _ = load_checkpoint(path)
    if model.num_items != split.num_items:
        raise ConfigError(
            f"{path} was trained for {model.num_items} items, {setup.dataset} has "
            f"{split.num_items}; pass another --checkpoint"
        )
    return model


def load_split(setup: Setup) -> RoundSplit:
    return make_split(
        load_dataset(setup.dataset, setup.data_dir, **setup.data_options), setup.rounds
    )


def global_importance(
    prepared: PreparedModel, split: RoundSplit, max_users: int = 2000, seed: int = 0
) -> np.ndarray:
    """(C,) mean squared-gradient sensitivity over (up to `max_users`) training users' last
    history step: one non-personalised strategy for everyone."""
    rng = np.random.default_rng([seed, 0x676C6F62])
    users = np.sort(rng.permutation(len(split))[:max_users])
    histories = [split.users[i].history for i in users]
    windows = [h[:-1] for h in histories]
    targets = np.array([h[-1] for h in histories])
    return channel_sensitivity(prepared.frozen, prepared.channels, windows, targets).mean(axis=0)


def evaluate_method(
    method: str,
    cloud: CloudModels,
    windows: list[np.ndarray],
    targets: np.ndarray,
    profiles: np.ndarray,
    budgets: np.ndarray,
    negatives: np.ndarray,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """One method at the given budgets: a row of mean metrics under both protocols with the bits
    and bytes used, and the per-device metrics behind it (for paired comparisons).

    `profiles` are the devices' uploads for `windows` (encode once, evaluate every method)."""
    prepared = cloud.prepared
    codes = method_codes(method, cloud, profiles, budgets, seed)
    per_device = evaluate_codes(prepared, windows, targets, codes, negatives)
    row: dict[str, Any] = {"method": method}
    for protocol, metrics in per_device.items():
        row[protocol] = {name: float(values.mean()) for name, values in metrics.items()}
    channels = prepared.channels
    if codes is None:
        row["avg_bits"], row["model_bytes"] = 32.0, float(channels.fp32_bytes)
    else:
        bits = prepared.table.array[codes]
        row["avg_bits"] = float((bits * channels.elements()).sum(1).mean() / channels.weights)
        cost = channels.cost(prepared.table)
        spent = cost[np.arange(codes.shape[1]), codes].sum(1) + channels.fixed_bytes
        if (spent > budgets).any():
            raise AssertionError(f"{method} exceeded a budget: this is a bug")
        row["model_bytes"] = float(spent.mean())
    row["budget_bytes"] = float(np.mean(budgets))
    return row, per_device
