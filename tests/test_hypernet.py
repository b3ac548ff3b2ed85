import copy
import dataclasses
import multiprocessing
import time

import numpy as np
import pytest
import torch

from chord_fl.checkpoint import load_hypernet, save_hypernet
from chord_fl.cloud import evaluate_codes, issue_codes, tier_budgets
from chord_fl.data import make_split, synthetic_dataset
from chord_fl.errors import ConfigError
from chord_fl.hypernet.epochs import RelaxedEpoch, supervised_epoch, training_examples
from chord_fl.hypernet.networks import ChordHyperNet, HyperNetConfig
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.relax import EXCLUDED_PENALTY, Relaxation, soft_codes
from chord_fl.hypernet.serving import decide_budgets, selection_devices, serve_best
from chord_fl.hypernet.supervision import SensitivitySet, log_ratio_loss, sensitivity_set
from chord_fl.hypernet.tiered import TieredHyperNet
from chord_fl.hypernet.training import (
    HyperTrainConfig,
    Recipe,
    item_head_index,
    train_best,
    train_hypernet,
)
from chord_fl.methods import (
    CHORD_VARIANTS,
    Cloud,
    calibrated_global,
    hypernet_importance,
    method_codes,
    network_importance,
)
from chord_fl.models import build_backbone, seeded_backbone
from chord_fl.quant.allocation import codes_cost
from chord_fl.quant.budget import channel_budget
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.sensitivity import target_sensitivity
from chord_fl.tiers import DEFAULT_FLEET, Fleet, Tier
from chord_fl.train import FitResult, TrainConfig, fit
from chord_fl.validation import (
    choose_exponent,
    decision_devices,
    exponent_devices,
    validation_devices,
)


@pytest.fixture(scope="module")
def prepared():
    model = seeded_backbone("sasrec", 30, seed=0, hidden=16, max_len=8).eval()
    return PreparedModel(model)


def test_profiles_are_small_fp16_vectors(prepared):
    windows = [np.array([1, 2, 3]), np.array([4])]
    profiles = encode_profiles(prepared.frozen, windows)
    assert profiles.dtype == np.float16 and profiles.shape == (2, 16)
    assert profiles.nbytes == 2 * 2 * 16


def test_profiles_are_encoded_without_dropout_and_leave_the_mode_as_found():
    model = build_backbone("sasrec", 30, hidden=16, max_len=8, dropout=0.5)
    windows = [np.array([1, 2, 3]), np.array([4, 5])]
    model.eval()
    expected = encode_profiles(model, windows)
    model.train()
    np.testing.assert_array_equal(encode_profiles(model, windows), expected)
    assert model.training
    model.eval()
    encode_profiles(model, windows)
    assert not model.training


@pytest.mark.parametrize("config", [HyperNetConfig(), HyperNetConfig(element_level=False)])
def test_hypernet_gives_one_non_negative_importance_per_channel(prepared, config):
    net = ChordHyperNet(prepared.frozen, prepared.channels, 16, config)
    importance = net(torch.randn(5, 16))
    assert importance.shape == (5, prepared.channels.channels)
    assert (importance >= 0).all()
    assert not torch.allclose(importance[0], importance[1])  # personalised


@pytest.mark.parametrize("temperature", [1.0, 0.4])
def test_the_log_link_item_head_starts_at_the_backbone_logits_over_the_temperature(
    prepared, temperature
):
    frozen, channels = prepared.frozen, prepared.channels
    config = HyperNetConfig(link="exp", element_level=False, layer_level=False)
    net = ChordHyperNet(frozen, channels, 16, config, item_temperature=temperature)
    profiles = encode_profiles(frozen, [np.array([1, 2, 3]), np.array([7, 9])])
    with torch.no_grad():
        importance = net(torch.from_numpy(profiles)).double()
        logits = frozen.full_scores_encoded(torch.from_numpy(profiles).float()).double()
    table = next(g for g in channels.groups if g.name == frozen.output_table).codes
    log_rows = importance[:, table][:, 1:].log()  # row 0 is padding
    expected = logits[:, 1:] / temperature
    np.testing.assert_allclose(
        (log_rows - log_rows[:, :1]).numpy(), (expected - expected[:, :1]).numpy(), atol=1e-3
    )


def test_each_level_can_be_switched_off(prepared):
    profiles = torch.randn(3, 16)
    outputs = {}
    for name, config in {
        "all": HyperNetConfig(),
        "no-element": HyperNetConfig(element_level=False),
        "no-filter": HyperNetConfig(filter_level=False),
        "no-layer": HyperNetConfig(layer_level=False),
    }.items():
        torch.manual_seed(0)
        net = ChordHyperNet(prepared.frozen, prepared.channels, 16, config)
        if config.layer_level:
            torch.nn.init.normal_(net.layer.weight)
        outputs[name] = net(profiles)
    for name in ("no-element", "no-filter", "no-layer"):
        assert not torch.allclose(outputs[name], outputs["all"]), name
    with pytest.raises(ConfigError):
        HyperNetConfig(filter_level=False, element_level=False)


