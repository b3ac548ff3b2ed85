"""Whether the tier guard's evidence carries: a trained recipe's best epoch against its untrained
start, paired by device, at every tier of the fleet, on three sets of devices:

- selection: the validation users training scored its epochs on and the guard decides on
  (`chord_fl.selection.serves_every_tier`);
- other users: every other training user, on its validation target (never seen by the choice);
- test: every user on its test target.

The guard sees only the first. If the others disagree with it, its evidence was selection noise
(the best of many epochs on the same users) or validation targets that do not stand for test ones.

    python benchmarks/tier_decision.py --dataset ml-1m --backbone sasrec \
        --checkpoint checkpoints/benchmark/ml-1m-sasrec.pt --seeds 0
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from results_file import append_row, benchmark_parser, parse, prepared_backbone

from chord_fl.cli_options import add_quantizer_options
from chord_fl.cloud import tier_budgets
from chord_fl.data.split import VALIDATION, RoundSplit
from chord_fl.hypernet.networks import ChordHyperNet
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.training import HyperTrainConfig, train_hypernet
from chord_fl.machine import machine_line
from chord_fl.methods import CHORD_VARIANTS
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.selection import Scores, selection_negatives, serves_every_tier, tier_differences
from chord_fl.tiers import DEFAULT_FLEET
from chord_fl.validation import ValidationDevices, validation_devices

TEST = 1  # the stage of the test targets in a one-round split


def devices_of(
    prepared: PreparedModel, split: RoundSplit, users: np.ndarray, stage: int, seed: int
) -> ValidationDevices:
    """`users` on their `stage` targets, each at every tier (tier-major)."""
    windows = [split.users[i].window(stage) for i in users]
    devices = ValidationDevices(
        users=users,
        windows=windows,
        targets=split.targets(stage)[users],
        tiers=np.zeros(len(users), dtype=np.int64),  # any: at_every_tier sets every tier
        tier_budgets=tier_budgets(DEFAULT_FLEET, prepared.channels),
        negatives=selection_negatives(split, users, seed),
        profiles=encode_profiles(prepared.frozen, windows),
    )
    return devices.at_every_tier()


def scores_of(
    nets: dict[str, ChordHyperNet], devices: ValidationDevices, prepared: PreparedModel
) -> dict[str, Scores]:
    metric = HyperTrainConfig.select_metric
    return {name: devices.score_network(prepared, net, metric) for name, net in nets.items()}


def main() -> None:
    parser = benchmark_parser(__doc__, "benchmarks/results/tier-decision.jsonl")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--variant", default="chord-relax", choices=["chord-relax", "chord-sens"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    add_quantizer_options(parser)
    args = parse(parser)
    split, prepared = prepared_backbone(args)
    (recipe,) = CHORD_VARIANTS[args.variant].recipes
    tiers = [tier.name for tier in DEFAULT_FLEET.tiers]
    shares = [tier.share for tier in DEFAULT_FLEET.tiers]
    for seed in args.seeds:
        start = HyperTrainConfig(seed=seed, objective=recipe.objective)
        # The best trained epoch whatever the guard says: the guard runs after training, so the
        # trajectory and the validation users are the default's.
        best = replace(start, select_margin=0.0, sampled_guard=False, tier_guard=False)
        nets = {}
        for name, config in (("start", replace(start, epochs=0)), ("trained", best)):
            torch.manual_seed(seed)
            nets[name], fit = train_hypernet(
                prepared, split, DEFAULT_FLEET, recipe.network, config, progress=False
            )
        print(f"seed {seed}: best trained epoch {fit.best_epoch}", flush=True)
        if not fit.best_epoch:
            print("  no trained epoch above the start on validation: nothing to compare")
            continue
        rng = np.random.default_rng(seed)  # train_hypernet's first draw: its validation users
        chosen = validation_devices(prepared, split, DEFAULT_FLEET, start.eval_users, rng, seed)
        others = np.setdiff1d(np.arange(len(split)), chosen.users)
        sets = {
            "selection": (chosen.users, VALIDATION),
            "other users": (others, VALIDATION),  # none where every user validates
            "test": (np.arange(len(split)), TEST),
        }
        for set_name, (users, stage) in sets.items():
            if not len(users):
                continue
            devices = devices_of(prepared, split, users, stage, seed)
            scores = scores_of(nets, devices, prepared)
            keeps = serves_every_tier(
                scores["trained"], scores["start"], shares, start.select_margin, start.tier_margin
            )
            for protocol in scores["start"]:
                differences = tier_differences(
                    scores["trained"], scores["start"], len(tiers), protocol
                )
                cells = []
                for tier, (gain, error) in zip(tiers, differences, strict=True):
                    cells.append(f"{tier} {gain:+.4f} ({gain / error:+.1f})")
                    append_row(
                        Path(args.results),
                        {
                            "dataset": args.dataset,
                            "backbone": args.backbone,
                            "variant": args.variant,
                            "seed": seed,
                            "best_epoch": fit.best_epoch,
                            "devices": set_name,
                            "users": len(devices.users) // len(tiers),
                            "protocol": protocol,
                            "tier": tier,
                            "gain": gain,
                            "error": error,
                            "guard_keeps": keeps,
                            "machine": machine_line(),
                        },
                    )
                print(
                    f"  {set_name:<11} {protocol:<7} ({len(devices.users) // len(tiers)} users): "
                    f"{', '.join(cells)}; the guard's rule here: {'keep' if keeps else 'start'}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
