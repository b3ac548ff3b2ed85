"""Backbone checkpoints: a state dict plus the plain description needed to rebuild the model.

Loading uses `torch.load(..., weights_only=True)`, which accepts tensors and plain containers only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from chord_fl.errors import DataError
from chord_fl.hypernet.networks import ChordHyperNet, HyperNetConfig
from chord_fl.hypernet.tiered import TieredHyperNet
from chord_fl.models import SequentialRecommender, build_backbone, describe
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.tiers import Fleet, fleet_to_toml


def _save(path: str | Path, description: dict, module: torch.nn.Module, meta: dict) -> Path:
    """Write atomically (temp file, then rename) so a crash never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A JSON round trip keeps only plain types, which weights-only loading accepts.
    plain = json.loads(json.dumps({"model": description, "meta": meta}, default=str))
    partial = path.with_name(path.name + ".part")
    torch.save({**plain, "state_dict": module.state_dict()}, partial)
    partial.replace(path)
    return path


def _load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise DataError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or not {"model", "meta", "state_dict"} <= payload.keys():
        raise DataError(f"{path} is not a chord-fl checkpoint (missing model/meta/state_dict)")
    return payload


def _restore(path: str | Path, module: torch.nn.Module, state_dict: dict) -> None:
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not fit the described model: {exc}") from exc


def save_checkpoint(path: str | Path, model: SequentialRecommender, meta: dict[str, Any]) -> Path:
    return _save(path, describe(model), model, meta)


def load_checkpoint(path: str | Path) -> tuple[SequentialRecommender, dict[str, Any]]:
    """Rebuild the backbone from `path`; returns it in eval mode with its metadata."""
    payload = _load(path)
    description = payload["model"]
    model = build_backbone(
        description["backbone"], description["num_items"], **description["config"]
    )
    _restore(path, model, payload["state_dict"])
    return model.eval(), payload["meta"]


def save_hypernet(path: str | Path, net: TieredHyperNet, meta: dict[str, Any]) -> Path:
    description = {"hypernet": asdict(net.start.config), "trained": asdict(net.trained.config)}
    return _save(path, description, net, meta)


def load_hypernet(
    path: str | Path, prepared: PreparedModel
) -> tuple[TieredHyperNet, dict[str, Any]]:
    """Rebuild hypernetworks for `prepared`'s frozen backbone (the one they were trained on)."""
    payload = _load(path)
    description = payload["model"]
    config = HyperNetConfig(**description["hypernet"])
    frozen = prepared.frozen
    state = payload["state_dict"]
    if "tier_bytes" not in state:
        # Saved before networks were chosen per tier: one network serves every budget.
        single = ChordHyperNet(frozen, prepared.channels, frozen.hidden_size, config)
        state.setdefault("exponent", torch.tensor(1.0))  # and before the importance exponent
        _restore(path, single, state)
        return TieredHyperNet(single, single, [0], [False]).eval(), payload["meta"]
    configs = (config, HyperNetConfig(**description.get("trained", description["hypernet"])))
    networks = [
        ChordHyperNet(frozen, prepared.channels, frozen.hidden_size, each) for each in configs
    ]
    tiers = len(state["tier_bytes"])
    net = TieredHyperNet(*networks, [0] * tiers, [False] * tiers)
    _restore(path, net, state)
    return net.eval(), payload["meta"]


def hypernet_settings(
    backbone: str, quantizer: dict[str, Any], recipes: Sequence[Any], fleet: Fleet, training: Any
) -> dict[str, Any]:
    """Everything that shapes trained hypernetworks, as plain data: the frozen backbone's identity
    (`Setup.backbone_identity`), its quantizer (`Setup.quantizer`), the network, the fleet it was
    trained for, the training config."""
    return {
        "backbone": backbone,
        "quantizer": quantizer,
        "recipes": [asdict(recipe) for recipe in recipes],
        "fleet": fleet_to_toml(fleet),
        "training": asdict(training),
    }


def hypernet_cache_path(directory: str | Path, stem: str, settings: dict[str, Any]) -> Path:
    """Where hypernetworks trained under `settings` are cached: the name carries a hash of every
    setting, so no command reuses networks trained under other settings (the settings are also
    recorded inside the file)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(directory) / f"{stem}-{digest}.pt"
