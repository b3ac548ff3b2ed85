"""Backbone checkpoints: a state dict plus the plain description needed to rebuild the model.

Loading uses `torch.load(..., weights_only=True)`, which accepts tensors and plain containers only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from chord_fl.errors import DataError
from chord_fl.models import SequentialRecommender, build_backbone, describe


def save_checkpoint(path: str | Path, model: SequentialRecommender, meta: dict[str, Any]) -> Path:
    """Write atomically (temp file, then rename) so a crash never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A JSON round trip keeps only plain types, which weights-only loading accepts.
    plain_meta = json.loads(json.dumps(meta, default=str))
    payload = {"model": describe(model), "meta": plain_meta, "state_dict": model.state_dict()}
    partial = path.with_name(path.name + ".part")
    torch.save(payload, partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[SequentialRecommender, dict[str, Any]]:
    """Rebuild the model from `path`; returns it in eval mode with its metadata."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise DataError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or not {"model", "meta", "state_dict"} <= payload.keys():
        raise DataError(f"{path} is not a chord-fl checkpoint (missing model/meta/state_dict)")
    description = payload["model"]
    model = build_backbone(
        description["backbone"], description["num_items"], **description["config"]
    )
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not fit the described model: {exc}") from exc
    return model.eval(), payload["meta"]
