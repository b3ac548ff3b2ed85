"""One training epoch of the hypernetworks, for each kind of objective: sensitivity supervision
(fit each training window's expected sensitivity) and the relaxations ("next-item", "distill":
the backbone runs on weights quantized under the relaxed allocation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from chord_fl.hypernet.networks import ChordHyperNet
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.relax import Relaxation
from chord_fl.hypernet.supervision import SensitivitySet, log_ratio_loss
from chord_fl.quant.budget import channel_budget
from chord_fl.tiers import Fleet

if TYPE_CHECKING:  # the training config imports these epochs
    from chord_fl.hypernet.training import HyperTrainConfig


def training_examples(
    histories: list[np.ndarray], users: np.ndarray, positions: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
    windows, targets = [], []
    for user in users:
        history = histories[user]
        end = int(rng.integers(max(1, len(history) - positions), len(history)))
        windows.append(history[:end])
        targets.append(history[end])
    return windows, np.asarray(targets, dtype=np.int64)


def supervised_epoch(
    hypernet: ChordHyperNet,
    optimizer: torch.optim.Optimizer,
    supervision: SensitivitySet,
    batch_size: int,
    rng: np.random.Generator,
) -> list[float]:
    losses = []
    device = hypernet.exponent.device
    order = torch.from_numpy(rng.permutation(len(supervision)))
    for begin in range(0, len(order), batch_size):
        rows = order[begin : begin + batch_size]
        targets = supervision.targets[rows].to(device) ** hypernet.exponent  # fit what is allocated
        targets = targets / targets.mean(dim=1, keepdim=True).clamp_min(1e-30)
        loss = log_ratio_loss(hypernet(supervision.profiles[rows].to(device)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@dataclass
class RelaxedEpoch:
    """One epoch of the relaxation objectives ("next-item", "distill") on fresh examples."""

    relaxation: Relaxation
    histories: list[np.ndarray]
    fleet: Fleet
    budgets: np.ndarray
    config: HyperTrainConfig
    window: int | None

    def __call__(
        self, hypernet: ChordHyperNet, optimizer: torch.optim.Optimizer, rng: np.random.Generator
    ) -> list[float]:
        config, prepared = self.config, self.relaxation.prepared
        frozen = self.relaxation.frozen
        shares = np.array([tier.share for tier in self.fleet.tiers], dtype=np.float64)
        shares /= shares.sum()
        order = rng.permutation(len(self.histories))[: config.users_per_epoch]
        losses = []
        for begin in range(0, len(order), config.batch_users):
            users = order[begin : begin + config.batch_users]
            windows, targets = training_examples(self.histories, users, config.positions, rng)
            profiles = torch.from_numpy(encode_profiles(frozen, windows, self.window))
            profiles = profiles.to(frozen.device)
            tiers = rng.choice(len(shares), size=len(users), p=shares)
            loss = self.relaxation.loss(
                hypernet(profiles),
                channel_budget(prepared.channels, self.budgets[tiers]),
                frozen.pad_windows(windows),
                torch.from_numpy(targets).to(frozen.device),
                config,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses
