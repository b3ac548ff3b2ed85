"""Cloud training of the hypernetworks; the backbone stays frozen and no device computes anything.

Each step takes a batch of training users, a position near the end of each history (the window
before it is the user's real-time window, the item at it the target), and a budget drawn from the
device tiers. The hypernetworks map the window's profile to channel importances; the allocator's
Lagrangian relaxation turns them into code probabilities; the backbone runs on weights quantized
under those codes (straight-through: the forward pass uses the allocator's hard codes) and the
next-item loss flows back to the hypernetworks. Selection uses validation targets only.
"""

from __future__ import annotations

import copy
import functools
import multiprocessing
import pickle
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from chord_fl.cloud import tier_budgets
from chord_fl.data.split import RoundSplit
from chord_fl.errors import ConfigError, require_positive
from chord_fl.hypernet.epochs import RelaxedEpoch, supervised_epoch
from chord_fl.hypernet.networks import ChordHyperNet, HyperNetConfig
from chord_fl.hypernet.relax import Relaxation
from chord_fl.hypernet.serving import serve_best, served_networks, tier_decision
from chord_fl.hypernet.supervision import (
    SensitivitySet,
    sensitivity_set,
    training_windows,
)
from chord_fl.hypernet.tiered import TieredHyperNet
from chord_fl.machine import on_device, torch_device
from chord_fl.metrics import METRICS
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.selection import (
    Scores,
    best_trained_epoch,
    kept_epoch,
    mean_scores,
    patience_spent,
)
from chord_fl.tiers import Fleet
from chord_fl.train import FitResult
from chord_fl.validation import (
    ValidationDevices,
    choose_exponent,
    decision_devices,
    exponent_devices,
    validation_devices,
)

OBJECTIVES = ("next-item", "distill", "sensitivity")
# From this many users on, and with two torch threads or more, recipes train side by side.
PARALLEL_USERS = 500


