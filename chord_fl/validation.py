"""The validation devices that every cloud-side choice is scored on, and the choice of how sharply
importances are allocated.

Validation devices are training users scored on their validation targets at the budgets of the
fleet's tiers; test targets are never seen. The importance exponent gamma raises every importance
to gamma before the greedy allocator runs: below 1 it narrows their spread, so that bytes go less
exclusively to the channels an importance ranks first. Sensitivities span many orders of
magnitude (an item row's expected sensitivity scales with the model's probability of the item):
on MovieLens-1M validation targets the hypernetworks' untrained start, allocated as it is, lost
to the plain 3-bit uniform model under both protocols, and its fourth root beat it under both
(README, "Importance exponent").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from chord_fl.cloud import evaluate_codes, issue_codes, tier_budgets
from chord_fl.data.split import VALIDATION, RoundSplit
from chord_fl.hypernet.networks import TINY, ChordHyperNet
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.selection import Scores, kept_epoch, selection_negatives
from chord_fl.tiers import Fleet, assign_tiers

EXPONENT_STREAM = 0x657870  # "exp": the random stream of the exponent's validation users
DECISION_STREAM = 0x646563  # "dec": the random stream of the tier decisions' users


@dataclass(frozen=True)
class ValidationDevices:
    users: np.ndarray
    windows: list[np.ndarray]
    targets: np.ndarray
    tiers: np.ndarray  # each device's tier, an index into the fleet's tiers
    tier_budgets: np.ndarray  # bytes of each of the fleet's tiers
    negatives: np.ndarray | None
    profiles: np.ndarray  # (users, hidden)

    @property
    def budgets(self) -> np.ndarray:
        return self.tier_budgets[self.tiers]

    def score(self, prepared: PreparedModel, importance: np.ndarray, metric: str) -> Scores:
        """Per-user `metric` by protocol of the codes that (users, C) `importance` gets."""
        codes = issue_codes(prepared, importance, self.budgets)
        metrics = evaluate_codes(prepared, self.windows, self.targets, codes, self.negatives)
        return {protocol: values[metric] for protocol, values in metrics.items()}

    def score_network(self, prepared: PreparedModel, net: ChordHyperNet, metric: str) -> Scores:
        """`score` of the importances `net` gives these devices' profiles."""
        with torch.no_grad():
            profiles = torch.from_numpy(self.profiles).to(net.exponent.device)
            importance = net(profiles).cpu().numpy()
        return self.score(prepared, importance, metric)

    def at_every_tier(self) -> ValidationDevices:
        """The same users, each at every tier of the fleet, tier-major: the devices of tier t are
        rows t * len(users) to (t + 1) * len(users), in the users' order."""
        tiers, count = len(self.tier_budgets), len(self.users)
        rows = np.tile(np.arange(count), tiers)
        return ValidationDevices(
            users=self.users[rows],
            windows=[self.windows[row] for row in rows],
            targets=self.targets[rows],
            tiers=np.repeat(np.arange(tiers), count),
            tier_budgets=self.tier_budgets,
            negatives=None if self.negatives is None else self.negatives[rows],
            profiles=self.profiles[rows],
        )


def validation_devices(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    count: int,
    rng: np.random.Generator,
    seed: int,
    profile_window: int | None = None,
) -> ValidationDevices:
    """`count` users drawn by `rng`, each at the budget of the tier `seed` assigns it."""
    users = np.sort(rng.permutation(len(split))[:count])
    return devices_of(prepared, split, fleet, users, seed, profile_window)


def devices_of(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    users: np.ndarray,
    seed: int,
    profile_window: int | None = None,
    stage: int = VALIDATION,
) -> ValidationDevices:
    """`users` (sorted) on their `stage` targets (validation ones unless a benchmark asks for
    others), each at its tier's budget (`seed`'s tiers)."""
    windows = [split.users[i].window(stage) for i in users]
    return ValidationDevices(
        users=users,
        windows=windows,
        targets=split.targets(stage)[users],
        tiers=assign_tiers(fleet, len(split), seed)[users],
        tier_budgets=tier_budgets(fleet, prepared.channels),
        negatives=selection_negatives(split, users, seed),
        profiles=encode_profiles(prepared.frozen, windows, profile_window),
    )


def exponent_devices(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    count: int,
    seed: int,
    profile_window: int | None = None,
) -> ValidationDevices:
    """The validation devices the importance exponent is chosen on: more than an epoch's, since
    one scalar for the whole fleet is cheap to score and its gains are diluted by the fleet's
    wider tiers; drawn from a stream of their own so that the training run's own draws stay as
    they were."""
    rng = np.random.default_rng([seed, EXPONENT_STREAM])
    return validation_devices(prepared, split, fleet, count, rng, seed, profile_window)


def decision_devices(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    validation: ValidationDevices,
    seed: int,
    profile_window: int | None = None,
) -> ValidationDevices:
    """The devices on which a trained epoch is finally weighed against its start: as many users
    as `validation` holds, drawn from those it does not, so that the epoch's choice (the best of
    many on `validation`, partly its luck) is judged on users it never saw. On MovieLens-1M the
    best of 12 epochs gained 0.0217 NDCG@10 at the 2-bit tier on the users that chose it and
    0.0125 on the others, as on test targets (README, "The tier guard at every tier"). Where the
    split has too few other users (MovieLens-100K: every user validates), `validation` itself."""
    others = np.setdiff1d(np.arange(len(split)), validation.users)
    if len(others) < len(validation.users):
        return validation
    rng = np.random.default_rng([seed, DECISION_STREAM])
    chosen = np.sort(rng.permutation(others)[: len(validation.users)])
    return devices_of(prepared, split, fleet, chosen, seed, profile_window)


def sharpened(importance: np.ndarray, exponent: float) -> np.ndarray:
    """`importance` ** `exponent` (floored at TINY first when the exponent is not 1)."""
    if exponent == 1:
        return importance
    return np.maximum(importance, TINY) ** exponent


def choose_exponent(
    score: Callable[[float], Scores], exponents: Sequence[float], guard: bool = True
) -> float:
    """The exponent with the highest mean validation `score` under full ranking; with `guard`, one
    that is lower in mean under the sampled protocol than the first (the reference) loses to it.
    A single exponent is returned unscored. Unlike a trained epoch it needs no margin over the
    reference: it is one scalar of a handful, scored on many users, and a margin would favour
    exponent 1, which leaves comparators such as `global` weaker than they can be (on MovieLens-1M
    validation targets `global` at 1/2 is 0.018 NDCG@10 above 1 at 2.5 bits:
    `benchmarks/exponents.py`)."""
    if len(exponents) == 1:
        return exponents[0]
    scores = [score(exponent) for exponent in exponents]
    return exponents[kept_epoch(scores, margin=0.0, guard=guard)]