def test_relaxed_codes_spend_the_budget_and_pass_gradients(prepared):
    error = torch.tensor(prepared.errors / prepared.errors[:, 0].mean(), dtype=torch.float32)
    cost = torch.tensor(prepared.channels.cost(prepared.table), dtype=torch.float32)
    # Sharp importances: left alone, every channel would take its top code, so budgets bind.
    importance = (50 * torch.rand(3, prepared.channels.channels)).requires_grad_()
    budget = torch.tensor([0.15, 0.3, 0.45]) * cost[:, -1].sum()
    probabilities = soft_codes(importance, error, cost, budget)
    spent = (probabilities * cost).sum((1, 2))
    torch.testing.assert_close(spent, budget, rtol=0.01, atol=1.0)
    # Flat importances: nothing is worth more bytes, and the relaxation never overspends.
    flat = soft_codes(torch.full((1, prepared.channels.channels), 1e-3), error, cost, budget[-1:])
    assert (flat * cost).sum() <= budget[-1] * 1.001

    def gradients(implicit: bool) -> tuple[float, float]:
        """|d spent / d importance| and |d P(top code) / d importance|."""
        leaf = importance.detach().requires_grad_()
        relaxed = soft_codes(leaf, error, cost, budget, implicit=implicit)
        (spent,) = torch.autograd.grad((relaxed * cost).sum(), leaf, retain_graph=True)
        (top,) = torch.autograd.grad(relaxed[..., -1].sum(), leaf)
        return spent.abs().sum().item(), top.abs().sum().item()

    # With the multiplier held constant the gradient sees precision as free; differentiated
    # implicitly, the binding budget holds to first order and only its split moves.
    constant_spent, constant_top = gradients(implicit=False)
    implicit_spent, implicit_top = gradients(implicit=True)
    assert constant_top > 0 and implicit_top > 0
    assert implicit_spent < 1e-3 * implicit_top * cost.max().item()
    assert constant_spent > 100 * implicit_spent


def test_sensitivity_and_evaluation_agree_with_the_frozen_model(prepared):
    windows = [np.array([1, 2, 3]), np.array([5, 6])]
    targets = np.array([4, 7])
    sensitivity = target_sensitivity(prepared.frozen, prepared.channels, windows, targets)
    assert sensitivity.shape == (2, prepared.channels.channels) and (sensitivity >= 0).all()
    assert sensitivity.sum() > 0
    top = np.full((2, prepared.channels.channels), 3, dtype=np.uint8)
    fp32 = evaluate_codes(prepared, windows, targets, None)["full"]["ndcg@10"]
    eight_bit = evaluate_codes(prepared, windows, targets, top)["full"]["ndcg@10"]
    np.testing.assert_allclose(fp32, eight_bit, atol=0.2)


def test_issued_codes_fit_every_budget(prepared):
    fleet = DEFAULT_FLEET
    budgets = tier_budgets(fleet, prepared.channels)
    codes = issue_codes(
        prepared, np.random.default_rng(0).random((4, prepared.channels.channels)), budgets
    )
    spent = (
        codes_cost(codes, prepared.channels.cost(prepared.table)) + prepared.channels.fixed_bytes
    )
    assert (spent <= budgets).all()
    assert (
        prepared.table.array[codes].mean(1)[1:] >= prepared.table.array[codes].mean(1)[:-1]
    ).all()


def synthetic_backbone():
    data = synthetic_dataset(seed=2, num_users=150, num_items=80)
    split = make_split(data, rounds=1)
    backbone = build_backbone("sasrec", data.num_items, hidden=16, max_len=20)
    fit(backbone, split, TrainConfig(epochs=15, lr=5e-3, num_negatives=20, patience=15), False)
    return split, backbone.eval()


def assert_same_weights(net, other):
    for (name, value), (_, expected) in zip(
        net.state_dict().items(), other.state_dict().items(), strict=True
    ):
        assert torch.equal(value, expected), name


def train_quietly(prepared, split, **options):
    config = HyperTrainConfig(**options)
    return train_hypernet(prepared, split, DEFAULT_FLEET, config=config, progress=False)


def test_training_options_distill_implicit_budget_and_frozen_item_head():
    with pytest.raises(ConfigError, match="objective"):
        HyperTrainConfig(objective="mse")
    with pytest.raises(ConfigError, match="epochs"):
        HyperTrainConfig(epochs=-1)
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    torch.manual_seed(HyperTrainConfig().seed)  # as train_hypernet seeds its initialisation
    untrained = ChordHyperNet(backbone, prepared.channels, backbone.hidden_size).state_dict()
    net, result = train_quietly(
        prepared,
        split,
        epochs=1,
        eval_users=50,
        users_per_epoch=64,
        objective="distill",
        implicit_budget=True,
        freeze_item_head=True,
    )
    assert np.isfinite(result.history[1]["loss"]) and result.history[1]["loss"] >= 0  # a KL
    item_head = item_head_index(prepared)
    # Whichever epoch selection keeps, the item head is the initialisation.
    moved = {
        name: not torch.equal(value, untrained[name])
        for name, value in net.trained.state_dict().items()
    }
    assert not any(moved[n] for n in moved if n.startswith(f"heads.{item_head}."))
    assert not any(p.requires_grad for p in net.trained.heads[item_head].parameters())
    assert all(p.requires_grad for p in net.trained.heads[item_head - 1].parameters())
    if result.best_epoch > 0:
        assert any(moved.values())
    with pytest.raises(ConfigError, match="item table"):
        by_columns = PreparedModel(backbone, embedding_axis=1)
        train_quietly(by_columns, split, epochs=1, eval_users=50, freeze_item_head=True)
    # No epochs: the untrained initialisation, validated once.
    initial, fit0 = train_quietly(prepared, split, epochs=0, eval_users=50)
    assert [h["epoch"] for h in fit0.history] == [0]
    for network in initial.networks:
        assert all(torch.equal(v, untrained[k]) for k, v in network.state_dict().items())
    assert not initial.trained_at.any()