@dataclass(frozen=True)
class HyperTrainConfig:
    # At most; training stops after `patience` epochs without a higher score than its best trained
    # epoch's. On MovieLens-1M, from the flattened start, the relaxation dips below the start for
    # about five epochs and passes it after 6 to 13 (README, "Stopping").
    epochs: int = 16
    batch_users: int = 32
    lr: float = 1e-3  # 3e-3 peaked by epoch 5 on MovieLens-1M, then fell (README, "Headroom")
    temperature: float = 1.0
    positions: int = 5  # targets are drawn from the last `positions` items of each history
    budget_penalty: float = 1.0
    straight_through: bool = True
    patience: int = 4  # epochs without a higher mean validation score before stopping
    # Validation users scored after each epoch: 500 left a gain of 0.0136 NDCG@10 below two
    # standard errors (README, "Stopping").
    eval_users: int = 2000
    users_per_epoch: int = 2000  # large data sets: a fresh random subset of users each epoch
    select_metric: str = "ndcg@10"
    # The best epoch replaces the untrained start only when it beats it on the validation users
    # by this many paired standard errors (0: any gain), and is not lower under the sampled
    # protocol (`chord_fl.selection`).
    select_margin: float = 2.0
    sampled_guard: bool = True  # False: the full-ranking margin alone (the rule before 2026-12-04)
    # With the tier guard, an epoch that passes is scored again with the start at every tier of the
    # fleet, on as many users besides the epochs' validation users
    # (`chord_fl.validation.decision_devices`), and the trained epoch is served to every tier where
    # it does not lose to the start by the margin and no narrower tier loses (see
    # `wider_than_losses`), provided it wins over those tiers (`chord_fl.selection.tier_choices`).
    # False: the epochs' own scores, each user at its one tier, decide for every tier at once (the
    # rule before 2026-12-05). The rescoring costs eight validations, so it is kept for epochs that
    # pass.
    tier_guard: bool = True
    # True: a tier wider than one where the trained epoch loses may still take it (the rule
    # before commit e79807f; `chord_fl.selection.tier_choices`).
    wider_than_losses: bool = False
    seed: int = 0
    profile_window: int = 0  # items the device's profile encodes (0: the backbone's max_len)
    # "next-item": cross-entropy of the history's next item; "distill": KL divergence from the
    # frozen fp32 model's distribution over all items for the same window (both through the
    # relaxed allocation); "sensitivity": predict each training window's expected sensitivity
    # (`chord_fl.hypernet.supervision`).
    objective: str = "next-item"
    sensitivity_samples: int = 16  # targets drawn per window for its expected sensitivity
    sensitivity_positions: int = 2  # supervised windows per training user: its last prefixes
    # The supervision targets' distribution is the frozen model's, sharpened as p^(1/T) when
    # T < 1 (`chord_fl.sensitivity.target_distribution`); the log-link networks start at the
    # same T. 1 was chosen on MovieLens-1M validation targets (docs/design.md, section 6).
    sensitivity_temperature: float = 1.0
    # Differentiate the budget multiplier implicitly (`relax.soft_codes`).
    implicit_budget: bool = False
    # Keep the item table's head (all its levels) at its initialisation, the frozen model's own
    # relevance of each item to the profile; the layer level can still rescale it as a whole.
    freeze_item_head: bool = False
    # Importance exponents tried on the untrained start (`chord_fl.validation`); the one with the
    # best validation score (and not lower than the first under the sampled protocol) is trained at.
    exponents: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    exponent_users: int = 2000  # validation users the exponent is chosen on

    def __post_init__(self) -> None:
        require_positive(
            self,
            "batch_users",
            "positions",
            "patience",
            "eval_users",
            "users_per_epoch",
            "sensitivity_samples",
            "sensitivity_positions",
            "exponent_users",
        )
        if self.epochs < 0:
            raise ConfigError(
                f"epochs must be >= 0 (0: the untrained initialisation), got {self.epochs}"
            )
        if min(self.lr, self.temperature, self.sensitivity_temperature) <= 0:
            raise ConfigError("lr, temperature and sensitivity_temperature must be > 0")
        if not self.select_margin >= 0:
            raise ConfigError(f"select_margin must be >= 0, got {self.select_margin}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if not self.exponents or min(self.exponents) <= 0:
            raise ConfigError(
                f"exponents must be a non-empty list of values > 0, got {self.exponents}"
            )
        if self.select_metric not in METRICS:
            raise ConfigError(f"select_metric must be one of {', '.join(METRICS)}")


def item_head_index(prepared: PreparedModel) -> int:
    """Position of the item table (rows = items) among the quantized tensors and their heads."""
    group = prepared.channels.rows_group(prepared.frozen.output_table)
    if group is not None:
        return prepared.channels.groups.index(group)
    raise ConfigError("the item table is not quantized by rows (embedding_axis 1): no item head")


@dataclass(frozen=True)
class Recipe:
    """One way to make hypernetworks: a network and the objective it is trained with."""

    network: HyperNetConfig
    objective: str

    @property
    def needs_supervision(self) -> bool:
        """Whether training it needs the sensitivity set (its objective or its prior)."""
        return self.objective == "sensitivity" or self.network.prior


def train_best(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    recipes: tuple[Recipe, ...],
    config: HyperTrainConfig = HyperTrainConfig(),
    progress: bool = True,
    supervision: SensitivitySet | None = None,
    processes: int | None = None,
    device: str = "auto",
) -> tuple[TieredHyperNet, FitResult, tuple[Recipe, Recipe]]:
    """Train every recipe (on the same validation users) and serve the best start and trained
    network among them (`serve_best`); returns the networks, the fit that decided (its seconds:
    the whole call's wall time) and the recipes of the start and the trained network served.

    `processes`: recipes trained at once, each in a process of its own with an equal share of
    this process's torch threads; None: `recipe_processes`. A recipe's result depends on its
    seed alone, up to the order of float sums that a different thread count (or `device`, as in
    `train_hypernet`) can change."""
    if not recipes:
        raise ConfigError("no recipe to train")
    if processes is None:
        processes = recipe_processes(len(recipes), len(split))
    if processes < 1:
        raise ConfigError(
            f"processes must be >= 1 (or None: as the split's size suggests), got {processes}"
        )
    processes = min(processes, len(recipes))
    started = time.perf_counter()
    jobs = [
        (prepared, split, fleet, recipe, config, progress and processes <= 1, supervision, device)
        for recipe in recipes
    ]
    if processes <= 1:
        fits = [_fit_recipe(*job) for job in jobs]
    else:
        threads = max(1, torch.get_num_threads() // processes)
        spawn = multiprocessing.get_context("spawn")  # forking a threaded process can deadlock
        with (
            ProcessPoolExecutor(processes, spawn, _use_threads, (threads,)) as pool,
            tqdm(total=len(jobs), desc="hypernet recipes", disable=not progress) as bar,
        ):
            # Plain pickles: multiprocessing would move tensors to memory both workers share,
            # and training writes into the prepared model's working copy.
            running = [pool.submit(_fit_pickled, pickle.dumps(job)) for job in jobs]
            try:
                for done in as_completed(running):
                    done.result()  # a recipe that failed stops the others now, not when done
                    bar.update()
            except BaseException:
                _stop_workers(pool)
                raise
            fits = [pickle.loads(future.result()) for future in running]  # our own workers'
    served, fit, chosen = serve_best(
        prepared, split, fleet, dict(zip(recipes, fits, strict=True)), config
    )
    return served, replace(fit, seconds=time.perf_counter() - started), chosen


def recipe_processes(recipes: int, users: int) -> int:
    """Processes that train `recipes` recipes for a split of `users` users: one per recipe, as
    many as this process has torch threads, where the split is large enough that training
    outweighs starting a process (importing torch: about 2 s). On MovieLens-100K (943 users),
    two epochs of each of the two default recipes took 49 s in two processes of one thread each
    and 67 s one after the other in one process of two threads (2 cores)."""
    if users < PARALLEL_USERS:
        return 1
    return max(1, min(recipes, torch.get_num_threads()))


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    # Python 3.14 has `terminate_workers`; before it, the pool's processes are private. The pool's
    # own thread reaps them as it shuts down: joining them here too would race it.
    for process in list((pool._processes or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _use_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _fit_pickled(job: bytes) -> bytes:
    return pickle.dumps(_fit_recipe(*pickle.loads(job)))


def _fit_recipe(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    recipe: Recipe,
    config: HyperTrainConfig,
    progress: bool,
    supervision: SensitivitySet | None,
    device: str,
) -> tuple[TieredHyperNet, FitResult]:
    recipe_config = replace(config, objective=recipe.objective)
    return train_hypernet(
        prepared, split, fleet, recipe.network, recipe_config, progress, supervision, device
    )


def train_hypernet(
    prepared: PreparedModel,
    split: RoundSplit,
    fleet: Fleet,
    net_config: HyperNetConfig = HyperNetConfig(),
    config: HyperTrainConfig = HyperTrainConfig(),
    progress: bool = True,
    supervision: SensitivitySet | None = None,
    device: str = "auto",
) -> tuple[TieredHyperNet, FitResult]:
    """Hypernetworks selected on validation targets: the start and the best trained epoch, each
    tier served the one it chose (`TieredHyperNet`). `supervision`: the sensitivity set to use
    (computed from training users' histories when needed and not given).

    The hypernetworks, the sensitivity set and the relaxation's steps run on `device` ("auto":
    a GPU when there is one); validation scores each device's quantized model on the CPU, as
    the phones would. The networks come back on the CPU."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    frozen = prepared.frozen.eval().requires_grad_(False)
    cloud = torch_device(device)
    cloud_frozen = on_device(frozen, cloud)  # one copy for every step that runs on the device
    budgets = tier_budgets(fleet, prepared.channels)
    histories = split.histories()

    window = config.profile_window or None
    validation = validation_devices(
        prepared, split, fleet, config.eval_users, rng, config.seed, window
    )

    hypernet = ChordHyperNet(
        frozen, prepared.channels, frozen.hidden_size, net_config, config.sensitivity_temperature
    )
    if supervision is None and Recipe(net_config, config.objective).needs_supervision:
        pool = np.sort(rng.permutation(len(histories))[: config.users_per_epoch])
        supervision = sensitivity_set(
            cloud_frozen,
            prepared.channels,
            training_windows(histories, pool, config.sensitivity_positions),
            config.sensitivity_samples,
            config.seed,
            window,
            progress,
            config.sensitivity_temperature,
        )
    if net_config.prior:
        hypernet.set_prior(supervision.prior)
    hypernet.to(cloud)
    if config.freeze_item_head:
        hypernet.heads[item_head_index(prepared)].requires_grad_(False)
    trained = [parameter for parameter in hypernet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=config.lr)

    def validate(devices: ValidationDevices = validation) -> Scores:
        return devices.score_network(prepared, hypernet.eval(), config.select_metric)

    def validate_at(exponent: float) -> Scores:
        hypernet.exponent.fill_(exponent)
        return validate(calibration())

    calibration = functools.cache(
        lambda: exponent_devices(prepared, split, fleet, config.exponent_users, config.seed, window)
    )

    if config.objective == "sensitivity":

        def epoch_losses() -> list[float]:
            return supervised_epoch(hypernet, optimizer, supervision, config.batch_users, rng)

    else:
        relaxation = Relaxation(prepared, cloud_frozen)
        relaxed = RelaxedEpoch(relaxation, histories, fleet, budgets, config, window)

        def epoch_losses() -> list[float]:
            return relaxed(hypernet, optimizer, rng)

    # Epoch 0 is the untrained initialisation at its chosen exponent, trained at that exponent;
    # the history shows whether training helped.
    exponent = choose_exponent(validate_at, config.exponents, config.sampled_guard)
    hypernet.exponent.fill_(exponent)
    scores = [validate()]
    # Each tier's mean is kept too: the tier guard's decisions can be read from the history.
    tiers = {t.name: validation.tiers == i for i, t in enumerate(fleet.tiers)}
    history = [{"epoch": 0, "loss": float("nan"), "exponent": exponent}]
    history[0].update(mean_scores(scores[0], tiers))
    states = {0: copy.deepcopy(hypernet.state_dict())}  # the start and the best trained epoch
    epochs = tqdm(range(1, config.epochs + 1), desc="hypernet", unit="epoch", disable=not progress)
    for epoch in epochs:
        hypernet.train()
        loss = float(np.mean(epoch_losses()))
        scores.append(validate())
        history.append({"epoch": epoch, "loss": loss, **mean_scores(scores[-1], tiers)})
        if best_trained_epoch(scores) == epoch:
            states = {0: states[0], epoch: copy.deepcopy(hypernet.state_dict())}
        epochs.set_postfix(loss=f"{loss:.4f}", val=f"{history[-1]['validation']:.4f}")
        if patience_spent(scores, config.patience):
            break
    kept = kept_epoch(scores, config.select_margin, config.sampled_guard)
    trained_at = [bool(kept)] * len(fleet.tiers)
    if kept and config.tier_guard:
        decision = decision_devices(prepared, split, fleet, validation, config.seed, window)
        trained_at = tier_decision(hypernet, states, validate, decision, fleet, config, history)
    served = served_networks(hypernet, states, budgets, trained_at).cpu()
    # The served networks' score on the epochs' validation users, each at its own tier.
    chosen = np.asarray(trained_at)[validation.tiers]
    best = max(states) if any(trained_at) else 0
    served_scores = np.where(chosen, scores[best]["full"], scores[0]["full"])
    result = FitResult(best, float(served_scores.mean()), 0.0, history)
    result.seconds = time.perf_counter() - start
    return served, result
