"""The cloud's setup for one data set and backbone, shared by the `hypernet` command, the benchmarks
and (later) the Flower server: the split, the frozen backbone (trained once and cached, or
regenerated from a seed), the prepared quantizer and the global importance."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from chord_fl.checkpoint import load_checkpoint
from chord_fl.cloud import evaluate_codes, evaluate_models
from chord_fl.data import RoundSplit, load_dataset, make_split
from chord_fl.errors import ConfigError
from chord_fl.methods import FP32, UNIFORM, Cloud, method, method_codes, uniform_widths
from chord_fl.models import SequentialRecommender, describe, seeded_backbone
from chord_fl.pretrain import default_checkpoint, pretrain, with_data_length
from chord_fl.quant.budget import check_within_budget, coded_bytes
from chord_fl.quant.channels import SCALES, CodeTable
from chord_fl.quant.master import check_master, int8_master, master_tag
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.quant.uniform import quantize_uniform
from chord_fl.train import default_training, evaluation_negatives

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
    format: str | None = None
    user_min: int | None = None
    item_min: int | None = None
    master: str = "fp32"  # what devices hold: the fp32 backbone or its 8-bit master
    code_bits: tuple[int, ...] = CodeTable().bits  # the width each 2-bit code stands for
    scales: str = "channel"  # an fp16 scale per stored channel, or shared per tensor ("tensor")

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        check_master(self.master)
        CodeTable(tuple(self.code_bits))
        if self.scales not in SCALES:
            raise ConfigError(f"scales must be one of {', '.join(SCALES)}, got {self.scales!r}")

    @property
    def quantizer(self) -> dict[str, Any]:
        """What shapes every channel's levels, errors and bytes (cached cloud models depend on
        it)."""
        return {"code_bits": list(self.code_bits), "scales": self.scales}

    @property
    def data_options(self) -> dict[str, Any]:
        return {"format": self.format, "user_min": self.user_min, "item_min": self.item_min}

    def backbone_identity(self, frozen: SequentialRecommender) -> str:
        """What names the frozen backbone: a trained one is its checkpoint's bytes, a seeded one
        its architecture (whose input length may come from the data) and seed; an 8-bit master
        is another backbone."""
        if self.init == "random":
            identity = f"random:{self.seed}:{json.dumps(describe(frozen), sort_keys=True)}"
        else:
            identity = "sha256:" + hashlib.sha256(self.checkpoint_path.read_bytes()).hexdigest()
        tag = master_tag(self.master)
        return f"{identity}:{tag}" if tag else identity

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint:
            return Path(self.checkpoint)
        return default_checkpoint(self.dataset, self.backbone, self.rounds, self.seed)


def load_backbone(
    setup: Setup,
    split: RoundSplit,
    progress: bool = True,
    device: str = "auto",
    **backbone_options: Any,
) -> SequentialRecommender:
    """The frozen backbone as devices hold it: regenerated from the seed (init "random"), or the
    cached cloud checkpoint, trained on the history split first (on `device`) if there is none;
    decoded from its 8-bit master when `setup.master` is "int8"."""
    if setup.init == "random":
        options = with_data_length(setup.backbone, split.histories(), backbone_options)
        model = seeded_backbone(setup.backbone, split.num_items, setup.seed, **options)
        return _as_held(model.eval(), setup)
    path = setup.checkpoint_path
    if not path.exists():
        pretrain(
            setup.dataset,
            setup.backbone,
            setup.data_dir,
            setup.rounds,
            default_training(setup.backbone, seed=setup.seed),
            backbone_options,
            path,
            setup.data_options,
            progress=progress,
            device=device,
        )
    model, _ = load_checkpoint(path)
    if model.num_items != split.num_items:
        raise ConfigError(
            f"{path} was trained for {model.num_items} items, {setup.dataset} has "
            f"{split.num_items}; pass another --checkpoint"
        )
    return _as_held(model, setup)


def prepare(
    setup: Setup, split: RoundSplit, progress: bool = True, device: str = "auto"
) -> PreparedModel:
    """The frozen backbone as devices hold it (trained on `device` if missing), with every
    channel's levels at every width of the setup's code table."""
    model = load_backbone(setup, split, progress, device)
    return PreparedModel(model, CodeTable(tuple(setup.code_bits)), scales=setup.scales)


class EvalDevices(NamedTuple):
    """The devices a benchmark scores: users, their windows and targets (by default round 1's:
    the test targets) and sampled negatives."""

    users: np.ndarray
    windows: list[np.ndarray]
    targets: np.ndarray
    negatives: np.ndarray


def eval_devices(
    split: RoundSplit, count: int, negatives: int = 100, stage: int = 1
) -> EvalDevices:
    """`count` users drawn once (seed 0, sorted), so every benchmark scores the same devices."""
    users = np.sort(np.random.default_rng(0).permutation(len(split))[:count])
    return EvalDevices(
        users,
        [split.users[i].window(stage) for i in users],
        split.targets(stage)[users],
        evaluation_negatives(split, negatives, seed=0)[users],
    )


def _as_held(model: SequentialRecommender, setup: Setup) -> SequentialRecommender:
    return int8_master(model) if setup.master == "int8" else model


def load_split(setup: Setup) -> RoundSplit:
    return make_split(
        load_dataset(setup.dataset, setup.data_dir, **setup.data_options), setup.rounds
    )


def evaluate_method(
    name: str,
    cloud: Cloud,
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
    channels = prepared.channels
    budgets = np.asarray(budgets)
    gives = method(name).gives
    if gives == FP32:
        per_device = evaluate_codes(prepared, windows, targets, None, negatives)
        spent = np.full(len(budgets), channels.fp32_bytes)
        bits = np.full(len(budgets), 32.0)
    elif gives == UNIFORM:
        widths = uniform_widths(channels, budgets)
        spent, bits = np.empty(len(budgets), np.int64), np.empty(len(budgets))
        groups = []
        for width in sorted(set(widths)):
            members = np.array([i for i, w in enumerate(widths) if w == width])
            model = quantize_uniform(prepared.frozen, channels, *width)
            spent[members], bits[members] = model.nbytes, model.avg_bits
            groups.append((model.model, members))
        per_device = evaluate_models(groups, windows, targets, negatives)
    else:
        codes = method_codes(name, cloud, profiles, budgets, seed)
        per_device = evaluate_codes(prepared, windows, targets, codes, negatives)
        spent = coded_bytes(channels, prepared.table, codes)
        bits = (prepared.table.array[codes] * channels.elements()).sum(1) / channels.weights
    if gives != FP32:
        check_within_budget(spent, budgets, [f"{name}, device {i}" for i in range(len(spent))])
    row: dict[str, Any] = {"method": name}
    for protocol, metrics in per_device.items():
        row[protocol] = {metric: float(values.mean()) for metric, values in metrics.items()}
    row["avg_bits"] = float(np.mean(bits))
    row["model_bytes"] = float(np.mean(spent))
    row["budget_bytes"] = float(np.mean(budgets))
    if gives == UNIFORM:
        row["uniform_widths"] = sorted(
            {f"{b}-bit/{'tensor' if t else 'channel'}" for b, t in widths}
        )
    return row, per_device