def test_chord_end_to_end_beats_random_codes_on_synthetic_data():
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    net, result = train_quietly(prepared, split, epochs=2, eval_users=150)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert np.isfinite(result.history[-1]["loss"])
    cloud = Cloud(prepared, {"chord": net})
    fleet = Fleet((Tier("three-bit", 1.0, 1e6, 1e6, 1.0, 1.0, avg_bits=3.0),))
    budgets = np.full(len(split), tier_budgets(fleet, prepared.channels)[0])
    windows, targets = split.windows(1), split.targets(1)
    profiles = encode_profiles(backbone, windows)
    scores = {}
    for method in ("chord", "random"):
        codes = method_codes(method, cloud, profiles, budgets)
        assert (
            codes_cost(codes, prepared.channels.cost(prepared.table))
            + prepared.channels.fixed_bytes
            <= budgets
        ).all()
        scores[method] = evaluate_codes(prepared, windows, targets, codes)["full"]["ndcg@10"].mean()
    assert scores["chord"] > scores["random"] + 0.05, scores


def test_sensitivity_supervision_lowers_its_loss_and_beats_random_codes():
    torch.manual_seed(0)
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    net_config = HyperNetConfig(link="exp", prior=True)
    options = dict(objective="sensitivity", eval_users=150, lr=1e-2, sensitivity_samples=8)
    net, result = train_hypernet(
        prepared, split, DEFAULT_FLEET, net_config, HyperTrainConfig(epochs=4, **options), False
    )
    losses = [h["loss"] for h in result.history[1:]]
    assert losses[-1] < 0.7 * losses[0], losses
    # The prior is the mean of the supervision targets, so the untrained network is the
    # cloud-wide sensitivity everywhere but the item table; training fits the windows better.
    supervision = sensitivity_set(backbone, prepared.channels, split.windows(1), 8, seed=3)
    untrained = ChordHyperNet(backbone, prepared.channels, backbone.hidden_size, net_config)
    untrained.set_prior(supervision.prior)
    last = ChordHyperNet(backbone, prepared.channels, backbone.hidden_size, net_config)
    last.set_prior(supervision.prior)
    optimizer = torch.optim.Adam(last.parameters(), lr=1e-2)
    for _ in range(3):
        supervised_epoch(last, optimizer, supervision, 32, np.random.default_rng(0))
    with torch.no_grad():
        before = log_ratio_loss(untrained(supervision.profiles), supervision.targets)
        after = log_ratio_loss(last(supervision.profiles), supervision.targets)
    assert after < 0.7 * before
    fleet = Fleet((Tier("three-bit", 1.0, 1e6, 1e6, 1.0, 1.0, avg_bits=3.0),))
    budgets = np.full(len(split), tier_budgets(fleet, prepared.channels)[0])
    windows, targets = split.windows(1), split.targets(1)
    profiles = encode_profiles(backbone, windows)
    cloud = Cloud(prepared, {"chord": net})
    scores = {
        method: evaluate_codes(
            prepared, windows, targets, method_codes(method, cloud, profiles, budgets)
        )["full"]["ndcg@10"].mean()
        for method in ("chord", "random")
    }
    assert scores["chord"] > scores["random"] + 0.05, scores


def test_the_relaxation_trains_the_supervised_network_through_its_log_link_and_prior():
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    (recipe,) = CHORD_VARIANTS["chord-sens-relax"].recipes
    assert recipe.needs_supervision  # its start needs the cloud-wide prior
    supervision = sensitivity_set(backbone, prepared.channels, split.windows(1), 8, seed=3)
    torch.manual_seed(0)
    net = ChordHyperNet(backbone, prepared.channels, backbone.hidden_size, recipe.network)
    net.set_prior(supervision.prior)
    before = copy.deepcopy(net.state_dict())
    epoch = RelaxedEpoch(
        Relaxation(prepared),
        split.histories(),
        DEFAULT_FLEET,
        tier_budgets(DEFAULT_FLEET, prepared.channels),
        HyperTrainConfig(objective=recipe.objective),
        None,
    )
    losses = epoch(net, torch.optim.Adam(net.parameters(), lr=1e-2), np.random.default_rng(0))
    assert np.isfinite(losses).all()
    moved = {key for key, value in net.state_dict().items() if not torch.equal(value, before[key])}
    # The next-item loss reaches the per-tensor prior exponents, the layer level and the scoring
    # item table's bilinear head (which starts at the backbone's own logits).
    assert "prior_exponent" in moved and "layer.bias" in moved
    assert f"heads.{item_head_index(prepared)}.user_to_row.weight" in moved
    # Untrained, it is the supervised recipe's start: the same importances for every device.
    (supervised,) = CHORD_VARIANTS["chord-sens"].recipes
    profiles = encode_profiles(backbone, split.windows(1))
    budgets = np.full(len(profiles), tier_budgets(DEFAULT_FLEET, prepared.channels)[0])
    starts = [
        train_hypernet(
            prepared,
            split,
            DEFAULT_FLEET,
            r.network,
            HyperTrainConfig(epochs=0, objective=r.objective, eval_users=150),
            False,
            supervision,
        )[0]
        for r in (recipe, supervised)
    ]
    np.testing.assert_array_equal(*(hypernet_importance(n, profiles, budgets) for n in starts))


