"""Choosing a trained epoch over the untrained start by their per-user validation scores.

Each candidate's scores are a dict by protocol ("full": full ranking, "sampled": against sampled
negatives) of per-user arrays on the same validation users. A validation NDCG's standard error is
near the differences between epochs, so the highest of many candidates is partly the luckiest
noise: a candidate replaces a reference only when it beats it under full ranking by a margin in
paired standard errors, and without a lower mean under the sampled protocol (a gain in one that is
a loss in the other has not been shown to carry to new targets). Hypernetworks serve a fleet of
tiers: the final choice scores the same users at every tier, so that each tier's change is
measured on all of them, and serves the candidate to the tiers where it does not lose and that
are narrower than every tier where it does (`tier_choices`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from chord_fl.data.split import RoundSplit
from chord_fl.metrics import mean_and_standard_error
from chord_fl.train import evaluation_negatives

Scores = Mapping[str, np.ndarray]
SELECTION_NEGATIVES = 100  # the sampled protocol's negatives per validation target


def improves(candidate: np.ndarray, kept: np.ndarray, margin: float) -> bool:
    """Whether per-user scores `candidate` beat `kept` (the same users): a positive mean paired
    difference of at least `margin` standard errors."""
    mean, error = mean_and_standard_error(np.asarray(candidate) - np.asarray(kept))
    return bool(mean > 0 and mean >= margin * (error or 0.0))


def beats(candidate: Scores, kept: Scores, margin: float, guard: bool = True) -> bool:
    """`improves` under full ranking, and (with `guard`) a mean under the sampled protocol, where
    both have it, at least the kept one's."""
    if not improves(candidate["full"], kept["full"], margin):
        return False
    sampled = _guarded(candidate, kept, guard)
    return not (sampled and np.mean(candidate["sampled"]) < np.mean(kept["sampled"]))


def _guarded(candidate: Scores, kept: Scores, guard: bool) -> bool:
    """Whether the sampled protocol is checked: with `guard`, where both have its scores."""
    return guard and "sampled" in candidate and "sampled" in kept


def tier_differences(
    candidate: Scores, kept: Scores, tiers: int, protocol: str = "full"
) -> list[tuple[float, float]]:
    """The mean paired difference under `protocol` and its standard error at each tier, for
    scores of the same users at every tier, tier-major (`ValidationDevices.at_every_tier`)."""
    pairs = zip(
        candidate[protocol].reshape(tiers, -1), kept[protocol].reshape(tiers, -1), strict=True
    )
    return [mean_and_standard_error(c - k) for c, k in pairs]


def tier_choices(
    candidate: Scores,
    kept: Scores,
    shares: np.ndarray,
    margin: float,
    guard: bool = True,
    budgets: np.ndarray | None = None,
) -> list[bool]:
    """For scores of the same users at every tier (tier-major): the tiers to serve the candidate.
    Every tier where its mean is not lower by `margin` paired standard errors or more, under full
    ranking or (with `guard`) the sampled protocol, and (given the tiers' `budgets`) whose budget
    is below that of every tier where it is lower by that margin, provided that over those tiers
    (each user's share-weighted mean) it `beats` the kept scores; else none.

    A network serves a fleet whose tiers it can help and hurt at once: on MovieLens-1M SASRec's
    trained relaxation gained 0.022 NDCG@10 at the 2-bit tier and lost 0.019 at the 3-bit tier
    under the sampled protocol (z +4.5 and -4.0; on test targets +0.013 and -0.012 under full
    ranking; README, "The tier guard at every tier"), so a tier where it loses keeps what it had
    (`chord_fl.hypernet.tiered`). Asking each tier to win on its own loses real gains too small
    to show at one tier on one seed's 2,000 users (Caser's 3-bit tier: +0.0049 over the
    supervised start on test, z 3.5 over 3 seeds of 6,040 users, yet that rule served it the
    start in seed 0), and a tier where nothing changes (the widest, near fp32) must not decide
    by its noise either way. But a network that loses at one budget is not trusted at wider
    ones, where its losses shrink below what validation can see: SASRec's relaxation, served
    above the 3-bit tier it lost at, cost 0.0016 at 4 bits on test (z -2.4 over 3 seeds of 6,040
    users) while its decision users showed nothing (README, "The sweep's ends")."""
    shares = np.asarray(shares, dtype=np.float64)
    tiers = len(shares)
    protocols = ["full"] + (["sampled"] if _guarded(candidate, kept, guard) else [])
    losses = [tier_differences(candidate, kept, tiers, protocol) for protocol in protocols]
    holds = np.array(
        [
            not any(mean < 0 and mean <= -margin * (error or 0.0) for mean, error in by_tier)
            for by_tier in zip(*losses, strict=True)
        ]
    )
    if budgets is not None and not holds.all():
        budgets = np.asarray(budgets)
        holds &= budgets < budgets[~holds].min()
    weights = shares * holds
    if not weights.sum():
        return [False] * tiers

    def served(scores: Scores) -> Scores:
        return {p: weights @ v.reshape(tiers, -1) / weights.sum() for p, v in scores.items()}

    wins = beats(served(candidate), served(kept), margin, guard)
    return [bool(hold and wins) for hold in holds]


def best_epoch(scores: Sequence[Scores]) -> int:
    """The first epoch with the highest mean full-ranking score (epoch 0: the untrained start)."""
    return int(np.argmax([np.mean(epoch["full"]) for epoch in scores]))


def best_trained_epoch(scores: Sequence[Scores]) -> int:
    """The first trained epoch (1 on) with the highest mean full-ranking score; 0 before any."""
    return 1 + best_epoch(scores[1:]) if len(scores) > 1 else 0


def patience_spent(scores: Sequence[Scores], patience: int) -> bool:
    """Whether `patience` epochs have passed without a higher mean score than the best trained
    epoch's: training stops then, not while a gradual climb goes on whose single steps are too
    small to be significant. The start does not count: from a strong start, training can dip
    below it for several epochs before it climbs past (README, "Stopping")."""
    return len(scores) - 1 - best_trained_epoch(scores) >= patience


def kept_epoch(scores: Sequence[Scores], margin: float, guard: bool = True) -> int:
    """The best trained epoch if it `beats` the start, else the start."""
    best = best_trained_epoch(scores)
    return best if best and beats(scores[best], scores[0], margin, guard) else 0


def selection_negatives(split: RoundSplit, users: np.ndarray, seed: int) -> np.ndarray | None:
    """(len(users), N) sampled-protocol negatives of the validation `users`, never in their
    sequences: the evaluation's own draw for the split and seed (`evaluation_negatives`, the
    same negatives every benchmark scores), N = 100 or as many as the user with the fewest unseen
    items allows (None where one has seen the whole catalogue). Drawn for every user, once per
    training run: a second's work beside minutes of training."""
    unseen = min(split.num_items - len(np.unique(user.items)) for user in split.users)
    count = min(SELECTION_NEGATIVES, unseen)
    return evaluation_negatives(split, count, seed)[users] if count > 0 else None


def mean_scores(
    scores: dict[str, np.ndarray], groups: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """A history row's validation scores: "validation" (full ranking, what selects), the sampled
    protocol's, and the full-ranking mean of each of `groups` (name: a mask of users), such as the
    fleet's tiers, under "validation_tier_<name>"."""
    return {
        "validation": float(scores["full"].mean()),
        **{
            f"validation_{protocol}": float(values.mean())
            for protocol, values in scores.items()
            if protocol != "full"
        },
        **{
            f"validation_tier_{name}": float(scores["full"][members].mean())
            for name, members in (groups or {}).items()
            if members.any()
        },
    }
