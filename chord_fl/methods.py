"""Every method a device can be given, in one registry, so that all are compared at equal bytes.

- fp32: the frozen full-precision model, no budget.
- uniform: every weight at the widest single width from 1 to 8 bits whose whole model fits the
  budget, with per-channel or per-tensor scales (`chord_fl.quant.uniform`).
- random: random importances, allocated under the budget.
- global: one non-personalised importance for all users (cloud-wide squared gradients, in the spirit
  of HAWQ), raised to the exponent validation chooses (`calibrated_global`), allocated under each
  budget.
- chord and its ablations: the hypernetworks' importances for each device's profile.

The Flower strategies and the benchmarks take their names from `METHODS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from chord_fl.cloud import issue_codes
from chord_fl.data.split import RoundSplit
from chord_fl.errors import ConfigError
from chord_fl.hypernet.networks import ChordHyperNet, HyperNetConfig
from chord_fl.hypernet.tiered import TieredHyperNet
from chord_fl.hypernet.training import HyperTrainConfig, Recipe
from chord_fl.quant.budget import widest_uniform
from chord_fl.quant.channels import ChannelMap
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.selection import Scores
from chord_fl.tiers import Fleet
from chord_fl.validation import choose_exponent, exponent_devices, sharpened

FP32, UNIFORM, CODES = "fp32", "uniform", "codes"


@dataclass(frozen=True)
class Variant:
    """A CHORD variant: the recipes its hypernetworks may come from; each is trained, and what is
    served is chosen on validation targets only (`chord_fl.hypernet.serving.serve_best`)."""

    recipes: tuple[Recipe, ...]


@dataclass(frozen=True)
class Method:
    gives: str  # what a device receives: FP32 (nothing new), UNIFORM (a width) or CODES
    personalised: bool = False  # its codes depend on the device's profile
    variant: Variant | None = None


def _both(**levels: bool) -> Variant:
    """The relaxation and sensitivity supervision, with the same levels switched off."""
    relaxed = Recipe(HyperNetConfig(**levels), "next-item")
    supervised = Recipe(HyperNetConfig(link="exp", prior=True, **levels), "sensitivity")
    return Variant((relaxed, supervised))


# Validation favours sensitivity supervision on some data sets and backbones and the relaxation on
# others (README, "Headroom"), so `chord` and its ablations train both: the start with the higher
# mean validation score is served, and a trained network at the tiers where it does not lose to
# that start, provided it beats it over them (`serve_best`). The one-recipe variants serve
# benchmarks and comparisons.
CHORD_VARIANTS = {
    "chord": _both(),
    "chord-no-element": _both(element_level=False),
    "chord-no-filter": _both(filter_level=False),
    "chord-no-layer": _both(layer_level=False),
    "chord-relax": Variant((Recipe(HyperNetConfig(), "next-item"),)),
    "chord-sens": Variant((Recipe(HyperNetConfig(link="exp", prior=True), "sensitivity"),)),
    # The relaxation trained from the supervised recipe's start (the stronger start on SASRec).
    "chord-sens-relax": Variant((Recipe(HyperNetConfig(link="exp", prior=True), "next-item"),)),
}
METHODS: dict[str, Method] = {
    "fp32": Method(FP32),
    "uniform": Method(UNIFORM),
    "random": Method(CODES),
    "global": Method(CODES),
    **{name: Method(CODES, True, variant) for name, variant in CHORD_VARIANTS.items()},
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


HYPERNET_CHUNK = 256


@torch.no_grad()
def hypernet_importance(
    net: TieredHyperNet, profiles: np.ndarray, budgets: np.ndarray, chunk: int = HYPERNET_CHUNK
) -> np.ndarray:
    """(D, C) importance of devices with (D, hidden) profiles and (D,) byte budgets, from the
    network each budget is served (`TieredHyperNet.route`)."""
    profiles = np.asarray(profiles)
    route = net.route(budgets)
    out = np.empty((len(profiles), sum(head.channels for head in net.start.heads)), np.float32)
    for index, network in enumerate(net.networks):
        rows = np.flatnonzero(route == index)
        out[rows] = network_importance(network, profiles[rows], chunk)
    return out


@torch.no_grad()
def network_importance(
    net: ChordHyperNet, profiles: np.ndarray, chunk: int = HYPERNET_CHUNK
) -> np.ndarray:
    """(D, C) importance of one network, computed in zero-padded chunks of one fixed shape.

    Matrix kernels choose their summation order by shape, so a batch of another size can change
    a row in its last bits and flip a code at a tie; with one shape, a device's codes never
    depend on which other devices share its round (a rejected device changes no one else's)."""
    profiles = torch.from_numpy(np.asarray(profiles))
    out = []
    for start in range(0, len(profiles), chunk):
        rows = profiles[start : start + chunk]
        padding = rows.new_zeros((chunk - len(rows), rows.shape[1]))
        out.append(net(torch.cat([rows, padding]))[: len(rows)])
    if not out:
        return np.empty((0, sum(head.channels for head in net.heads)))
    return torch.cat(out).numpy()


def calibrated_global(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    importance: np.ndarray,
    config: HyperTrainConfig,
) -> np.ndarray:
    """(C,) the cloud-wide `importance` raised to its `global_exponent`."""
    return sharpened(importance, global_exponent(prepared, split, fleet, importance, config))


def global_exponent(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    importance: np.ndarray,
    config: HyperTrainConfig,
) -> float:
    """The exponent for the cloud-wide `importance`, chosen as the hypernetworks' start's is (same
    validation users, exponents and rule: `chord_fl.validation`)."""
    window = config.profile_window or None
    devices = functools.cache(
        lambda: exponent_devices(prepared, split, fleet, config.exponent_users, config.seed, window)
    )

    def score(exponent: float) -> Scores:
        rows = np.broadcast_to(
            sharpened(importance, exponent), (len(devices().users), len(importance))
        )
        return devices().score(prepared, rows, config.select_metric)

    return choose_exponent(score, config.exponents, config.sampled_guard)


@dataclass
class Cloud:
    """What the cloud holds: the prepared frozen model, trained hypernetworks by method name, and
    the cloud-wide channel importance for the global strategy."""

    prepared: PreparedModel
    hypernets: dict[str, TieredHyperNet] = field(default_factory=dict)
    global_importance: np.ndarray | None = None


@dataclass(frozen=True)
class Devices:
    """The devices of one batch of codes: (D, hidden) profiles, (D,) byte budgets, (D,) ids."""

    profiles: np.ndarray
    budgets: np.ndarray
    ids: np.ndarray


def _random(name: str, cloud: Cloud, devices: Devices, seed: int) -> np.ndarray:
    # One stream per device: its codes never depend on which other devices share the batch.
    channels = cloud.prepared.channels.channels
    rows = [np.random.default_rng([seed, int(i), 0x72616E64]).random(channels) for i in devices.ids]
    return np.array(rows).reshape(len(devices.ids), channels)


def _global(name: str, cloud: Cloud, devices: Devices, seed: int) -> np.ndarray:
    if cloud.global_importance is None:
        raise ConfigError("the global strategy needs cloud-wide channel importance")
    shape = (len(devices.ids), cloud.prepared.channels.channels)
    return np.broadcast_to(cloud.global_importance, shape)


def _hypernet(name: str, cloud: Cloud, devices: Devices, seed: int) -> np.ndarray:
    if name not in cloud.hypernets:
        raise ConfigError(f"no trained hypernetworks for {name!r}")
    return hypernet_importance(cloud.hypernets[name], devices.profiles, devices.budgets)


Importance = Callable[[str, Cloud, Devices, int], np.ndarray]
_IMPORTANCE: dict[str, Importance] = {
    "random": _random,
    "global": _global,
    **dict.fromkeys(CHORD_VARIANTS, _hypernet),
}


def method_codes(
    name: str,
    cloud: Cloud,
    profiles: np.ndarray,
    budgets: np.ndarray,
    seed: int = 0,
    device_ids: np.ndarray | None = None,
) -> np.ndarray:
    """(D, C) codes of the code method `name` for devices with (D, hidden) profiles and (D,)
    byte budgets; `device_ids` (default 0..D-1) key each device's random codes."""
    if method(name).gives != CODES:
        raise ConfigError(f"{name} gives devices no codes")
    ids = np.arange(len(budgets)) if device_ids is None else np.asarray(device_ids)
    importance = _IMPORTANCE[name](name, cloud, Devices(profiles, budgets, ids), seed)
    return issue_codes(cloud.prepared, importance, budgets)


def uniform_widths(channels: ChannelMap, budgets: np.ndarray) -> list[tuple[int, bool]]:
    """(bits, per_tensor) of each device's uniform model: the widest that fits its budget."""
    widths = []
    for device, budget in enumerate(np.asarray(budgets)):
        width = widest_uniform(channels, int(budget))
        if width is None:
            raise ConfigError(
                f"device {device}: budget {int(budget)} B holds no uniform model (1 bit per "
                "weight with one scale per tensor needs more)"
            )
        widths.append(width)
    return widths
