"""Device tiers: who the phones are, how fast they talk and compute, and how much model they hold.

A tier states its model budget either as `avg_bits`, bits per quantizable weight (so one tier
file serves every backbone and catalogue), or as absolute `memory_bytes`.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from fractions import Fraction

import numpy as np

from chord_fl.errors import ConfigError

__all__ = [
    "DEFAULT_FLEET",
    "DEFAULT_TIERS",
    "Fleet",
    "Tier",
    "assign_tiers",
    "budget_bytes",
    "fleet_to_toml",
    "load_fleet",
    "tier_counts",
    "transfer_seconds",
]


def _number(tier: Tier, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"tier {tier.name!r}: {field} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"tier {tier.name!r}: {field} must be finite, got {value}")
    return float(value)


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Tier:
    """One class of phone. Bandwidths in bit/s; `speed` is compute relative to a mid phone (1.0);
    `availability` is the chance the phone answers a round."""

    name: str
    share: float
    uplink_bps: float
    downlink_bps: float
    speed: float
    availability: float
    avg_bits: float | None = None
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"tier name must be a non-empty string, got {self.name!r}")
        for field in ("share", "uplink_bps", "downlink_bps", "speed"):
            value = _number(self, field, getattr(self, field))
            if not value > 0:
                raise ConfigError(f"tier {self.name!r}: {field} must be > 0, got {value}")
            object.__setattr__(self, field, value)  # TOML integers become floats
        availability = _number(self, "availability", self.availability)
        object.__setattr__(self, "availability", availability)
        if not 0 < availability <= 1:
            raise ConfigError(
                f"tier {self.name!r}: availability must be in (0, 1], got {availability}"
            )
        if (self.avg_bits is None) == (self.memory_bytes is None):
            raise ConfigError(
                f"tier {self.name!r}: set exactly one of avg_bits and memory_bytes, "
                f"got avg_bits={self.avg_bits!r}, memory_bytes={self.memory_bytes!r}"
            )
        if self.avg_bits is not None:
            bits = _number(self, "avg_bits", self.avg_bits)
            if not 0 <= bits <= 64:
                raise ConfigError(f"tier {self.name!r}: avg_bits must be in [0, 64], got {bits}")
            object.__setattr__(self, "avg_bits", bits)
        if self.memory_bytes is not None and (
            isinstance(self.memory_bytes, bool)
            or not isinstance(self.memory_bytes, int)
            or self.memory_bytes < 0
        ):
            raise ConfigError(
                f"tier {self.name!r}: memory_bytes must be an integer >= 0, "
                f"got {self.memory_bytes!r}"
            )


@dataclass(frozen=True)
class Fleet:
    """The tiers of a simulated population; shares are normalised to sum to 1."""

    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        tiers = tuple(self.tiers)
        if not tiers:
            raise ConfigError("a fleet needs at least one tier")
        for tier in tiers:
            if not isinstance(tier, Tier):
                raise ConfigError(f"fleet tiers must be Tier, got {type(tier).__name__}")
        names = [tier.name for tier in tiers]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"tier names must be unique; repeated: {', '.join(repeated)}")
        total = math.fsum(tier.share for tier in tiers)
        if total != 1.0:
            tiers = tuple(replace(tier, share=tier.share / total) for tier in tiers)
        object.__setattr__(self, "tiers", tiers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(tier.name for tier in self.tiers)

    @property
    def shares(self) -> np.ndarray:
        return np.array([tier.share for tier in self.tiers])

    @classmethod
    def at_bits(cls, avg_bits: float) -> Fleet:
        """One tier, every device at the same all-in budget (for benchmarks at equal bytes)."""
        return cls((Tier(f"{avg_bits:g}-bit", 1.0, 1e6, 1e6, 1.0, 1.0, avg_bits=avg_bits),))

    @property
    def mean_bits(self) -> float | None:
        """Share-weighted avg_bits over the fleet; None when a tier is set in bytes."""
        if any(tier.avg_bits is None for tier in self.tiers):
            return None
        return math.fsum(tier.share * tier.avg_bits for tier in self.tiers)


# Our assumptions, not measurements: low-end to flagship phones, budgets as all-in bits per
# weight, bandwidths in bit/s (uplink slower than downlink), speed relative to the mid tier.
# The share-weighted precision is 3.25 bits.
DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier("low", 0.30, 1e6, 5e6, speed=0.5, availability=0.70, avg_bits=2.0),
    Tier("mid", 0.35, 3e6, 15e6, speed=1.0, availability=0.80, avg_bits=3.0),
    Tier("high", 0.25, 8e6, 40e6, speed=2.0, availability=0.90, avg_bits=4.0),
    Tier("flagship", 0.10, 20e6, 100e6, speed=4.0, availability=0.95, avg_bits=6.0),
)
DEFAULT_FLEET = Fleet(DEFAULT_TIERS)


def tier_counts(fleet: Fleet, num_devices: int) -> np.ndarray:
    """Devices per tier by the largest-remainder method: sums to num_devices, ties to the
    earlier tier."""
    num_devices = _count(num_devices, "num_devices")
    quotas = fleet.shares * num_devices
    counts = np.floor(quotas).astype(np.int64)
    missing = num_devices - int(counts.sum())
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:missing]] += 1
    return counts


def assign_tiers(fleet: Fleet, num_devices: int, seed: int) -> np.ndarray:
    """Tier index (int64) of each device: exact largest-remainder counts in a seeded order."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    counts = tier_counts(fleet, num_devices)
    labels = np.repeat(np.arange(len(fleet.tiers), dtype=np.int64), counts)
    return np.random.default_rng(seed).permutation(labels)


