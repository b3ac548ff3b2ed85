"""Train a backbone on the cloud's history split, report validation and test metrics, save it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from chord_fl.checkpoint import save_checkpoint
from chord_fl.data import VALIDATION, load_dataset, make_split
from chord_fl.evaluation import evaluate_stages
from chord_fl.machine import machine_info, torch_device
from chord_fl.models import (
    BACKBONES,
    Popularity,
    SequentialRecommender,
    backbone_config,
    seeded_backbone,
)
from chord_fl.train import TrainConfig, evaluation_negatives, fit

BASELINES = ("popularity",)
# A backbone's input length when none is given: long enough for this share of the training
# histories, at most the backbone's own default (200). Amazon Beauty's and Yelp's histories are
# short (99% of them at most 41 and 52 items): no positions to learn that almost no one reaches.
LENGTH_PERCENTILE = 99.0


def with_data_length(
    backbone: str, histories: list[np.ndarray], options: dict[str, Any]
) -> dict[str, Any]:
    """`options` with `max_len` set from the histories when it is not given (see
    `LENGTH_PERCENTILE`), never below a Caser's window."""
    if "max_len" in options or backbone not in BACKBONES:
        return options
    config = backbone_config(backbone, **options)
    covering = int(np.ceil(np.percentile([len(h) for h in histories], LENGTH_PERCENTILE)))
    longest = max(min(covering, config.max_len), getattr(config, "window", 1))
    return {**options, "max_len": longest}


def default_checkpoint(dataset: str, backbone: str, rounds: int, seed: int) -> Path:
    stem = Path(dataset).stem if Path(dataset).suffix else dataset
    return Path("checkpoints") / f"{stem}-{backbone}-r{rounds}-s{seed}.pt"


def pretrain(
    dataset: str,
    backbone: str,
    data_dir: str | None = None,
    rounds: int = 1,
    train: TrainConfig = TrainConfig(),
    backbone_options: dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    data_options: dict[str, Any] | None = None,
    progress: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Everything `chord-fl pretrain` does; returns the report it prints. Training runs on
    `device` ("auto": a GPU when there is one); the saved model is on the CPU."""
    data = load_dataset(dataset, data_dir, **(data_options or {}))
    split = make_split(data, rounds)
    model: SequentialRecommender
    if backbone in BASELINES:
        model = Popularity(data.num_items)
    else:
        options = with_data_length(backbone, split.histories(), backbone_options or {})
        model = seeded_backbone(backbone, data.num_items, train.seed, **options)
    result = fit(model, split, train, progress, device)
    negatives = evaluation_negatives(split, train.num_negatives, train.seed)
    report: dict[str, Any] = {
        "dataset": dataset,
        "backbone": backbone,
        "users": data.num_users,
        "items": data.num_items,
        "interactions": data.num_interactions,
        "split": split.sizes(),
        "rounds": rounds,
        "train_config": asdict(train),
        "max_len": None if backbone in BASELINES else model.max_len,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(result.seconds, 2),
        "train_device": str(torch_device(device)) if backbone not in BASELINES else "cpu",
        "validation": evaluate_stages(model, split, [VALIDATION], negatives),
        "test": evaluate_stages(model, split, list(range(1, rounds + 1)), negatives),
        "machine": machine_info(),
    }
    if backbone not in BASELINES:
        path = checkpoint or default_checkpoint(dataset, backbone, rounds, train.seed)
        report["checkpoint"] = str(save_checkpoint(path, model, {"dataset": dataset, **report}))
    return report
