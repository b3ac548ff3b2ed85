"""CHORD against every comparator at equal bytes per device: HR/NDCG@5/10 under both protocols.

For each data set and backbone: the frozen backbone (leave-one-out cloud split), the cloud-wide
sensitivity for the global strategy, then per seed the hypernetworks of CHORD and its ablations
(trained on histories, selected on validation targets), then for each budget every method's codes
for every evaluated device, scored on the test targets. Each result row is appended to a JSON-lines
file at once; the table (mean and standard deviation over seeds) is printed from that file. Every
CHORD variant is also compared with every other method device by device (NDCG@10, per-device
differences averaged over seeds, with their standard error over devices) in a second file,
`<results>-paired.jsonl`: the same users score every method, so the paired difference is far
less noisy than the gap between two means.

    python benchmarks/accuracy.py --datasets ml-100k --backbones sasrec caser --bits 2 3 4
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from results_file import append_row, budget_of, read_rows

from chord_fl.cli import parse_pairs
from chord_fl.cli_options import add_device_option, add_exponent_option
from chord_fl.errors import ConfigError
from chord_fl.experiment import (
    INITS,
    Setup,
    eval_devices,
    evaluate_method,
    load_backbone,
    load_split,
)
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.training import HyperTrainConfig, train_best
from chord_fl.machine import machine_line, on_device
from chord_fl.methods import CHORD_VARIANTS, METHODS, Cloud, calibrated_global
from chord_fl.metrics import mean_and_standard_error
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.sensitivity import global_sensitivity
from chord_fl.tiers import DEFAULT_FLEET


def paired_path(results: Path) -> Path:
    return results.with_name(f"{results.stem}-paired{results.suffix}")


def paired_rows(ndcg: dict[tuple[float, str], list[dict[str, np.ndarray]]]) -> list[dict]:
    """Each CHORD variant minus each non-CHORD method at the same budget: per-device NDCG@10
    differences averaged over seeds, then their mean and standard error over devices.

    `ndcg[bits, method]` holds one {protocol: per-device NDCG@10} per seed, in seed order."""
    rows = []
    for (bits, method), ours in ndcg.items():
        if method not in CHORD_VARIANTS:
            continue
        for (other_bits, other), theirs in ndcg.items():
            if other_bits != bits or other in CHORD_VARIANTS:
                continue
            row: dict = {"budget_bits": bits, "method": method, "versus": other}
            row["seeds"] = len(ours)
            for protocol in ours[0]:
                pairs = zip(ours, theirs, strict=True)
                differences = np.mean([a[protocol] - b[protocol] for a, b in pairs], axis=0)
                mean, error = mean_and_standard_error(differences)
                row[protocol] = {"difference": mean, "standard_error": error}
            rows.append(row)
    return rows


def run(dataset: str, backbone: str, args: argparse.Namespace, results: Path) -> None:
    setup = Setup(dataset, backbone, args.data_dir, rounds=1, init=args.init)
    split = load_split(setup)
    backbone_model = load_backbone(setup, split, device=args.device)
    prepared = PreparedModel(backbone_model, pruned_items=args.pruned_items)
    users, windows, targets, negatives = eval_devices(split, args.eval_users)
    profiles = encode_profiles(prepared.frozen, windows)
    cloud_frozen = on_device(prepared.frozen, args.device)
    importance = global_sensitivity(cloud_frozen, prepared.channels, split)
    calibration = HyperTrainConfig(exponents=tuple(args.exponents))
    importance = calibrated_global(prepared, split, DEFAULT_FLEET, importance, calibration)
    cloud = Cloud(prepared, global_importance=importance)
    ndcg: dict[tuple[float, str], list[dict[str, np.ndarray]]] = defaultdict(list)
    for seed in args.seeds:
        torch.manual_seed(seed)
        train_seconds = {}
        for method in args.methods:
            if method in CHORD_VARIANTS:
                recipes = CHORD_VARIANTS[method].recipes
                options = args.hypernet_options
                config = HyperTrainConfig(
                    epochs=args.hypernet_epochs,
                    seed=seed,
                    exponents=tuple(args.exponents),
                    **options,
                )
                net, fit, _ = train_best(
                    prepared, split, DEFAULT_FLEET, recipes, config, device=args.device
                )
                cloud.hypernets[method] = net
                train_seconds[method] = fit.seconds
        for bits in args.bits:
            budgets = np.full(len(users), budget_of(bits, prepared.channels))
            for method in args.methods:
                start = time.perf_counter()
                row, per_device = evaluate_method(
                    method, cloud, windows, targets, profiles, budgets, negatives, seed
                )
                ndcg[bits, method].append({p: m["ndcg@10"] for p, m in per_device.items()})
                row.update(
                    dataset=dataset,
                    backbone=backbone,
                    init=args.init,
                    pruned_items=args.pruned_items,
                    budget_bits=bits,
                    seed=seed,
                    users=len(users),
                    eval_seconds=round(time.perf_counter() - start, 2),
                    hypernet_seconds=round(train_seconds.get(method, 0.0), 2),
                    hypernet_options=args.hypernet_options,
                    machine=machine_line(),
                )
                append_row(results, row)
                print(
                    f"{dataset} {backbone} {bits:g} bits seed {seed} {method:<17} "
                    f"ndcg@10 full {row['full']['ndcg@10']:.4f} "
                    f"sampled {row['sampled']['ndcg@10']:.4f} ({row['avg_bits']:.2f} bits)",
                    flush=True,
                )
    for row in paired_rows(ndcg):
        row.update(dataset=dataset, backbone=backbone, init=args.init, users=len(users))
        row.update(pruned_items=args.pruned_items, hypernet_options=args.hypernet_options)
        row["machine"] = machine_line()
        append_row(paired_path(results), row)


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        key = (row["dataset"], row["backbone"], row["init"], row["budget_bits"], row["method"])
        groups[key].append(row)
    metrics = [(p, m) for p in ("full", "sampled") for m in ("hr@5", "hr@10", "ndcg@5", "ndcg@10")]
    header = "| data set | backbone | init | budget | method | seeds | avg bits | KiB | "
    header += " | ".join(f"{m} {p}" for p, m in metrics) + " |"
    lines = [header, "|" + "---|" * (8 + len(metrics))]
    order = {name: i for i, name in enumerate(METHODS)}
    for key in sorted(groups, key=lambda k: (*k[:4], order.get(k[4], 99))):
        group = groups[key]

        def stat(values: list[float]) -> str:
            return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

        cells = [stat([r[p][m] for r in group]) for p, m in metrics]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:g} bits | {key[4]} | {len(group)} | "
            f"{np.mean([r['avg_bits'] for r in group]):.2f} | "
            f"{np.mean([r['model_bytes'] for r in group]) / 1024:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def compact_table(rows: list[dict]) -> str:
    """NDCG@10 (full / sampled) per method and budget, one block per data set and backbone."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        cells[
            (row["dataset"], row["backbone"], row["init"], row["method"], row["budget_bits"])
        ].append(row)
    setups = sorted({key[:3] for key in cells})
    budgets = sorted({key[4] for key in cells})
    order = {name: i for i, name in enumerate(METHODS)}
    header = "| data set / backbone / init | method | " + " | ".join(
        f"{b:g} bits: NDCG@10 full / sampled" for b in budgets
    )
    lines = [header + " |", "|---|---|" + "---|" * len(budgets)]
    for setup in setups:
        methods = sorted({key[3] for key in cells if key[:3] == setup}, key=lambda m: order[m])
        for method in methods:
            values = []
            for bits in budgets:
                group = cells.get((*setup, method, bits), [])
                if not group:
                    values.append("-")
                    continue
                full = np.mean([r["full"]["ndcg@10"] for r in group])
                sampled = np.mean([r["sampled"]["ndcg@10"] for r in group])
                values.append(f"{full:.4f} / {sampled:.4f} (n={len(group)})")
            lines.append(f"| {' / '.join(setup)} | {method} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def paired_table(rows: list[dict]) -> str:
    """The latest paired comparison per setting: difference ± standard error (z)."""
    latest = {}
    for row in rows:
        key = (row["dataset"], row["backbone"], row["init"], row["budget_bits"], row["method"])
        setting = (row["pruned_items"], json.dumps(row.get("hypernet_options", {}), sort_keys=True))
        latest[(*key, row["versus"], *setting)] = row
    lines = [
        "| data set / backbone / init / setting | budget | CHORD variant minus | seeds | devices | "
        "NDCG@10 full: difference ± s.e. (z) | sampled |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted(latest):
        row = latest[key]
        cells = []
        for protocol in ("full", "sampled"):
            difference = row[protocol]["difference"]
            error = row[protocol]["standard_error"]
            if error:
                cells.append(f"{difference:+.4f} ± {error:.4f} ({difference / error:+.1f})")
            else:
                cells.append(f"{difference:+.4f}")
        options = ", ".join(f"{k}={v}" for k, v in row.get("hypernet_options", {}).items())
        setting = " / ".join(filter(None, (*key[:3], row["pruned_items"], options)))
        lines.append(
            f"| {setting} | {key[3]:g} bits | {key[4]} minus {key[5]} | "
            f"{row['seeds']} | {row['users']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def hypernet_options(parser: argparse.ArgumentParser, pairs: list[str]) -> dict:
    # The objective comes from each variant's recipes; the exponents have an option of their own.
    own_options = {"epochs", "seed", "objective", "exponents"}
    fields = set(HyperTrainConfig.__dataclass_fields__) - own_options
    try:
        options = {k.replace("-", "_"): v for k, v in parse_pairs(pairs, "--hypernet").items()}
    except ConfigError as error:
        parser.error(str(error))
    unknown = sorted(set(options) - fields)
    if unknown:
        parser.error(f"--hypernet: unknown keys {unknown}; known: {sorted(fields)}")
    try:
        HyperTrainConfig(**options)  # a bad value fails here, before anything is trained
    except (ConfigError, TypeError) as error:
        parser.error(f"--hypernet: {error}")
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k"])
    parser.add_argument("--backbones", nargs="+", default=["sasrec", "caser"])
    parser.add_argument("--bits", nargs="+", type=float, default=[2.0, 3.0, 4.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--init", choices=INITS, default="pretrained")
    parser.add_argument("--pruned-items", choices=("exclude", "zero"), default="exclude")
    parser.add_argument("--hypernet-epochs", type=int, default=HyperTrainConfig.epochs)
    add_exponent_option(parser)
    parser.add_argument("--eval-users", type=int, default=1000, help="test users per data set")
    parser.add_argument(
        "--hypernet",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="hypernetwork training options (HyperTrainConfig fields), e.g. objective=distill",
    )
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int)
    add_device_option(parser)
    parser.add_argument("--results", default="benchmarks/results/accuracy.jsonl")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    args.hypernet_options = hypernet_options(parser, args.hypernet)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Path(args.results)
    if not args.table_only:
        for dataset in args.datasets:
            for backbone in args.backbones:
                run(dataset, backbone, args, results)
    rows = read_rows(results)
    print(f"\nTest targets, mean ± std over seeds ({results}):\n")
    print(table(rows))
    print(f"\nNDCG@10 on test targets, mean over seeds (n = seeds):\n\n{compact_table(rows)}")
    paired = read_rows(paired_path(results))
    if paired:
        print(f"\nPaired NDCG@10 differences on the same devices:\n\n{paired_table(paired)}")


if __name__ == "__main__":
    main()