def budget_bytes(tier: Tier, fixed_bytes: int, weights: int) -> int:
    """The device's model budget in bytes: memory_bytes, or fixed_bytes + ceil(avg_bits *
    weights / 8) for `weights` quantizable weight elements.

    Scales (an fp16 one per channel, or shared per tensor) must fit inside this budget, so
    avg_bits is an all-in figure: a tier at 2.0 bits cannot hold every channel at 2 bits plus its
    scale.
    """
    fixed_bytes = _count(fixed_bytes, "fixed_bytes")
    weights = _count(weights, "weights")
    if tier.memory_bytes is not None:
        return tier.memory_bytes
    # The decimal as written (2.1 is 21/10, not the float just above it): exact, so the ceiling
    # never lands a byte high.
    return fixed_bytes + math.ceil(Fraction(repr(tier.avg_bits)) * weights / 8)


def transfer_seconds(num_bytes: float, bps: float) -> float:
    """Seconds to move num_bytes over a link of bps bit/s."""
    if not num_bytes >= 0:
        raise ConfigError(f"num_bytes must be >= 0, got {num_bytes}")
    if not bps > 0:
        raise ConfigError(f"bps must be > 0, got {bps}")
    return 8.0 * num_bytes / bps


def load_fleet(source: str | os.PathLike | Mapping) -> Fleet:
    """A fleet from a TOML file or a mapping ``{"tier": [{"name": ..., ...}, ...]}``."""
    if isinstance(source, Mapping):
        data = source
    else:
        try:
            with open(source, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read fleet file {os.fspath(source)!r}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"fleet file {os.fspath(source)!r} is not TOML: {exc}") from exc
    unknown = sorted(set(data) - {"tier"})
    if unknown:
        raise ConfigError(f"unknown fleet keys {unknown}; known: ['tier']")
    entries = data.get("tier")
    if isinstance(entries, Mapping) or not isinstance(entries, list | tuple) or not entries:
        raise ConfigError("a fleet needs a non-empty list of tiers under 'tier'")
    return Fleet(tuple(_tier_from_mapping(entry, index) for index, entry in enumerate(entries)))


def fleet_to_toml(fleet: Fleet) -> str:
    """TOML text that load_fleet reads back to the same fleet."""
    blocks = []
    for tier in fleet.tiers:
        lines = ["[[tier]]"]
        for field in fields(Tier):
            value = getattr(tier, field.name)
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, str) else repr(value)
            lines.append(f"{field.name} = {text}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


_REQUIRED = ("name", "share", "uplink_bps", "downlink_bps", "speed", "availability")
_KNOWN = tuple(field.name for field in fields(Tier))


def _tier_from_mapping(entry: object, index: int) -> Tier:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"tier {index} must be a table, got {type(entry).__name__}")
    label = repr(entry["name"]) if "name" in entry else f"#{index}"
    unknown = sorted(set(entry) - set(_KNOWN))
    if unknown:
        raise ConfigError(f"tier {label}: unknown keys {unknown}; known: {list(_KNOWN)}")
    missing = [key for key in _REQUIRED if key not in entry]
    if missing:
        raise ConfigError(f"tier {label}: missing keys {missing}")
    return Tier(**entry)
