"""What the cloud and every simulated device derive from one run config, identically: the split,
the frozen backbone, each partition's tier and byte budget, and the sampled-protocol negatives.

Each process loads this once (`load_world` is cached), so a Ray worker serving hundreds of devices
reads the data and the weights a single time.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chord_fl.checkpoint import (
    hypernet_cache_path,
    hypernet_settings,
    load_hypernet,
    save_hypernet,
)
from chord_fl.cloud import tier_budgets
from chord_fl.data import RoundSplit
from chord_fl.errors import ConfigError
from chord_fl.experiment import Setup, load_split, prepare
from chord_fl.federation.runconfig import RunConfig, fleet_from_setting
from chord_fl.hypernet.training import train_best
from chord_fl.machine import on_device, torch_device
from chord_fl.methods import CHORD_VARIANTS, Cloud, global_exponent
from chord_fl.quant.budget import floor_bytes
from chord_fl.quant.master import master_tag
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.sensitivity import global_sensitivity
from chord_fl.tiers import Fleet, Tier, assign_tiers
from chord_fl.train import evaluation_negatives
from chord_fl.validation import sharpened


@dataclass(frozen=True)
class World:
    split: RoundSplit
    fleet: Fleet
    tier_of: np.ndarray  # (U,) tier index of each partition
    budgets: np.ndarray  # (U,) whole-model byte budget of each partition
    negatives: np.ndarray  # (U, N) sampled-protocol negatives
    prepared: PreparedModel

    @property
    def devices(self) -> int:
        return len(self.split)

    def tier(self, partition: int) -> Tier:
        return self.fleet.tiers[int(self.tier_of[partition])]

    def check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.devices:
            raise ConfigError(
                f"partition {partition} has no user: the split has {self.devices} users "
                f"(partitions 0..{self.devices - 1})"
            )


def load_world(config: RunConfig, train_missing: bool = True, progress: bool = False) -> World:
    """The shared state; `train_missing=False` (a device) refuses to train a missing backbone,
    which the cloud trains on its `cloud-device`."""
    device = config.cloud_device if train_missing else "cpu"
    return _cached_world(
        config.setup, config.tiers, config.negatives, train_missing, progress, device
    )


@functools.lru_cache(maxsize=2)
def _cached_world(
    setup: Setup, tiers: str, negatives: int, train_missing: bool, progress: bool, device: str
) -> World:
    torch_device(device)  # a GPU asked for where there is none fails here, before any work
    fleet = fleet_from_setting(tiers)
    split = load_split(setup)
    if setup.init == "pretrained" and not train_missing and not setup.checkpoint_path.exists():
        raise ConfigError(
            f"the frozen backbone {setup.checkpoint_path} is missing on this device: the cloud "
            "trains it before the first round"
        )
    prepared = prepare(setup, split, progress, device)
    tier_of = assign_tiers(fleet, len(split), setup.seed)
    by_tier = tier_budgets(fleet, prepared.channels)
    floor = floor_bytes(prepared.channels, prepared.table)
    for tier, budget in zip(fleet.tiers, by_tier, strict=True):
        if budget < floor:
            raise ConfigError(
                f"tier {tier.name!r}: budget {budget} B is below the all-pruned floor of "
                f"{int(floor)} B for {setup.backbone} on {setup.dataset}"
            )
    return World(
        split=split,
        fleet=fleet,
        tier_of=tier_of,
        budgets=by_tier[tier_of],
        negatives=evaluation_negatives(split, negatives, setup.seed),
        prepared=prepared,
    )


def load_cloud(world: World, method: str, config: RunConfig, progress: bool = False) -> Cloud:
    """What the cloud needs to issue `method`'s codes: hypernetworks (loaded, or trained once and
    cached next to the backbone) or the cloud-wide importance of the global strategy."""
    cloud = Cloud(world.prepared)
    setup = config.setup
    stem = Path(setup.checkpoint_path).stem
    train = config.hypernet_training

    def settings_of(recipes: tuple) -> dict:
        identity = setup.backbone_identity(world.prepared.frozen)  # hashes the checkpoint
        return hypernet_settings(identity, setup.quantizer, recipes, world.fleet, train)

    if method in CHORD_VARIANTS:
        recipes = CHORD_VARIANTS[method].recipes
        settings = settings_of(recipes)
        path = hypernet_cache_path(config.checkpoint_dir, f"{stem}-{method}", settings)
        if path.exists():
            net, _ = load_hypernet(path, world.prepared)
        else:
            net, result, served = train_best(
                world.prepared,
                world.split,
                world.fleet,
                recipes,
                train,
                progress,
                device=config.cloud_device,
            )
            meta = {"best_epoch": result.best_epoch, "variant": method, "settings": settings}
            meta["objectives"] = [recipe.objective for recipe in served]  # start, trained
            meta["importance_exponent"] = float(net.exponent)
            meta["trained_tiers"] = list(net.trained_tiers(world.fleet.names))
            save_hypernet(path, net, meta)
        cloud.hypernets[method] = net.eval()
    elif method == "global":
        # Depends on the data, the backbone (and its master) and the seed only.
        tag = master_tag(setup.master)
        name = f"{stem}-{tag}-global-fisher.npy" if tag else f"{stem}-global-fisher.npy"
        path = Path(config.checkpoint_dir) / name
        if path.exists():
            importance = np.load(path, allow_pickle=False)
        else:
            frozen = on_device(world.prepared.frozen, config.cloud_device)
            importance = global_sensitivity(
                frozen, world.prepared.channels, world.split, seed=config.seed
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, importance, allow_pickle=False)
        # The exponent costs a validation per candidate: chosen once per setting, then cached.
        settings = settings_of(())
        exponent_path = hypernet_cache_path(path.parent, f"{path.stem}-exponent", settings)
        exponent_path = exponent_path.with_suffix(".json")
        exponent = _cached_exponent(exponent_path, train.exponents)
        if exponent is None:
            exponent = global_exponent(world.prepared, world.split, world.fleet, importance, train)
            exponent_path.write_text(json.dumps({"exponent": exponent, "settings": settings}))
        cloud.global_importance = sharpened(importance, exponent)
    return cloud


def _cached_exponent(path: Path, candidates: tuple[float, ...]) -> float | None:
    """The exponent cached at `path`, or None where there is none to trust (absent, unreadable or
    not one of `candidates`): it is then chosen again and the file rewritten."""
    try:
        exponent = json.loads(path.read_text())["exponent"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return float(exponent) if exponent in candidates else None
