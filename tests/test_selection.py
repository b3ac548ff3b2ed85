import numpy as np

from chord_fl.data import make_split, synthetic_dataset
from chord_fl.selection import (
    Scores,
    beats,
    best_epoch,
    best_trained_epoch,
    improves,
    kept_epoch,
    mean_scores,
    patience_spent,
    selection_negatives,
    tier_choices,
    tier_differences,
)

KEPT = np.random.default_rng(0).random(400)
NOISE = np.tile([0.1, -0.1], 200)  # mean 0, standard error of the mean 0.005


def test_improves_asks_for_a_paired_margin_in_standard_errors():
    assert improves(KEPT + 0.02 + NOISE, KEPT, margin=2.0)  # z about 4
    assert not improves(KEPT + 0.005 + NOISE, KEPT, margin=2.0)  # z about 1
    assert improves(KEPT + 0.005 + NOISE, KEPT, margin=0.0)  # any gain
    assert not improves(KEPT - 0.02 + NOISE, KEPT, margin=0.0)
    assert not improves(KEPT, KEPT, margin=0.0)


def scores(gain: float, sampled_gain: float | None = None) -> dict[str, np.ndarray]:
    """One candidate's validation scores: the start's plus `gain` (full ranking) and
    `sampled_gain` (the sampled protocol; default: the same gain)."""
    sampled = gain if sampled_gain is None else sampled_gain
    return {"full": KEPT + gain + NOISE, "sampled": KEPT + sampled + NOISE}


def climb(*gains: float) -> list[dict[str, np.ndarray]]:
    """Epochs 0, 1, ...: the start, then the start plus each gain."""
    return [{"full": KEPT, "sampled": KEPT}] + [scores(gain) for gain in gains]


def test_a_gradual_climb_is_followed_until_it_is_significant():
    # No epoch beats the start by two standard errors until the fifth; each beats the one before.
    history = climb(0.001, 0.002, 0.003, 0.004, 0.02)
    assert not any(patience_spent(history[: n + 1], patience=4) for n in range(len(history)))
    assert kept_epoch(history, margin=2.0) == 5


def test_patience_counts_from_the_highest_mean_score():
    history = climb(0.02, 0.01, 0.01, 0.01)
    assert best_epoch(history) == 1
    assert not patience_spent(history, patience=4)
    assert patience_spent(history + climb(0.015)[1:], patience=4)
    assert not patience_spent(history + climb(0.03)[1:], patience=4)


def test_a_dip_below_the_start_does_not_stop_training_while_trained_epochs_improve():
    # Below the start for five epochs, each a little higher than the one before, then past it.
    dip = climb(-0.02, -0.015, -0.012, -0.008, -0.004, 0.001, 0.02)
    assert best_epoch(dip[:6]) == 0 and best_trained_epoch(dip[:6]) == 5
    assert not any(patience_spent(dip[: n + 1], patience=4) for n in range(len(dip)))
    assert kept_epoch(dip, margin=2.0) == 7
    # Trained epochs that stop improving spend the patience, whatever the start scored.
    stuck = climb(-0.02, -0.03, -0.03, -0.03, -0.03)
    assert patience_spent(stuck, patience=4) and kept_epoch(stuck, margin=0.0) == 0


def test_the_start_is_kept_unless_the_best_epoch_beats_it_by_the_margin():
    assert kept_epoch(climb(0.004, 0.005, 0.003), margin=2.0) == 0
    assert kept_epoch(climb(0.004, 0.005, 0.003), margin=0.0) == 2
    assert kept_epoch(climb(-0.01, -0.02), margin=0.0) == 0
    # The best epoch is judged, not the first epoch that would pass the margin.
    assert kept_epoch(climb(0.02, 0.03, 0.025), margin=2.0) == 2


def test_a_full_ranking_gain_that_is_a_sampled_loss_does_not_win():
    start = climb()[0]
    assert beats(scores(0.03, 0.0), start, margin=2.0)
    assert not beats(scores(0.03, -0.005), start, margin=2.0)
    assert kept_epoch([start, scores(0.03, -0.005)], margin=2.0) == 0
    assert kept_epoch([start, scores(0.03, -0.005)], margin=2.0, guard=False) == 1
    assert beats({"full": KEPT + 0.03 + NOISE}, {"full": KEPT}, margin=2.0)  # no sampled scores


def every_tier(*gains: float, sampled_gains: tuple[float, ...] | None = None) -> Scores:
    """The same 200 users at one tier per gain, tier-major: the start's scores plus each tier's
    gain and noise, by protocol (sampled: `sampled_gains`, default the same gains)."""
    users, noise = KEPT[:200], NOISE[:200]

    def at(tier_gains: tuple[float, ...]) -> np.ndarray:
        return np.concatenate([users + gain + noise for gain in tier_gains])

    return {"full": at(gains), "sampled": at(gains if sampled_gains is None else sampled_gains)}


