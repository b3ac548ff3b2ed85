"""Headroom: where CHORD sits between the strongest non-personalised allocation and what a perfect
profile-to-sensitivity map could reach, on the same devices and budgets, paired by device.

Every method below issues codes through the same allocator at the same all-in budgets (uniform
and fp32 aside), and every device is scored on its own test target:

- oracle: the device's sensitivity to its actual test target (a ceiling no method can deploy);
- window: its expected sensitivity over the frozen model's predictive distribution for its real
  window, sharpened to `--ceiling-temperature` (what a perfect map from the window to sensitivity
  could output: the window ceiling); window-fisher: the same at temperature 1 (the plain Fisher),
  when the ceiling's temperature is another;
- chord-relax: hypernetworks trained through the relaxed allocation;
  init-relax: the same networks untrained (the backbone's own item scores, softplus), at the
  importance exponent chosen on validation;
- chord-sens: hypernetworks trained by sensitivity supervision (log link, cloud-wide prior);
  init-sens: the same networks untrained (the prior, with the backbone's own item scores);
- chord-sens-relax (only with `--learned`): the supervised recipe's networks trained through the
  relaxed allocation from that start; init-sens-relax: untrained, the same as init-sens;
- chord: what the `chord` strategy serves from both recipes (`serve_best`: the best untrained
  start, and a trained network at the tiers where it does not lose to it, provided it beats it
  over them; of several such, the one that serves the fleet best on the decision users); with
  `--learned`, what `serve_best` serves from the recipes named there;
- global: the mean expected sensitivity of training users' history windows, each normalised, raised
  to the exponent chosen on validation (the project's `global` strategy); global-target: the
  earlier estimate, the mean squared gradient of the same users' realised last history items;
- uniform (widest of 1..8 bits, per-channel or per-tensor scales), random, fp32;
- global+refined, chord+refined: those codes with the item table's rows re-allocated on each
  device for its own window (`chord_fl.refine`), within the bytes the codes gave the table.

A learned variant serves a budget of the sweep that lies between two tiers of the fleet that
chose differently by a decision of its own on the decision users (`decide_budgets`);
`--tiers-only` gives it the start there, as before.

Diagnoses: `--targets validation` scores the same devices on their validation targets (the ones
hypernetwork training selects on) instead; `--train-at-budget` trains the hypernetworks for each
budget on a fleet of that budget alone, not on the default fleet's tiers.

Rows go to a JSON-lines file as they are measured; the tables are printed from it:

    python benchmarks/headroom.py --dataset ml-100k --backbone sasrec --bits 2.5 3
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from headroom_report import method_order, pareto_figure, tables
from results_file import (
    append_row,
    at_budgets,
    budget_of,
    importances_at,
    prepared_backbone,
    read_rows,
)

from chord_fl.cli_options import add_device_option, add_quantizer_options, add_selection_options
from chord_fl.cloud import evaluate_codes, issue_codes
from chord_fl.data.split import VALIDATION
from chord_fl.experiment import eval_devices, evaluate_method
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.serving import serve_best
from chord_fl.hypernet.supervision import (
    SensitivitySet,
    log_ratio_loss,
    sensitivity_set,
    training_windows,
)
from chord_fl.hypernet.tiered import TieredHyperNet
from chord_fl.hypernet.training import HyperTrainConfig, train_hypernet
from chord_fl.machine import machine_line, on_device
from chord_fl.methods import CHORD_VARIANTS, Cloud, calibrated_global
from chord_fl.quant.budget import coded_bytes
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.refine import refine_item_rows
from chord_fl.sensitivity import (
    SHARP_TEMPERATURE,
    expected_sensitivity,
    global_sensitivity,
    normalised,
    target_sensitivity,
)
from chord_fl.tiers import DEFAULT_FLEET, Fleet

CEILINGS = ("oracle", "window", "window-fisher")
FIXED = ("fp32", "uniform", "random")  # scored through the method registry
LEARNED = ("chord-relax", "chord-sens")  # by default; "init*": the same networks untrained
REFINED = "+refined"  # suffix: the base method's codes, refined on the device (chord_fl.refine)


def realised_target_sensitivity(frozen, channels, split, max_users: int = 1000) -> np.ndarray:
    """The earlier global estimate: mean squared gradient of users' realised last history item."""
    users = np.sort(np.random.default_rng([0, 0x676C6F62]).permutation(len(split))[:max_users])
    histories = [split.users[i].history for i in users]
    windows, targets = [h[:-1] for h in histories], np.array([h[-1] for h in histories])
    return target_sensitivity(frozen, channels, windows, targets).mean(axis=0)


