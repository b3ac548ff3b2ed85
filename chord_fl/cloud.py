"""What the cloud computes for a batch of devices: byte budgets, channel sensitivity, codes, and the
accuracy of a set of codes on the devices' targets."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from chord_fl.data.split import pad_left
from chord_fl.devices import Fleet, budget_bytes
from chord_fl.evaluation import target_ranks
from chord_fl.metrics import per_user_metrics
from chord_fl.models import SequentialRecommender
from chord_fl.quant.allocation import allocate
from chord_fl.quant.channels import ChannelMap, channel_rows
from chord_fl.quant.quantizer import PreparedModel


def tier_budgets(fleet: Fleet, channels: ChannelMap) -> np.ndarray:
    """(T,) whole-model byte budget of each tier for this model."""
    return np.array([budget_bytes(t, channels.fixed_bytes, channels.weights) for t in fleet.tiers])


def issue_codes(prepared: PreparedModel, importance: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """(D, C) codes for devices with (D, C) channel importance and (D,) whole-model budgets."""
    channel_budget = np.asarray(budgets, dtype=np.float64) - prepared.channels.fixed_bytes
    cost = prepared.channels.cost(prepared.table)
    return allocate(np.asarray(importance, dtype=np.float64), prepared.errors, cost, channel_budget)


def channel_sensitivity(
    model: SequentialRecommender,
    channels: ChannelMap,
    windows: list[np.ndarray],
    targets: np.ndarray,
) -> np.ndarray:
    """(U, C) squared gradient of each user's next-item loss, summed over each channel's weights
    (a diagonal Fisher estimate, as HAWQ-style methods use)."""
    params = dict(model.named_parameters())
    weights = [params[group.name] for group in channels.groups]
    model.eval()
    out = np.empty((len(windows), channels.channels))
    for row, (window, target) in enumerate(zip(windows, targets, strict=True)):
        seqs = torch.from_numpy(pad_left([window], model.max_len))
        loss = F.cross_entropy(model.full_scores(seqs), torch.tensor([int(target)]))
        grads = torch.autograd.grad(loss, weights)
        out[row] = torch.cat(
            [
                (channel_rows(grad, group.channel_axis) ** 2).sum(1)
                for grad, group in zip(grads, channels.groups, strict=True)
            ]
        ).numpy()
    return out


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
    targets = np.asarray(targets)
    protocols = {"full": None} if negatives is None else {"full": None, "sampled": negatives}
    ranks = {protocol: np.empty(len(windows), dtype=np.int64) for protocol in protocols}
    if codes is None:
        groups = [(prepared.frozen, np.arange(len(windows)))]
    else:
        unique, inverse = np.unique(codes, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        groups = (
            (prepared.quantize(row, fresh_model=False).model, np.flatnonzero(inverse == i))
            for i, row in enumerate(unique)
        )
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