START = {"full": np.tile(KEPT[:200], 2), "sampled": np.tile(KEPT[:200], 2)}  # two tiers


HALVES = np.array([0.5, 0.5])


def test_a_gain_bought_with_a_loss_at_one_tier_is_not_served_at_that_tier():
    # Each tier's paired standard error is 0.007: -0.02 at the second tier is z = -2.8.
    at_one_tier = every_tier(0.06, -0.02)
    assert beats(at_one_tier, START, margin=2.0)  # all devices pooled
    assert tier_choices(at_one_tier, START, HALVES, margin=2.0) == [True, False]
    # A loss within noise (z = -1.4) does not keep a tier from the fleet's gain.
    assert tier_choices(every_tier(0.06, -0.01), START, HALVES, margin=2.0) == [True, True]


def test_a_tier_where_nothing_changes_goes_with_the_fleet():
    flat_at_one = every_tier(0.06, -0.005)  # z = -0.7 at the second tier
    assert tier_choices(flat_at_one, START, HALVES, margin=2.0) == [True, True]
    # ...but a gain at a tier with a tenth of the fleet is not a fleet's gain.
    assert tier_choices(flat_at_one, START, np.array([0.1, 0.9]), margin=2.0) == [False, False]
    # Nor is a gain too small to show anywhere.
    assert tier_choices(every_tier(0.005, 0.005), START, HALVES, margin=2.0) == [False, False]


def test_a_loss_under_the_sampled_protocol_keeps_that_tier_at_the_start():
    # Full ranking gains at one tier, level at the other; the sampled protocol loses there (z -4).
    sampled_loss = every_tier(0.03, 0.0, sampled_gains=(0.05, -0.03))
    assert tier_choices(sampled_loss, START, HALVES, margin=2.0) == [True, False]
    assert tier_choices(sampled_loss, START, HALVES, margin=2.0, guard=False) == [True, True]
    lower_sampled = every_tier(0.06, -0.005, sampled_gains=(-0.001, -0.001))
    assert tier_choices(lower_sampled, START, HALVES, margin=2.0) == [False, False]


def test_a_tier_wider_than_one_where_the_candidate_loses_keeps_the_start():
    # Tiers listed widest first: 4, 2 and 3 bits' bytes; a gain at 2 bits, a loss (z -2.8) at
    # 3 bits, a gain within noise (z 0.7) at 4 bits.
    gains = every_tier(0.005, 0.06, -0.02)
    start = {protocol: np.tile(KEPT[:200], 3) for protocol in ("full", "sampled")}
    thirds = np.full(3, 1 / 3)
    assert tier_choices(gains, start, thirds, margin=2.0) == [True, True, False]
    budgets = np.array([400, 200, 300])
    assert tier_choices(gains, start, thirds, margin=2.0, budgets=budgets) == [False, True, False]
    # Where no tier loses, the budgets change nothing.
    level = every_tier(0.005, 0.06, 0.0)
    assert tier_choices(level, start, thirds, 2.0, budgets=budgets) == [True, True, True]


def test_tier_differences_pair_each_tiers_devices():
    (low, low_error), (high, high_error) = tier_differences(every_tier(0.03, -0.01), START, tiers=2)
    assert np.isclose(low, 0.03) and np.isclose(high, -0.01)
    assert np.isclose(low_error, NOISE[:200].std(ddof=1) / np.sqrt(200))
    assert np.isclose(low_error, high_error)
    sampled = every_tier(0.0, 0.0, sampled_gains=(0.01, 0.02))
    means = [mean for mean, _ in tier_differences(sampled, START, 2, "sampled")]
    assert np.allclose(means, [0.01, 0.02])


def test_mean_scores_give_each_groups_full_ranking_mean():
    full = np.array([0.0, 0.25, 0.5, 1.0])
    groups = {"low": np.array([True, True, False, False]), "empty": np.zeros(4, dtype=bool)}
    row = mean_scores({"full": full, "sampled": full / 2}, groups)
    expected = {"validation": 0.4375, "validation_sampled": 0.21875, "validation_tier_low": 0.125}
    assert row == expected


def test_selection_negatives_avoid_each_users_sequence_and_shrink_to_fit_the_catalogue():
    split = make_split(synthetic_dataset(seed=2, num_users=30, num_items=80), rounds=1)
    users = np.array([3, 7, 11])
    negatives = selection_negatives(split, users, seed=0)
    fewest_unseen = min(80 - len(np.unique(user.items)) for user in split.users)
    assert negatives.shape == (3, min(100, fewest_unseen))
    for row, user in zip(negatives, users, strict=True):
        assert len(set(row)) == len(row) and not set(row) & set(split.users[user].items)