def test_the_history_keeps_each_tiers_validation_mean():
    torch.manual_seed(0)
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    config = HyperTrainConfig(epochs=1, eval_users=150, patience=5)
    _, fit = train_hypernet(prepared, split, DEFAULT_FLEET, HyperNetConfig(), config, False)
    for row in fit.history:
        by_tier = [row[f"validation_tier_{tier.name}"] for tier in DEFAULT_FLEET.tiers]
        assert min(by_tier) <= row["validation"] <= max(by_tier)


def test_the_tier_guard_serves_the_trained_epoch_to_the_tiers_it_wins_at():
    torch.manual_seed(2)  # a backbone whose trained epoch wins at some tiers and not at others
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    config = HyperTrainConfig(
        epochs=1, eval_users=150, patience=5, select_margin=0.0, sampled_guard=False
    )
    torch.manual_seed(0)
    net, fit = train_hypernet(prepared, split, DEFAULT_FLEET, HyperNetConfig(), config, False)
    assert fit.history[1]["validation"] > fit.history[0]["validation"]  # else not scored
    gains = np.array([fit.history[1][f"tier_gain_{t.name}"] for t in DEFAULT_FLEET.tiers])
    # With no margin, each tier where the trained epoch's mean is higher is served it, unless it
    # is wider than a tier where the mean is lower.
    budgets = tier_budgets(DEFAULT_FLEET, prepared.channels)
    expected = (gains > 0) & (budgets < budgets[gains < 0].min(initial=budgets.max() + 1))
    assert net.trained_at.tolist() == expected.tolist(), gains
    assert 0 < net.trained_at.sum() < len(gains)  # served to some tiers, not to others
    recorded = [fit.history[1][f"tier_trained_{t.name}"] for t in DEFAULT_FLEET.tiers]
    assert recorded == expected.astype(float).tolist()
    assert fit.best_epoch == int(expected.any())
    served = net.trained_tiers(DEFAULT_FLEET.names)
    assert served == tuple(t.name for t, e in zip(DEFAULT_FLEET.tiers, expected, strict=True) if e)
    assert (gains > 0).sum() > expected.sum()  # a wider tier that gained keeps the start
    # The served score: each validation user scored by the network its own tier was served.
    validation = validation_devices(
        prepared, split, DEFAULT_FLEET, 150, np.random.default_rng(config.seed), config.seed
    )
    importance = hypernet_importance(net, validation.profiles, validation.budgets)
    scores = validation.score(prepared, importance, config.select_metric)["full"]
    assert fit.best_score == pytest.approx(scores.mean())


def test_the_tier_decision_is_made_on_users_the_epochs_were_not_scored_on():
    split = make_split(synthetic_dataset(seed=2, num_users=60, num_items=30), rounds=1)
    prepared = PreparedModel(build_backbone("sasrec", split.num_items, hidden=16, max_len=20))
    rng = np.random.default_rng(0)
    validation = validation_devices(prepared, split, DEFAULT_FLEET, 25, rng, seed=0)
    decision = decision_devices(prepared, split, DEFAULT_FLEET, validation, seed=0)
    assert len(decision.users) == 25 and not np.intersect1d(decision.users, validation.users).size
    np.testing.assert_array_equal(decision.users, np.sort(decision.users))
    tiers = exponent_devices(prepared, split, DEFAULT_FLEET, 60, seed=0).tiers  # every user's
    np.testing.assert_array_equal(decision.tiers, tiers[decision.users])
    # Where fewer users are left than validate, the validation users themselves.
    many = validation_devices(prepared, split, DEFAULT_FLEET, 40, rng, seed=0)
    assert decision_devices(prepared, split, DEFAULT_FLEET, many, seed=0) is many


def test_a_budget_is_served_the_network_its_tiers_chose(prepared):
    start = ChordHyperNet(prepared.frozen, prepared.channels, 16)
    trained = ChordHyperNet(prepared.frozen, prepared.channels, 16)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter))
    # Tiers listed out of budget order: 300 and 100 bytes chose the trained network, 200 not.
    net = TieredHyperNet(start, trained, [300, 100, 200, 400], [True, True, False, True])
    budgets = np.array([100, 200, 300, 400, 50, 150, 250, 350, 500])
    expected = [1, 0, 1, 1, 1, 0, 0, 1, 1]  # between two tiers: trained only where both chose it
    np.testing.assert_array_equal(net.route(budgets), expected)
    disputed = [0, 0, 0, 0, 0, 1, 1, 0, 0]  # between tiers that chose differently
    np.testing.assert_array_equal(net.disputed(budgets), disputed)
    profiles = np.random.default_rng(0).standard_normal((9, 16)).astype(np.float32)
    importance = hypernet_importance(net, profiles, budgets)
    for row, chosen in enumerate(expected):
        alone = network_importance(net.networks[chosen], profiles[row : row + 1])
        np.testing.assert_array_equal(importance[row], alone[0])
    with pytest.raises(ConfigError, match="one choice per tier"):
        TieredHyperNet(start, trained, [100, 200], [True])


