"""The run configuration of a federated simulation, as Flower's run config carries it.

Keys are kebab-case in Flower (`flwr run . --run-config "local-epochs=2"`) and snake_case here.
`RunConfig.from_mapping` is the only way in: it rejects unknown keys, listing the known ones, and
checks every value before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from chord_fl.errors import ConfigError
from chord_fl.experiment import INITS, Setup
from chord_fl.federation.shards import parse_shard, shard_name, shard_users
from chord_fl.hypernet.training import HyperTrainConfig
from chord_fl.machine import DEVICES
from chord_fl.methods import FP32, METHODS
from chord_fl.models import BACKBONES
from chord_fl.pretrain import default_checkpoint
from chord_fl.quant.master import check_master
from chord_fl.tiers import DEFAULT_FLEET, Fleet, load_fleet

_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
# Every method of the registry, plus FedAvg and FedAvg with a uniformly quantized aggregate.
STRATEGIES = (*METHODS, "fedavg", "fedavg-uniform")
# Strategies whose devices quantize the frozen weights they hold (so may hold an 8-bit master).
QUANTIZING = tuple(name for name, method in METHODS.items() if method.gives != FP32)


@dataclass(frozen=True)
class RunConfig:
    strategy: str = "chord"
    dataset: str = "ml-100k"
    backbone: str = "sasrec"
    rounds: int = 3
    fraction: float = 1.0
    seed: int = 0
    data_dir: str = ""
    format: str = ""
    output_dir: str = "runs"
    run_name: str = ""
    checkpoint_dir: str = "checkpoints"
    # where the cloud trains what it has not cached (the backbone, hypernetworks, the global
    # importance): "auto" (a GPU when there is one), "cpu" or "cuda"; devices run on the CPU
    cloud_device: str = "auto"
    tiers: str = ""
    init: str = "pretrained"
    master: str = "fp32"  # the one-time download: fp32 backbone or 8-bit master ("int8")
    code_bits: str = "0,2,4,8"  # the width each 2-bit code stands for, comma-separated
    scales: str = "channel"  # code strategies: an fp16 scale per channel, or per tensor ("tensor")
    negatives: int = 100
    local_epochs: int = 5
    local_lr: float = 1e-3
    hypernet_epochs: int = HyperTrainConfig.epochs
    hypernet_lr: float = HyperTrainConfig.lr
    # paired standard errors by which a trained hypernetwork must beat its start
    select_margin: float = 2.0
    # ...and each tier is served it only where it does not lose at that tier nor at a narrower
    # one, on users besides the epochs' validation users (false: every tier or none, on the
    # fleet's mean alone; before 2026-12-05)
    tier_guard: bool = True
    # true: a tier wider than one where the trained network loses may still take it (before
    # commit e79807f)
    wider_than_losses: bool = False
    sensitivity_temperature: float = 1.0  # sharpening of the supervision's targets, p^(1/T)
    # exponents tried on validation for global's and each hypernetwork start's importances
    # (chord_fl.validation), comma-separated; "1": allocate importances as they are
    importance_exponents: str = ",".join(f"{e:g}" for e in HyperTrainConfig.exponents)
    profile_window: int = 0
    # code strategies: each device re-spreads its item table's bytes over the rows for its own
    # window (chord_fl.refine); the cloud's codes and the bytes on the network stay the same
    refine_items: bool = False
    # code strategies: the report of each device drawn for the next round carries its upload for
    # that round, so the cloud asks a device for one only where it holds none (one message a
    # round for a device drawn in consecutive rounds, where two go otherwise); codes and metrics
    # stay the same. fp32 and FedAvg devices send no profile or budget: it changes nothing there.
    profile_ahead: bool = True
    round_timeout: float = 600.0
    node_wait: float = 20.0
    offline: bool = False  # each device answers a round with its tier's availability
    fail_rate: float = 0.0  # share of devices whose ClientApp raises in a round
    slow_rate: float = 0.0  # share of devices answering after the round's timeout
    corrupt_rate: float = 0.0  # share of code messages damaged on the way to the device
    resume: bool = False  # continue the run in run-dir after its last complete round
    # "I/K": this simulation serves users I, I+K, ... of the fleet (chord_fl.federation.shards)
    shard: str = ""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            expected = _TYPES[field.type]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, field.name, float(value))
            elif not isinstance(value, expected) or (
                expected is not bool and isinstance(value, bool)
            ):
                raise ConfigError(
                    f"run config {_key(field.name)!r} must be {expected.__name__}, got {value!r}"
                )
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; known: {', '.join(BACKBONES)}")
        if self.cloud_device not in DEVICES:
            raise ConfigError(
                f"cloud-device must be one of {', '.join(DEVICES)}, got {self.cloud_device!r}"
            )
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        check_master(self.master)
        if self.master != "fp32" and self.strategy not in QUANTIZING:
            raise ConfigError(
                f"master {self.master!r} needs a strategy that quantizes the frozen weights on "
                f"the device ({', '.join(QUANTIZING)}), not {self.strategy!r}"
            )
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        for name in ("rounds", "negatives", "local_epochs", "hypernet_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_key(name)} must be >= 1, got {getattr(self, name)}")
        if not self.select_margin >= 0:
            raise ConfigError(f"select-margin must be >= 0, got {self.select_margin}")
        for name in ("local_lr", "hypernet_lr", "round_timeout", "sensitivity_temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{_key(name)} must be > 0, got {getattr(self, name)}")
        for name in ("fail_rate", "slow_rate", "corrupt_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{_key(name)} must be in [0, 1], got {getattr(self, name)}")
        if self.fail_rate + self.slow_rate > 1:
            raise ConfigError("fail-rate + slow-rate must be <= 1")
        if self.profile_window < 0 or self.seed < 0:
            raise ConfigError("profile-window and seed must be >= 0")
        if not 0 <= self.node_wait < math.inf or not self.round_timeout < math.inf:
            raise ConfigError("node-wait must be finite and >= 0, round-timeout finite")
        parse_shard(self.shard)
        self.fleet  # noqa: B018 - a malformed tier file fails here, before any work
        self.setup  # noqa: B018 - and a bad code table or scale granularity here
        if min(_numbers(self.importance_exponents, "importance-exponents", float)) <= 0:
            raise ConfigError(
                f"importance-exponents must be > 0, got {self.importance_exponents!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """From Flower's run config (kebab-case keys); unknown keys are an error."""
        known = {_key(f.name): f.name for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown run config keys {unknown}; known: {sorted(known)}")
        return cls(**{known[key]: value for key, value in values.items()})

    def to_mapping(self) -> dict[str, Any]:
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @property
    def fleet(self) -> Fleet:
        return fleet_from_setting(self.tiers)

    @property
    def setup(self) -> Setup:
        """The cloud's view: data, backbone and where its checkpoint lives."""
        name = default_checkpoint(self.dataset, self.backbone, self.rounds, self.seed).name
        return Setup(
            dataset=self.dataset,
            backbone=self.backbone,
            data_dir=self.data_dir or None,
            rounds=self.rounds,
            init=self.init,
            seed=self.seed,
            checkpoint=os.fspath(Path(self.checkpoint_dir) / name),
            format=self.format or None,
            master=self.master,
            code_bits=_numbers(self.code_bits, "code-bits", int),
            scales=self.scales,
        )

    @property
    def hypernet_training(self) -> HyperTrainConfig:
        """How the cloud trains hypernetworks it has not cached."""
        return HyperTrainConfig(
            epochs=self.hypernet_epochs,
            lr=self.hypernet_lr,
            seed=self.seed,
            profile_window=self.profile_window,
            select_margin=self.select_margin,
            tier_guard=self.tier_guard,
            wider_than_losses=self.wider_than_losses,
            sensitivity_temperature=self.sensitivity_temperature,
            exponents=_numbers(self.importance_exponents, "importance-exponents", float),
        )

    @property
    def carries_uploads(self) -> bool:
        """Whether reports carry the next round's upload (`profile_ahead` where devices upload)."""
        return self.profile_ahead and self.strategy in QUANTIZING

    @property
    def run_dir(self) -> Path:
        stem = Path(self.dataset).stem if Path(self.dataset).suffix else self.dataset
        name = self.run_name or f"{self.strategy}-{stem}-{self.backbone}-s{self.seed}"
        whole = Path(self.output_dir) / name
        return whole / shard_name(parse_shard(self.shard)) if self.shard else whole

    def users(self, devices: int) -> range:
        """The users of a fleet of `devices` that this simulation serves."""
        return shard_users(parse_shard(self.shard), devices)

    def user_of(self, partition: int) -> int:
        """The user behind a SuperNode's partition (itself, unless sharded)."""
        index, count = parse_shard(self.shard)
        return index + partition * count


def fleet_from_setting(tiers: str) -> Fleet:
    """The `tiers` setting: empty (the built-in fleet), a TOML file path, or TOML text (it has
    an `=`), e.g. `tier = [{name = "low", share = 1.0, ...}]` on one line."""
    if not tiers:
        return DEFAULT_FLEET
    if "=" not in tiers:
        return load_fleet(tiers)
    try:
        return load_fleet(tomllib.loads(tiers))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"run config 'tiers' is not valid TOML: {exc}") from exc


def _key(name: str) -> str:
    return name.replace("_", "-")


def _numbers(text: str, key: str, kind: type) -> tuple:
    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{key} must be comma-separated {what}, got {text!r}") from None
