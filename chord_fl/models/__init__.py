"""Backbones behind one interface, built by name."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import torch

from chord_fl.errors import ConfigError
from chord_fl.models.base import LOSSES, QuantizableTensor, SequentialRecommender
from chord_fl.models.caser import Caser, CaserConfig
from chord_fl.models.popularity import Popularity
from chord_fl.models.sasrec import SASRec, SASRecConfig

BACKBONES: dict[str, tuple[type[SequentialRecommender], type]] = {
    "sasrec": (SASRec, SASRecConfig),
    "caser": (Caser, CaserConfig),
}


def backbone_config(name: str, **options: Any) -> SASRecConfig | CaserConfig:
    """The config dataclass of backbone `name` with `options` overriding its defaults."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    config_type = BACKBONES[name][1]
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown {name} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return config_type(**options)


def build_backbone(name: str, num_items: int, **options: Any) -> SequentialRecommender:
    config = backbone_config(name, **options)
    return BACKBONES[name][0](num_items, config)


def seeded_backbone(name: str, num_items: int, seed: int, **options: Any) -> SequentialRecommender:
    """A randomly initialised backbone that every process regenerates bit-identically from `seed`
    (with init = "random" devices rebuild the weights and download nothing: docs/design.md, 3)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(name, num_items, **options)


def describe(model: SequentialRecommender) -> dict[str, Any]:
    """What is needed to rebuild `model`'s architecture: its name, catalogue size and config."""
    for name, (model_type, _) in BACKBONES.items():
        if type(model) is model_type:
            return {
                "backbone": name,
                "num_items": model.num_items,
                "config": asdict(model.config),
            }
    raise ConfigError(f"{type(model).__name__} is not a registered backbone")


__all__ = [
    "BACKBONES",
    "LOSSES",
    "Caser",
    "CaserConfig",
    "Popularity",
    "QuantizableTensor",
    "SASRec",
    "SASRecConfig",
    "SequentialRecommender",
    "backbone_config",
    "build_backbone",
    "describe",
    "seeded_backbone",
]
