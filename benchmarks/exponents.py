"""Importance exponent sweep: each method's importances raised to gamma before allocation, scored
on the same devices' validation targets (never test targets), beside the strong uniform model.

This is the measurement behind the default exponents (`HyperTrainConfig.exponents`) and the
`global` strategy's calibration (`chord_fl.validation`): the untrained start and the trained
relaxation are trained once at exponent 1 and then allocated at every gamma.

    python benchmarks/exponents.py --dataset ml-1m \
        --checkpoint checkpoints/benchmark/ml-1m-sasrec.pt
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from results_file import (
    append_row,
    benchmark_parser,
    budget_of,
    importances_at,
    parse,
    prepared_backbone,
    read_rows,
    relaxation_networks,
)

from chord_fl.cli_options import add_quantizer_options
from chord_fl.cloud import evaluate_codes, issue_codes
from chord_fl.data.split import VALIDATION
from chord_fl.experiment import eval_devices, evaluate_method
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.machine import machine_line
from chord_fl.methods import Cloud
from chord_fl.metrics import mean_and_standard_error
from chord_fl.sensitivity import global_sensitivity
from chord_fl.validation import sharpened

METHODS = ("global", "init-relax", "chord-relax")


def importances(prepared, split, profiles: np.ndarray, seed: int, device: str):
    """(D, C) importance of `global` at exponent 1, and the relaxation's networks trained there."""
    shared = global_sensitivity(prepared.frozen, prepared.channels, split)
    fixed = {"global": np.broadcast_to(shared, (len(profiles), len(shared)))}
    return fixed, relaxation_networks(prepared, split, seed, (1.0,), device)


def run(args, results: Path) -> None:
    split, prepared = prepared_backbone(args)
    users, windows, targets, negatives = eval_devices(split, args.eval_users, stage=VALIDATION)
    profiles = encode_profiles(prepared.frozen, windows)
    fixed, networks = importances(prepared, split, profiles, args.seed, args.device)
    common = dict(
        dataset=args.dataset,
        backbone=args.backbone,
        code_bits=list(prepared.table.bits),
        scales=args.scales,
        seed=args.seed,
        users=len(users),
        targets="validation",
        machine=machine_line(),
    )
    for bits in args.bits:
        budgets = np.full(len(users), budget_of(bits, prepared.channels))
        found = fixed | importances_at(networks, profiles, budgets)
        cloud = Cloud(prepared)
        row, per_device = evaluate_method(
            "uniform", cloud, windows, targets, profiles, budgets, negatives, args.seed
        )
        scored = [("uniform", 1.0, per_device)]
        for method, importance in found.items():
            for exponent in args.exponents:
                codes = issue_codes(prepared, sharpened(importance, exponent), budgets)
                scored.append(
                    (method, exponent, evaluate_codes(prepared, windows, targets, codes, negatives))
                )
        for method, exponent, per_device in scored:
            row = {"method": method, "exponent": exponent, "budget_bits": bits, **common}
            for protocol, metrics in per_device.items():
                row[f"{protocol}_per_device"] = metrics["ndcg@10"].round(6).tolist()
            append_row(results, row)
            print(f"{bits:g} bits {method:<12} gamma {exponent:<6g} {summary(row)}", flush=True)


def summary(row: dict) -> str:
    return " / ".join(f"{np.mean(row[f'{p}_per_device']):.4f}" for p in ("full", "sampled"))


def difference(row: dict, reference: dict, protocol: str) -> str:
    """`row` minus `reference` per device: mean +- standard error (z)."""
    per_device = np.subtract(row[f"{protocol}_per_device"], reference[f"{protocol}_per_device"])
    mean, error = mean_and_standard_error(per_device)
    return f"{mean:+.4f} ± {error:.4f}" + (f" ({mean / error:+.1f})" if error else "")


def table(rows: list[dict]) -> str:
    """Per setting and budget: each method and exponent, and its paired difference from the
    uniform model (mean +- standard error, z), full / sampled."""
    groups = defaultdict(list)
    for row in rows:
        key = (row["dataset"], row["backbone"], tuple(row["code_bits"]), row["scales"])
        groups[key + (row["budget_bits"], row["seed"], row["users"])].append(row)
    out = []
    for (dataset, backbone, codes, scales, bits, seed, users), group in sorted(groups.items()):
        uniform = next(r for r in group if r["method"] == "uniform")
        out.append(
            f"\n{dataset} / {backbone} / codes {'-'.join(map(str, codes))} / {scales} scales / "
            f"{bits:g} bits / seed {seed} / {users} devices, validation targets\n"
        )
        out.append("| method | exponent | NDCG@10 full / sampled | minus uniform, full | sampled |")
        out.append("|---|---|---|---|---|")
        for row in group:
            protocols = ("full", "sampled")
            cells = [difference(row, uniform, p) if row is not uniform else "-" for p in protocols]
            label = "" if row["method"] == "uniform" else f"{row['exponent']:g}"
            out.append(f"| {row['method']} | {label} | {summary(row)} | {' | '.join(cells)} |")
    return "\n".join(out)


def main() -> None:
    parser = benchmark_parser(__doc__, "benchmarks/results/exponents.jsonl.gz")
    add_quantizer_options(parser)
    parser.add_argument("--checkpoint")
    parser.add_argument("--bits", nargs="+", type=float, default=[2.5, 3.0])
    parser.add_argument("--exponents", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.125])
    parser.add_argument("--eval-users", type=int, default=6040)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table-only", action="store_true")
    args = parse(parser)
    results = Path(args.results)
    if not args.table_only:
        run(args, results)
    print(table(read_rows(results)))


if __name__ == "__main__":
    main()
