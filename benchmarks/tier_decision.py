"""Whether the tier guard's evidence carries: a trained recipe's best epoch against its untrained
start, paired by device, at every tier of the fleet, on three sets of devices:

- selection: the validation users training scored its epochs on;
- other users: every other training user, on its validation target (never seen by the epoch's
  choice; the tier guard decides on as many of them, `chord_fl.validation.decision_devices`);
- test: every user on its test target.

If the selection users disagree with the others, their evidence was selection noise (the best of
many epochs on the same users); if the others disagree with test, validation targets do not stand
for test ones. Each row records whether the per-tier rule (`chord_fl.selection.tier_choices`)
would serve the trained epoch to that tier on that set.

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
from chord_fl.data.split import VALIDATION
from chord_fl.hypernet.networks import ChordHyperNet
from chord_fl.hypernet.serving import limits
from chord_fl.hypernet.training import HyperTrainConfig, train_hypernet
from chord_fl.machine import machine_line
from chord_fl.methods import CHORD_VARIANTS
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.selection import Scores, tier_choices, tier_differences
from chord_fl.tiers import DEFAULT_FLEET
from chord_fl.validation import ValidationDevices, devices_of, validation_devices

TEST = 1  # the stage of the test targets in a one-round split


def scores_of(
    nets: dict[str, ChordHyperNet], devices: ValidationDevices, prepared: PreparedModel
) -> dict[str, Scores]:
    """Each network's scores on `devices`."""
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
    for seed in args.seeds:
        start = HyperTrainConfig(seed=seed, objective=recipe.objective)
        # The best trained epoch whatever the guard says: the guard runs after training, so the
        # trajectory and the validation users are the default's.
        best = replace(start, select_margin=0.0, sampled_guard=False, tier_guard=False)
        nets = {}
        for name, config in (("start", replace(start, epochs=0)), ("trained", best)):
            torch.manual_seed(seed)
            served, fit = train_hypernet(
                prepared, split, DEFAULT_FLEET, recipe.network, config, False, device=args.device
            )
            nets[name] = served.trained if name == "trained" else served.start
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
            devices = devices_of(prepared, split, DEFAULT_FLEET, users, seed, stage=stage)
            devices = devices.at_every_tier()
            scores = scores_of(nets, devices, prepared)
            chooses = tier_choices(
                scores["trained"],
                scores["start"],
                DEFAULT_FLEET.shares,
                start.select_margin,
                budgets=limits(devices, start),
            )
            for protocol in scores["start"]:
                differences = tier_differences(
                    scores["trained"], scores["start"], len(tiers), protocol
                )
                cells = []
                for tier, (gain, error), chosen in zip(tiers, differences, chooses, strict=True):
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
                            "chooses_trained": chosen,
                            "machine": machine_line(),
                        },
                    )
                print(
                    f"  {set_name:<11} {protocol:<7} ({len(devices.users) // len(tiers)} users): "
                    f"{', '.join(cells)}; the rule here serves it to "
                    f"{', '.join(t for t, c in zip(tiers, chooses, strict=True) if c) or 'none'}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
