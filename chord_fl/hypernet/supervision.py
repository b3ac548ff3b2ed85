"""Sensitivity supervision: the hypernetworks learn to predict, from a profile alone, the expected
sensitivity of the user's window (`chord_fl.sensitivity.expected_sensitivity`), computed on the
cloud for training users' history windows.

The allocator only compares importance x error reduction per byte across channels of one device,
so a device's importances matter up to one common factor. The loss is therefore scale-free: both
vectors are divided by their mean over channels and compared in log space (a ratio of 2 costs the
same whether the channel is large or small), with a floor `LOG_FLOOR` below which channels are
too unimportant for their exact value to change an allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from chord_fl.hypernet.profile import encode_profiles
from chord_fl.models import SequentialRecommender
from chord_fl.quant.channels import ChannelMap
from chord_fl.sensitivity import expected_sensitivity, normalised

LOG_FLOOR = 1e-3  # relative to a device's mean channel sensitivity


@dataclass
class SensitivitySet:
    profiles: torch.Tensor  # (N, hidden) the windows' profiles, as devices would upload them
    targets: torch.Tensor  # (N, C) expected sensitivity, each row divided by its mean

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def prior(self) -> np.ndarray:
        """(C,) the cloud-wide sensitivity: the mean of the normalised rows (every window
        counts the same, however sharp its own distribution)."""
        return self.targets.double().mean(0).numpy()


def training_windows(
    histories: list[np.ndarray], users: np.ndarray, positions: int
) -> list[np.ndarray]:
    """The last `positions` prefixes of each user's history (at least one item each)."""
    windows = []
    for user in users:
        history = histories[user]
        for cut in range(positions):
            if len(history) - cut >= 1:
                windows.append(history[: len(history) - cut])
    return windows


def sensitivity_set(
    frozen: SequentialRecommender,
    channels: ChannelMap,
    windows: list[np.ndarray],
    samples: int,
    seed: int,
    profile_window: int | None = None,
    progress: bool = False,
    temperature: float = 1.0,
) -> SensitivitySet:
    """Profiles and normalised expected sensitivities of `windows` (targets at `temperature`)."""
    rows = []
    chunks = range(0, len(windows), 64)
    for start in tqdm(chunks, desc="sensitivity", unit="chunk", disable=not progress):
        chunk = windows[start : start + 64]
        rows.append(
            expected_sensitivity(frozen, channels, chunk, samples, seed + start, temperature)
        )
    targets = normalised(np.concatenate(rows) if rows else np.empty((0, channels.channels)))
    profiles = encode_profiles(frozen, windows, profile_window)
    return SensitivitySet(torch.from_numpy(profiles), torch.from_numpy(targets).float())


def log_ratio_loss(importance: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared log ratio of mean-normalised (B, C) importances to (B, C) targets (already
    normalised)."""
    scaled = importance / importance.mean(dim=1, keepdim=True).clamp_min(1e-30)
    return ((torch.log(scaled + LOG_FLOOR) - torch.log(targets + LOG_FLOOR)) ** 2).mean()