def print_fit(
    importances: dict[str, np.ndarray], window: np.ndarray, prepared: PreparedModel
) -> None:
    """How close each method's importances come to the test windows' own expected sensitivity:
    the supervision loss (squared log ratio, scale-free), overall and on the output item table."""
    target = torch.from_numpy(normalised(window)).float()
    table = prepared.frozen.output_table
    item = next(g for g in prepared.channels.groups if g.name == table).codes
    for name, importance in importances.items():
        if name in CEILINGS:
            continue
        predicted = torch.from_numpy(np.ascontiguousarray(importance)).float()
        whole = log_ratio_loss(predicted, target).item()
        rows = log_ratio_loss(predicted[:, item], target[:, item]).item()
        print(f"  fit to the window ceiling: {name:<13} all {whole:.3f}, item table {rows:.3f}")


def train_config(args: argparse.Namespace, seed: int) -> HyperTrainConfig:
    """The hypernetworks' training settings of the run (also the global exponent's choice)."""
    return HyperTrainConfig(
        epochs=args.hypernet_epochs,
        lr=args.hypernet_lr,
        seed=seed,
        sensitivity_samples=args.samples,
        sensitivity_temperature=args.sensitivity_temperature,
        select_margin=args.select_margin,
        sampled_guard=not args.no_sampled_guard,
        tier_guard=not args.no_tier_guard,
        wider_than_losses=args.wider_than_losses,
        exponents=tuple(args.exponents),
    )