def test_an_epoch_level_with_the_start_is_not_scored_at_every_tier():
    split, backbone = synthetic_backbone()
    config = HyperTrainConfig(epochs=1, eval_users=150, lr=1e-12, select_margin=0.0)
    torch.manual_seed(0)
    _, fit = train_hypernet(
        PreparedModel(backbone), split, DEFAULT_FLEET, config=config, progress=False
    )
    assert fit.history[1]["validation"] == fit.history[0]["validation"]
    assert fit.best_epoch == 0 and not any(key.startswith("tier_") for key in fit.history[1])


def test_validation_devices_at_every_tier_repeat_each_user_tier_major(prepared):
    split = make_split(synthetic_dataset(seed=2, num_users=40, num_items=30), rounds=1)
    devices = exponent_devices(prepared, split, DEFAULT_FLEET, 10, seed=0)
    every = devices.at_every_tier()
    tiers = len(DEFAULT_FLEET.tiers)
    np.testing.assert_array_equal(every.users, np.tile(devices.users, tiers))
    budgets = tier_budgets(DEFAULT_FLEET, prepared.channels)
    np.testing.assert_array_equal(every.budgets, np.repeat(budgets, 10))
    np.testing.assert_array_equal(every.profiles[10:20], devices.profiles)
    importance = np.random.default_rng(0).random((10, prepared.channels.channels))
    scores = every.score(prepared, np.tile(importance, (tiers, 1)), "ndcg@10")
    own = devices.score(prepared, importance, "ndcg@10")
    for protocol, values in own.items():
        at_own_tier = scores[protocol].reshape(tiers, 10)[devices.tiers, np.arange(10)]
        np.testing.assert_allclose(at_own_tier, values)


def test_a_margin_no_epoch_reaches_keeps_the_untrained_start():
    torch.manual_seed(0)
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    config = HyperTrainConfig(epochs=2, eval_users=150, select_margin=1e9, patience=5)
    net, fit = train_hypernet(prepared, split, DEFAULT_FLEET, HyperNetConfig(), config, False)
    assert fit.best_epoch == 0 and len(fit.history) == 3
    assert fit.best_score == fit.history[0]["validation"]
    torch.manual_seed(0)
    start, _ = train_hypernet(
        prepared,
        split,
        DEFAULT_FLEET,
        HyperNetConfig(),
        dataclasses.replace(config, epochs=0),
        False,
    )
    assert_same_weights(net, start)


def test_train_best_keeps_the_recipe_with_the_best_validation_score():
    torch.manual_seed(0)
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    config = HyperTrainConfig(epochs=0, eval_users=150, sensitivity_samples=4, select_margin=0)
    recipes = CHORD_VARIANTS["chord"].recipes
    assert {r.objective for r in recipes} == {"next-item", "sensitivity"}
    scores = [
        train_hypernet(
            prepared,
            split,
            DEFAULT_FLEET,
            r.network,
            dataclasses.replace(config, objective=r.objective),
            False,
        )[1].best_score
        for r in recipes
    ]
    best = recipes[int(np.argmax(scores))]
    net, fit, served = train_best(prepared, split, DEFAULT_FLEET, recipes, config, False)
    assert fit.best_score == max(scores) and served == (best, best)
    assert net.start.config == best.network and net.trained is net.start
    # The margin guards each recipe's untrained start, not the choice between two recipes, which
    # favours neither: the better one is kept whatever the margin.
    strict = dataclasses.replace(config, select_margin=1e9)
    _, fit, served = train_best(prepared, split, DEFAULT_FLEET, recipes, strict, False)
    assert served == (best, best) and fit.best_score == max(scores)


def good_and_poor(prepared):
    """The model's own view of its channels, and a network of large random weights."""
    backbone = prepared.frozen
    torch.manual_seed(0)
    good = ChordHyperNet(backbone, prepared.channels, backbone.hidden_size)
    poor = ChordHyperNet(backbone, prepared.channels, backbone.hidden_size)
    with torch.no_grad():
        for parameter in poor.parameters():
            parameter.copy_(10 * torch.randn_like(parameter))
    return good, poor


