"""What the cloud computes for a batch of devices: byte budgets, channel sensitivity, codes, and the
accuracy of a set of codes on the devices' targets."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from chord_fl.evaluation import target_ranks
from chord_fl.metrics import per_user_metrics
from chord_fl.models import SequentialRecommender
from chord_fl.quant.allocation import allocate
from chord_fl.quant.budget import channel_budget
from chord_fl.quant.channels import ChannelMap
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.tiers import Fleet, budget_bytes


def tier_budgets(fleet: Fleet, channels: ChannelMap) -> np.ndarray:
    """(T,) whole-model byte budget of each tier for this model (the same whatever its scales)."""
    return np.array([budget_bytes(t, channels.base_bytes, channels.weights) for t in fleet.tiers])


def issue_codes(prepared: PreparedModel, importance: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """(D, C) codes for devices with (D, C) channel importance and (D,) whole-model budgets."""
    left = channel_budget(prepared.channels, budgets)
    return allocate(np.asarray(importance, dtype=np.float64), prepared.errors, prepared.cost, left)


def evaluate_codes(
    prepared: PreparedModel,
    windows: list[np.ndarray],
    targets: np.ndarray,
    codes: np.ndarray | None,
    negatives: np.ndarray | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-device metrics of each device's quantized model (codes None: the frozen fp32 model),
    by protocol: "full" always, "sampled" when `negatives` are given.

    Devices sharing a code vector (uniform and global strategies) are scored in one batch.
    """
    if codes is None:
        groups = [(prepared.frozen, np.arange(len(windows)))]
    else:
        unique, inverse = np.unique(codes, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        groups = (
            (prepared.dequantized(row, fresh_model=False), np.flatnonzero(inverse == i))
            for i, row in enumerate(unique)
        )
    return evaluate_models(groups, windows, targets, negatives)


def evaluate_models(
    groups: Iterable[tuple[SequentialRecommender, np.ndarray]],
    windows: list[np.ndarray],
    targets: np.ndarray,
    negatives: np.ndarray | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-device metrics when each (model, member devices) group scores its members' targets;
    a group's model is used only while its members are scored, so a generator may reuse one."""
    targets = np.asarray(targets)
    protocols = {"full": None} if negatives is None else {"full": None, "sampled": negatives}
    ranks = {protocol: np.empty(len(windows), dtype=np.int64) for protocol in protocols}
    for model, members in groups:
        member_windows = [windows[i] for i in members]
        for protocol, candidates in protocols.items():
            ranks[protocol][members] = target_ranks(
                model,
                member_windows,
                targets[members],
                None if candidates is None else candidates[members],
            )
    return {protocol: per_user_metrics(r) for protocol, r in ranks.items()}