def learned_networks(
    prepared: PreparedModel,
    split,
    supervision: SensitivitySet | None,
    seed: int,
    fleet: Fleet,
    args: argparse.Namespace,
) -> dict[str, TieredHyperNet]:
    """The networks of each learned recipe and of its untrained start, for one seed, and of
    `chord`: what the `chord` variant serves from the trained recipes (`serve_best`)."""
    out, fits = {}, {}
    for name in args.learned:
        (recipe,) = CHORD_VARIANTS[name].recipes
        for epochs, label in ((0, name.replace("chord", "init")), (args.hypernet_epochs, name)):
            config = replace(train_config(args, seed), epochs=epochs, objective=recipe.objective)
            start = time.perf_counter()
            net, fit = train_hypernet(
                prepared, split, fleet, recipe.network, config, True, supervision, args.device
            )
            out[label] = net
            if epochs:
                fits[recipe] = (net, fit)
            history = [
                (h["epoch"], round(h["validation"], 4), round(h["validation_sampled"], 4))
                for h in fit.history
            ]
            # The tier guard's paired z of the best trained epoch against the start, by tier.
            tier_z = {
                key.removeprefix("tier_z_"): round(value, 1)
                for row in fit.history
                for key, value in row.items()
                if key.startswith("tier_z_")
            }
            print(
                f"  {label}: exponent {fit.history[0]['exponent']:g}, best epoch "
                f"{fit.best_epoch} (serving tiers {net.trained_tiers(fleet.names)}), validation "
                f"{history} tier z {tier_z} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    if fits:
        net, fit, (start, trained) = serve_best(
            prepared, split, fleet, fits, train_config(args, seed)
        )
        print(
            f"  chord: the start of {start.objective}, the trained {trained.objective} at tiers "
            f"{net.trained_tiers(fleet.names)} (validation {fit.best_score:.4f})",
            flush=True,
        )
        out["chord"] = net
    return out


def run(args: argparse.Namespace, results: Path) -> None:
    split, prepared = prepared_backbone(args)
    channels = prepared.channels
    frozen = on_device(prepared.frozen, args.device)  # the cloud's sensitivities
    stage = VALIDATION if args.targets == "validation" else 1
    users, windows, targets, negatives = eval_devices(split, args.eval_users, stage=stage)
    profiles = encode_profiles(prepared.frozen, windows)

    start = time.perf_counter()
    everyone = (len(users), channels.channels)
    measures = {
        "oracle": lambda: target_sensitivity(frozen, channels, windows, targets),
        "window": lambda: expected_sensitivity(
            frozen, channels, windows, args.samples, seed=1, temperature=args.ceiling_temperature
        ),
        "window-fisher": lambda: expected_sensitivity(
            frozen, channels, windows, args.samples, seed=1
        ),
        "global": lambda: np.broadcast_to(
            calibrated_global(
                prepared,
                split,
                DEFAULT_FLEET,
                global_sensitivity(frozen, channels, split, samples=args.samples),
                train_config(args, seed=0),
            ),
            everyone,
        ),
        "global-target": lambda: np.broadcast_to(
            realised_target_sensitivity(frozen, channels, split), everyone
        ),
    }
    if args.ceiling_temperature == 1.0:
        del measures["window-fisher"]  # the window ceiling itself
    fixed = {
        name: measure()
        for name, measure in measures.items()
        if not args.methods or name in args.methods
    }
    # The supervision set of every seed's sensitivity-supervised training, when one is trained.
    supervision = None
    if any(CHORD_VARIANTS[name].recipes[0].needs_supervision for name in args.learned):
        pool = np.sort(np.random.default_rng(0).permutation(len(split))[: args.supervision_users])
        windows_seen = training_windows(
            split.histories(), pool, HyperTrainConfig().sensitivity_positions
        )
        supervision = sensitivity_set(
            frozen,
            channels,
            windows_seen,
            args.samples,
            seed=0,
            temperature=args.sensitivity_temperature,
        )
    print(f"sensitivities: {time.perf_counter() - start:.0f} s", flush=True)

    for seed in args.seeds:
        learned = {}  # by the budget trained at (None: the default fleet's tiers)
        for bits in args.bits:
            trained_at = bits if args.train_at_budget else None
            if trained_at not in learned:
                torch.manual_seed(seed)
                fleet = Fleet.at_bits(bits) if args.train_at_budget else DEFAULT_FLEET
                networks = learned_networks(prepared, split, supervision, seed, fleet, args)
                if not args.tiers_only:
                    sweep = args.bits if trained_at is None else [bits]
                    config = train_config(args, seed)
                    networks = at_budgets(networks, sweep, prepared, split, fleet, config)
                learned[trained_at] = networks
            budgets = np.full(len(users), budget_of(bits, channels))
            importances = fixed | importances_at(learned[trained_at], profiles, budgets)
            if "window" in fixed and learned[trained_at]:
                print_fit(importances, fixed["window"], prepared)
            refinable = [f"{m}{REFINED}" for m in ("global", "chord") if m in importances]
            available = sorted([*FIXED, *importances, *refinable], key=method_order)
            for method in [m for m in available if not args.methods or m in args.methods]:
                if method in FIXED:
                    row, per_device = evaluate_method(
                        method,
                        Cloud(prepared),
                        windows,
                        targets,
                        profiles,
                        budgets,
                        negatives,
                        seed,
                    )
                else:
                    base = method.removesuffix(REFINED)
                    codes = issue_codes(prepared, importances[base], budgets)
                    if method.endswith(REFINED):
                        codes = np.array(
                            [
                                refine_item_rows(prepared, device_codes, window)
                                for device_codes, window in zip(codes, windows, strict=True)
                            ]
                        )
                    per_device = evaluate_codes(prepared, windows, targets, codes, negatives)
                    bits_used = prepared.table.array[codes] * channels.elements()
                    row = {
                        "method": method,
                        "avg_bits": float(bits_used.sum(1).mean() / channels.weights),
                        "model_bytes": float(coded_bytes(channels, prepared.table, codes).mean()),
                    }
                row.update(
                    code_bits=list(prepared.table.bits),
                    scales=args.scales,
                    ceiling_temperature=args.ceiling_temperature,
                    sensitivity_temperature=args.sensitivity_temperature,
                    dataset=args.dataset,
                    backbone=args.backbone,
                    budget_bits=bits,
                    seed=seed,
                    users=len(users),
                    samples=args.samples,
                    hypernet_epochs=args.hypernet_epochs,
                    hypernet_lr=args.hypernet_lr,
                    exponents=args.exponents,
                    trained_at="budget" if args.train_at_budget else "tiers",
                    budget_rule="tiers" if args.tiers_only else "decided",
                    targets=args.targets,
                    machine=machine_line(),
                )
                for protocol, metrics in per_device.items():
                    row[protocol] = {"ndcg@10": float(metrics["ndcg@10"].mean())}
                    row[f"{protocol}_per_device"] = metrics["ndcg@10"].round(6).tolist()
                append_row(results, row)
                print(
                    f"{args.dataset} {args.backbone} {bits:g} bits seed {seed} {method:<13} "
                    f"ndcg@10 full {row['full']['ndcg@10']:.4f} "
                    f"sampled {row['sampled']['ndcg@10']:.4f} ({row['avg_bits']:.2f} bits)",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--bits", nargs="+", type=float, default=[2.5, 3.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", help="what to score (default: everything)")
    parser.add_argument(
        "--learned",
        nargs="+",
        choices=[name for name, v in CHORD_VARIANTS.items() if len(v.recipes) == 1],
        default=list(LEARNED),
        help="CHORD variants to train (each also scored untrained, as init*)",
    )
    add_quantizer_options(parser)
    parser.add_argument("--eval-users", type=int, default=1000)
    parser.add_argument(
        "--supervision-users", type=int, default=2000, help="training users for chord-sens"
    )
    parser.add_argument("--samples", type=int, default=16, help="targets per window (Fisher)")
    parser.add_argument(
        "--ceiling-temperature",
        type=float,
        default=SHARP_TEMPERATURE,
        help="the window ceiling's targets are drawn from the backbone's p^(1/T)",
    )
    parser.add_argument("--hypernet-epochs", type=int, default=HyperTrainConfig.epochs)
    parser.add_argument("--hypernet-lr", type=float, default=HyperTrainConfig.lr)
    parser.add_argument(
        "--targets",
        choices=("test", "validation"),
        default="test",
        help="score the devices on their test targets or (a diagnosis) their validation targets",
    )
    parser.add_argument(
        "--no-sampled-guard",
        action="store_true",
        help="keep a trained epoch on its full-ranking margin alone (the rule before 2026-12-04)",
    )
    parser.add_argument(
        "--train-at-budget",
        action="store_true",
        help="train the hypernetworks for each budget on its own, not on the default fleet's tiers",
    )
    parser.add_argument(
        "--tiers-only",
        action="store_true",
        help="serve a budget between the fleet's tiers as the tiers decided (the rule before "
        "README's 'Budgets between tiers'), not by a decision of its own",
    )
    add_selection_options(parser)
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--checkpoint", help="the frozen backbone (default: trained once and cached by pretrain)"
    )
    parser.add_argument("--threads", type=int)
    add_device_option(parser)
    parser.add_argument("--results", default="benchmarks/results/headroom.jsonl")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--plot", help="write the budget sweep figure (PNG) of the run's setting")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Path(args.results)
    if not args.table_only:
        run(args, results)
    rows = read_rows(results)
    print(f"\nNDCG@10 paired by device, test targets unless a table says otherwise ({results}):")
    print(tables(rows))
    if args.plot:
        print(f"figure: {pareto_figure(rows, args.dataset, args.backbone, Path(args.plot))}")


if __name__ == "__main__":
    main()