def test_a_budget_between_tiers_that_disagree_is_decided_on_its_own_evidence():
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    config = HyperTrainConfig(eval_users=150)
    budgets = tier_budgets(DEFAULT_FLEET, prepared.channels).tolist()
    chosen = [True, False, True, True]  # the 2-bit tier takes the trained network, 3 bits not
    between = (budgets[0] + budgets[1]) // 2
    agreed = (budgets[2] + budgets[3]) // 2  # between two tiers that took the trained network
    good, poor = good_and_poor(prepared)
    # The decision devices, every one at `between` (on this small split: the validation users).
    rng = np.random.default_rng(config.seed)
    validation = validation_devices(prepared, split, DEFAULT_FLEET, 150, rng, config.seed)
    decision = decision_devices(prepared, split, DEFAULT_FLEET, validation, config.seed)
    _, chosen_devices = selection_devices(prepared, split, DEFAULT_FLEET, config)  # as served
    at_between = dataclasses.replace(
        decision, tiers=np.zeros_like(decision.tiers), tier_budgets=np.array([between])
    )
    for start, trained in ((poor, good), (good, poor)):
        net = TieredHyperNet(start, trained, budgets, chosen)
        assert net.route(np.array([between]))[0] == TieredHyperNet.START
        asked = [between, budgets[1], agreed, between]
        decided, evidence = decide_budgets(net, asked, prepared, chosen_devices, config)
        scores = [at_between.score_network(prepared, n, "ndcg@10") for n in (trained, start)]
        for protocol in ("full", "sampled"):
            difference = scores[0][protocol] - scores[1][protocol]
            mean, error = evidence[between][protocol]
            assert mean == pytest.approx(difference.mean())
            assert error == pytest.approx(difference.std(ddof=1) / np.sqrt(len(difference)))
        assert list(evidence) == [between]
        mean, error = evidence[between]["full"]
        assert (mean > 2 * error) == (trained is good) and error > 0
        assert decided.decided == {between: trained is good}
        np.testing.assert_array_equal(decided.trained_at, chosen)  # the tiers' own stay
        expected = TieredHyperNet.TRAINED if trained is good else TieredHyperNet.START
        assert decided.route(np.array([between]))[0] == expected
        assert not decided.disputed(np.array([between]))[0]
        # A budget near the decided one, and one between two tiers that agree, route by the tiers.
        nearby = decided.route(np.array([between + 1, agreed]))
        np.testing.assert_array_equal(nearby, [TieredHyperNet.START, TieredHyperNet.TRAINED])
    # Nothing to decide where no tier took the trained network.
    unchanged = TieredHyperNet(good, good, budgets, [False] * len(budgets))
    kept, evidence = decide_budgets(unchanged, [between], prepared, chosen_devices, config)
    assert kept is unchanged and not evidence


def test_recipes_trained_in_processes_of_their_own_equal_those_trained_in_turn():
    torch.manual_seed(0)
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    config = HyperTrainConfig(epochs=2, eval_users=150, sensitivity_samples=4, select_margin=0)
    recipes = CHORD_VARIANTS["chord"].recipes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker process runs: the same float sums
    try:
        runs = [
            train_best(prepared, split, DEFAULT_FLEET, recipes, config, False, processes=n)
            for n in (1, 2)
        ]
    finally:
        torch.set_num_threads(threads)
    (net, fit, served), (net2, fit2, served2) = runs
    assert served == served2 and fit.best_score == fit2.best_score
    np.testing.assert_equal(fit.history, fit2.history)  # NaN (epoch 0's loss) equals NaN here
    assert_same_weights(net, net2)
    with pytest.raises(ConfigError, match="processes must be >= 1"):
        train_best(prepared, split, DEFAULT_FLEET, recipes, config, False, processes=0)


def test_a_recipe_that_fails_in_its_process_stops_the_others_at_once():
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    # The relaxation would train for a quarter of an hour; the supervised recipe fails on its
    # first step, setting a prior of the wrong length.
    config = HyperTrainConfig(epochs=2000, patience=10**6, eval_users=150)
    wrong = SensitivitySet(torch.zeros(1, backbone.hidden_size), torch.ones(1, 3))
    recipes = CHORD_VARIANTS["chord"].recipes
    others = set(multiprocessing.active_children())  # left by other tests, if any
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="size of tensor"):
        train_best(prepared, split, DEFAULT_FLEET, recipes, config, False, wrong, processes=2)
    assert time.perf_counter() - started < 60
    assert set(multiprocessing.active_children()) <= others, "a worker outlived the failure"


def test_a_trained_network_is_served_where_it_beats_the_best_start_not_its_own():
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    config = HyperTrainConfig(eval_users=150)
    budgets = tier_budgets(DEFAULT_FLEET, prepared.channels)
    tiers = len(budgets)
    good, poor = good_and_poor(prepared)
    strong, weak = Recipe(HyperNetConfig(), "next-item"), Recipe(HyperNetConfig(), "distill")

    def fit_of(start_score: float, served_score: float) -> FitResult:
        return FitResult(3, served_score, 1.0, [{"validation": start_score}])

    def serve(default_start, candidate_start, candidate_trained, default_trained=None):
        trained = default_trained is not None
        default_served = TieredHyperNet(
            default_start, default_trained if trained else default_start, budgets, [trained] * tiers
        )
        fits = {
            # A trained network of the default's recipe looks luckier on its epochs' users.
            strong: (default_served, fit_of(0.3, 0.9 if trained else 0.3)),
            weak: (
                TieredHyperNet(candidate_start, candidate_trained, budgets, [True] * tiers),
                fit_of(0.1, 0.4),
            ),
        }
        return serve_best(prepared, split, DEFAULT_FLEET, fits, config)

    # Trained from a weaker start to exactly the best start: it beats its own, not the best one.
    net, fit, served = serve(good, poor, copy.deepcopy(good))
    assert served == (strong, strong) and not net.trained_at.any() and fit.best_epoch == 0
    # A trained network far above the best start is served where it beats it.
    net, fit, served = serve(poor, poor, good)
    assert served == (strong, weak) and net.trained_at[0] and fit.best_epoch == 3
    assert net.start is poor and net.trained is good
    validation = validation_devices(
        prepared, split, DEFAULT_FLEET, 150, np.random.default_rng(config.seed), config.seed
    )
    importance = hypernet_importance(net, validation.profiles, validation.budgets)
    scores = validation.score(prepared, importance, config.select_metric)["full"]
    assert fit.best_score == pytest.approx(scores.mean())
    # Of two trained networks, the one better on the decision users, not on its epochs' own.
    net, _, served = serve(poor, poor, good, default_trained=copy.deepcopy(poor))
    assert served == (strong, weak) and net.trained is good and net.trained_at.any()
    # Of two that pass there, the one whose served fleet scores higher there, whichever recipe.
    fair = copy.deepcopy(good)
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in fair.parameters():
            parameter.add_(torch.randn_like(parameter))  # worse than good, far above poor
    net, _, served = serve(poor, poor, good, default_trained=fair)
    assert served == (strong, weak) and net.trained is good
    net, _, served = serve(poor, poor, fair, default_trained=good)
    assert served == (strong, strong) and net.trained is good
    # Without the tier guard: the recipe whose served networks scored highest, as it was.
    unguarded = dataclasses.replace(config, tier_guard=False)
    fits = {strong: (TieredHyperNet(good, good, budgets, [False] * tiers), fit_of(0.3, 0.3))}
    fits[weak] = (TieredHyperNet(poor, good, budgets, [True] * tiers), fit_of(0.1, 0.4))
    _, _, served = serve_best(prepared, split, DEFAULT_FLEET, fits, unguarded)
    assert served == (weak, weak)


