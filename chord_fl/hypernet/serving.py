"""Which hypernetworks the cloud serves each tier of its fleet, once they are trained.

A recipe's best trained epoch is served to the tiers where it does not lose to the untrained start
and that are narrower than every tier where it does, provided it beats the start over them
(`tier_decision`), measured on users the epochs were not scored on. Across recipes (`serve_best`),
the start served is the best untrained one, the strongest heuristic the cloud has, and each trained
network must pass the same rule against that start, not against a weaker one; of those that pass,
the one whose served fleet scores highest on those users is served.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from chord_fl.cloud import tier_budgets
from chord_fl.data.split import RoundSplit
from chord_fl.hypernet.networks import ChordHyperNet
from chord_fl.hypernet.tiered import TieredHyperNet
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.selection import Scores, beats, tier_choices, tier_differences
from chord_fl.tiers import Fleet
from chord_fl.train import FitResult
from chord_fl.validation import ValidationDevices, decision_devices, validation_devices

if TYPE_CHECKING:  # the training module imports this one
    from chord_fl.hypernet.training import HyperTrainConfig, Recipe


def served_networks(
    hypernet: ChordHyperNet, states: dict[int, dict], budgets: np.ndarray, trained_at: list[bool]
) -> TieredHyperNet:
    """The start and the best trained epoch in `states` (the start in both places where no tier
    chose the trained one), each tier served the one `trained_at` chose."""

    def at(epoch: int) -> ChordHyperNet:
        network = copy.deepcopy(hypernet)
        network.load_state_dict(states[epoch])
        return network.eval()

    start = at(0)
    trained = at(max(states)) if any(trained_at) else start
    return TieredHyperNet(start, trained, budgets, trained_at)


def tier_decision(
    hypernet: ChordHyperNet,
    states: dict[int, dict],
    validate: Callable[[ValidationDevices], Scores],
    decision: ValidationDevices,
    fleet: Fleet,
    config: HyperTrainConfig,
    history: list[dict],
) -> list[bool]:
    """Whether each tier is served the best trained epoch in `states` (which beat the start on
    the epochs' own scores, each user at its tier), as `tier_choices` decides on the `decision`
    devices scored at every tier. Its history row records each tier's paired difference from
    the start and its z, by protocol ("tier_z_<tier>" under full ranking, "tier_z_sampled_<tier>"
    under the sampled protocol), and the tiers it serves ("tier_trained_<tier>")."""
    best = max(states)
    every_tier = decision.at_every_tier()
    scores = {}
    for epoch in (0, best):
        hypernet.load_state_dict(states[epoch])
        scores[epoch] = validate(every_tier)
    for protocol in scores[0]:
        label = "" if protocol == "full" else f"{protocol}_"
        differences = tier_differences(scores[best], scores[0], len(fleet.tiers), protocol)
        for tier, (mean, error) in zip(fleet.tiers, differences, strict=True):
            history[best][f"tier_gain_{label}{tier.name}"] = mean
            history[best][f"tier_z_{label}{tier.name}"] = mean / error if error else float("nan")
    chosen = tier_choices(
        scores[best],
        scores[0],
        fleet.shares,
        config.select_margin,
        config.sampled_guard,
        limits(decision, config),
    )
    for tier, trained in zip(fleet.tiers, chosen, strict=True):
        history[best][f"tier_trained_{tier.name}"] = float(trained)
    return chosen


def limits(decision: ValidationDevices, config: HyperTrainConfig) -> np.ndarray | None:
    """The tiers' budgets, by which a tier where a trained network loses keeps it from wider ones
    (`tier_choices`); None where `config` lets wider tiers decide alone."""
    return None if config.wider_than_losses else decision.tier_budgets


def serve_best(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    fits: Mapping[Recipe, tuple[TieredHyperNet, FitResult]],
    config: HyperTrainConfig,
) -> tuple[TieredHyperNet, FitResult, tuple[Recipe, Recipe]]:
    """The networks served from several recipes' `fits` (each trained on the same validation
    users), the fit that decided, and the recipes of the start and the trained network served.

    With the tier guard: the untrained start with the highest mean validation score (the first
    on a tie), and, served at the tiers `tier_choices` gives it against that start, the trained
    network whose served fleet has the highest mean full-ranking score on the recipes' decision
    users (where no epoch was chosen; the first recipe on a tie). The start's own recipe keeps
    the tiers its training decided there against the same start. Without the guard, the recipe
    whose served networks score highest on the validation users (the rule before 2026-12-05):
    a start replaced everywhere or nowhere."""
    recipes = list(fits)
    if not config.tier_guard:
        best = max(recipes, key=lambda recipe: fits[recipe][1].best_score)
        return *fits[best], (best, best)
    default = max(recipes, key=lambda recipe: fits[recipe][1].history[0]["validation"])
    trained = [recipe for recipe in recipes if fits[recipe][0].trained_at.any()]
    if not trained or trained == [default]:  # decided against this start on the same users
        return *fits[default], (default, default)
    start = fits[default][0].start
    validation, decision = selection_devices(prepared, split, fleet, config)
    every_tier = decision.at_every_tier()
    metric = config.select_metric
    start_scores = every_tier.score_network(prepared, start, metric)
    # Trained networks are compared on the decision users, not by their epochs' own validation
    # scores: each is the best of its epochs there, partly by luck.
    candidate, chosen, best_served = default, [False] * len(fleet.tiers), -np.inf
    for recipe in trained:
        scores = every_tier.score_network(prepared, fits[recipe][0].trained, metric)
        passes = (
            fits[recipe][0].trained_at.tolist()
            if recipe == default
            else tier_choices(
                scores,
                start_scores,
                fleet.shares,
                config.select_margin,
                config.sampled_guard,
                limits(decision, config),
            )
        )
        served_score = served_mean(scores, start_scores, passes, fleet.shares)
        if any(passes) and served_score > best_served:
            candidate, chosen, best_served = recipe, passes, served_score
    network = fits[candidate][0].trained if any(chosen) else start
    served = TieredHyperNet(start, network, tier_budgets(fleet, prepared.channels), chosen)
    route = served.route(validation.budgets)
    per_network = [validation.score_network(prepared, n, metric)["full"] for n in served.networks]
    score = float(np.choose(route, per_network).mean())
    fit = fits[candidate][1]
    decided = FitResult(fit.best_epoch if any(chosen) else 0, score, fit.seconds, fit.history)
    return served, decided, (default, candidate)


def served_mean(
    trained: Scores, start: Scores, chosen: Sequence[bool], shares: np.ndarray
) -> float:
    """The fleet's mean full-ranking score, for scores of the same users at every tier
    (tier-major), where each tier is served the trained network if `chosen`, else the start."""
    tiers = len(shares)
    by_tier = np.where(
        np.asarray(chosen)[:, None],
        trained["full"].reshape(tiers, -1),
        start["full"].reshape(tiers, -1),
    )
    return float(np.asarray(shares, dtype=np.float64) @ by_tier.mean(axis=1))


def selection_devices(
    prepared: PreparedModel, split: RoundSplit, fleet: Fleet, config: HyperTrainConfig
) -> tuple[ValidationDevices, ValidationDevices]:
    """The validation devices training drew with `config` (its first draw) and the decision
    devices beside them."""
    window = config.profile_window or None
    rng = np.random.default_rng(config.seed)
    validation = validation_devices(
        prepared, split, fleet, config.eval_users, rng, config.seed, window
    )
    return validation, decision_devices(prepared, split, fleet, validation, config.seed, window)


def decide_budgets(
    served: TieredHyperNet,
    budgets: Sequence[int],
    prepared: PreparedModel,
    decision: ValidationDevices,
    config: HyperTrainConfig,
) -> tuple[TieredHyperNet, dict[int, dict[str, tuple[float, float]]]]:
    """`served` with a decision of its own for each byte budget in `budgets` that lies between two
    tiers that chose differently (`TieredHyperNet.disputed`): the trained network where it
    `beats` the start there, every `decision` device (`selection_devices`) at that budget; and
    the evidence, by budget decided and protocol, the paired difference (trained minus start) and
    its standard error.

    `route` gives such a budget the start, so a gain that only the smaller tier shows would never
    reach it (SASRec on MovieLens-1M: its trained relaxation serves the 2-bit tier, not the
    3-bit one); a budget whose neighbours agree keeps their choice."""
    candidates = np.unique(np.asarray(budgets, dtype=np.int64))
    disputed = [int(b) for b in candidates[served.disputed(candidates)]]
    if not disputed:
        return served, {}
    metric = config.select_metric
    chosen, evidence = [], {}
    for budget in disputed:
        alone = np.zeros_like(decision.tiers)
        at_budget = replace(decision, tiers=alone, tier_budgets=np.array([budget]))
        start, trained = (at_budget.score_network(prepared, n, metric) for n in served.networks)
        chosen.append(beats(trained, start, config.select_margin, config.sampled_guard))
        evidence[budget] = {p: tier_differences(trained, start, 1, p)[0] for p in trained}
    decided = served.with_decisions(dict(zip(disputed, chosen, strict=True)))
    return decided, evidence