def test_the_batched_relaxation_scores_each_row_under_its_own_codes():
    """The relaxation runs a batch's rows in one call; in value (straight-through forward) each
    row's loss is its window's cross-entropy under its own hard codes, as on a device, with items
    the codes prune pushed EXCLUDED_PENALTY down."""
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    relaxation = Relaxation(prepared)
    histories = split.histories()
    rng = np.random.default_rng(1)
    windows, targets = training_examples(histories, np.arange(4), 3, rng)
    seqs = backbone.pad_windows(windows)
    generator = torch.Generator().manual_seed(3)
    importance = torch.rand(4, prepared.channels.channels, generator=generator)
    budgets = tier_budgets(DEFAULT_FLEET, prepared.channels)[[0, 1, 2, 3]]
    channel_bytes = channel_budget(prepared.channels, budgets)
    # No budget term: its value is the same whichever way the rows are run.
    config = HyperTrainConfig(budget_penalty=0.0)
    batched = relaxation.loss(importance, channel_bytes, seqs, torch.from_numpy(targets), config)

    hard = issue_codes(prepared, importance.numpy(), budgets)
    assert len({tuple(row) for row in hard}) == 4  # every row its own codes
    per_row = []
    for row, codes in enumerate(hard):
        model = prepared.dequantized(codes)
        model.unavailable = None  # the relaxation's soft penalty stands in for the device's -inf
        with torch.no_grad():
            scores = model.full_scores(seqs[row : row + 1])[0]
        pruned = torch.from_numpy(codes[prepared.item_group.codes] == 0).float()
        scores = scores - EXCLUDED_PENALTY * pruned
        per_row.append(torch.nn.functional.cross_entropy(scores, torch.tensor(targets[row])))
    assert batched.item() == pytest.approx(torch.stack(per_row).mean().item(), rel=1e-5)


def test_choose_exponent_takes_the_best_mean_unless_it_loses_under_the_sampled_protocol():
    users = np.linspace(0.0, 0.2, 50)
    gains = {1.0: (0.0, 0.0), 0.5: (0.03, 0.01), 0.25: (0.04, -0.01)}

    def score(exponent):
        full = users + gains[exponent][0] + 0.01 * np.sin(np.arange(50) * (1 + exponent))
        return {"full": full, "sampled": users + 0.3 + gains[exponent][1]}

    # 0.25 is best under full ranking but lower than exponent 1 under the sampled protocol.
    assert choose_exponent(score, [1.0, 0.5, 0.25]) == 1.0
    assert choose_exponent(score, [1.0, 0.5, 0.25], guard=False) == 0.25
    assert choose_exponent(score, [1.0, 0.5]) == 0.5
    assert choose_exponent(lambda exponent: 1 / 0, [0.5]) == 0.5  # one candidate: not scored


def test_the_exponent_raises_every_importance_and_is_saved_with_the_network(prepared, tmp_path):
    net = ChordHyperNet(prepared.frozen, prepared.channels, 16)
    profiles = torch.randn(4, 16)
    with torch.no_grad():
        plain = net(profiles)
        net.exponent.fill_(0.25)
        flat = net(profiles)
    torch.testing.assert_close(flat, plain.clamp_min(1e-30) ** 0.25)
    assert flat.max() / flat.min() < plain.max() / plain.min()
    trained = ChordHyperNet(prepared.frozen, prepared.channels, 16)
    trained.load_state_dict(net.state_dict())
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter))
        served = trained(profiles)
    assert not torch.allclose(served, flat)
    path = save_hypernet(
        tmp_path / "net.pt", TieredHyperNet(net, trained, [10, 20], [False, True]), {}
    )
    loaded, _ = load_hypernet(path, prepared)
    assert float(loaded.exponent) == 0.25
    importance = hypernet_importance(loaded, profiles.numpy(), np.array([10, 20, 10, 20]))
    expected = torch.stack([flat[0], served[1], flat[2], served[3]])
    np.testing.assert_allclose(importance, expected, rtol=1e-5)  # kernels of another shape
    # A network saved before networks were served by tier, and before the exponent existed,
    # serves every budget and allocates its importances as they are.
    single = tmp_path / "single.pt"
    state = {k: v for k, v in net.state_dict().items() if k != "exponent"}
    description = {"hypernet": dataclasses.asdict(net.config)}
    torch.save({"model": description, "meta": {}, "state_dict": state}, single)
    older, _ = load_hypernet(single, prepared)
    assert float(older.exponent) == 1.0
    older_importance = hypernet_importance(older, profiles.numpy(), np.array([1] * 4))
    np.testing.assert_allclose(older_importance, plain, rtol=1e-5)


def test_training_starts_from_the_exponent_with_the_best_validation_score():
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    exponents = (1.0, 0.25)
    config = HyperTrainConfig(epochs=0, eval_users=150, select_margin=0, exponents=exponents)
    torch.manual_seed(config.seed)
    net, fit = train_hypernet(prepared, split, DEFAULT_FLEET, HyperNetConfig(), config, False)
    chosen = fit.history[0]["exponent"]
    assert float(net.exponent) == chosen
    devices = exponent_devices(prepared, split, DEFAULT_FLEET, 2000, config.seed)
    assert len(devices.users) == len(split)  # as the epochs' 150: every user
    full = {}
    for exponent in exponents:
        net.exponent.fill_(exponent)
        with torch.no_grad():
            importance = net.start(torch.from_numpy(devices.profiles)).numpy()
        full[exponent] = devices.score(prepared, importance, "ndcg@10")["full"].mean()
    assert full[chosen] == max(full.values()) and fit.best_score == pytest.approx(full[chosen])
    with pytest.raises(ConfigError, match="exponents"):
        HyperTrainConfig(exponents=(1.0, 0.0))


def test_the_global_importance_is_flattened_where_validation_says_so():
    """A cloud-wide importance that starves all but a few channels prunes most of the model; its
    eighth root spreads the bytes, and validation picks it. With one exponent nothing changes."""
    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    spiky = np.random.default_rng(0).lognormal(0.0, 12.0, prepared.channels.channels)
    config = HyperTrainConfig(eval_users=150, exponents=(1.0, 0.125))
    calibrated = calibrated_global(prepared, split, DEFAULT_FLEET, spiky, config)
    np.testing.assert_allclose(calibrated, spiky**0.125)
    alone = calibrated_global(
        prepared, split, DEFAULT_FLEET, spiky, dataclasses.replace(config, exponents=(1.0,))
    )
    assert np.array_equal(alone, spiky)


def test_training_on_a_copy_of_the_frozen_model_as_a_gpu_would_equals_training_in_place(
    monkeypatch,
):
    """On a GPU the cloud trains with a copy of the frozen model (`chord_fl.machine.on_device`).
    Forced to copy on the CPU, the relaxation and the supervised recipe give the same networks
    and leave the frozen model the devices' weights come from as it was; and they do train on
    the copy (a perturbed copy gives other networks)."""
    import chord_fl.hypernet.training as training

    split, backbone = synthetic_backbone()
    prepared = PreparedModel(backbone)
    before = copy.deepcopy(backbone.state_dict())
    profiles = encode_profiles(backbone, split.windows(1))
    budgets = np.full(len(profiles), tier_budgets(DEFAULT_FLEET, prepared.channels)[1])

    def trained() -> list[tuple[np.ndarray, float]]:
        """Each recipe's served importances and its training loss (the copy's forward passes)."""
        out = []
        for variant in ("chord-relax", "chord-sens"):
            (recipe,) = CHORD_VARIANTS[variant].recipes
            config = HyperTrainConfig(
                epochs=1, objective=recipe.objective, eval_users=100, users_per_epoch=100
            )
            net, fit = train_hypernet(
                prepared, split, DEFAULT_FLEET, recipe.network, config, False, device="cpu"
            )
            out.append((hypernet_importance(net, profiles, budgets), fit.history[1]["loss"]))
        return out

    def copies(scale: float):
        def copy_on(module, device):
            assert module is backbone
            duplicate = copy.deepcopy(module).to(device)
            with torch.no_grad():
                for weight in duplicate.parameters():
                    weight.mul_(scale)
            return duplicate

        monkeypatch.setattr(training, "on_device", copy_on)

    in_place = trained()
    copies(1.0)
    for (expected, expected_loss), (got, loss) in zip(in_place, trained(), strict=True):
        np.testing.assert_array_equal(got, expected)
        assert loss == expected_loss
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, before[name]), name
    copies(0.5)
    for (_, expected_loss), (_, loss) in zip(in_place, trained(), strict=True):
        assert loss != expected_loss


def test_a_gpu_asked_for_where_there_is_none_is_a_clear_error(tmp_path, capsys):
    from chord_fl.cli import main
    from chord_fl.data import synthetic_interactions
    from chord_fl.federation.runconfig import RunConfig

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    prepared = PreparedModel(seeded_backbone("sasrec", 30, 0, hidden=16))
    with pytest.raises(ConfigError, match="no GPU"):
        train_hypernet(prepared, None, DEFAULT_FLEET, device="cuda")
    with pytest.raises(ConfigError, match="cloud-device must be one of"):
        RunConfig(cloud_device="tpu")
    csv = tmp_path / "clicks.csv"
    synthetic_interactions(num_users=20, seed=1).to_csv(csv, index=False)
    command = ["hypernet", "--dataset", str(csv), "--init", "random", "--device", "cuda"]
    assert main([*command, "--no-progress"]) == 2
    assert "no GPU" in capsys.readouterr().err
