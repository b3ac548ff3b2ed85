"""Byte shares: where each allocation puts its bits, tensor by tensor (mean stored bits per weight
over the devices, pruned channels counting 0), at equal all-in budgets.

It shows what a precision strategy decides at the layer level: the relaxation-trained CHORD
networks and their start, `global`, and the window ceiling sharpened to T = 0.3 (the ceiling that
sits at fp32 on MovieLens-1M, README "All 6,040 MovieLens-1M devices"); `global` and the starts at
the importance exponent validation chooses (`--exponents 1`: as they are, the rows before it):

    python benchmarks/byte_shares.py --dataset ml-1m \
        --checkpoint checkpoints/benchmark/ml-1m-sasrec.pt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from results_file import (
    append_row,
    benchmark_parser,
    budget_of,
    importances_at,
    parse,
    prepared_backbone,
    relaxation_networks,
)

from chord_fl.cli_options import add_exponent_option, add_quantizer_options
from chord_fl.cloud import issue_codes
from chord_fl.experiment import eval_devices
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.training import HyperTrainConfig
from chord_fl.machine import machine_line
from chord_fl.methods import calibrated_global
from chord_fl.sensitivity import SHARP_TEMPERATURE, expected_sensitivity, global_sensitivity
from chord_fl.tiers import DEFAULT_FLEET


def main() -> None:
    parser = benchmark_parser(__doc__, results="benchmarks/results/byte-shares.jsonl")
    add_quantizer_options(parser)
    parser.add_argument("--checkpoint", help="the frozen backbone (default: pretrain's cache)")
    parser.add_argument("--bits", type=float, nargs="+", default=[2.5, 3.0])
    parser.add_argument("--eval-users", type=int, default=500)
    parser.add_argument("--samples", type=int, default=16, help="targets per window (Fisher)")
    parser.add_argument("--seed", type=int, default=0, help="the hypernetworks' seed")
    add_exponent_option(parser)
    args = parse(parser)
    split, prepared = prepared_backbone(args)
    frozen, channels = prepared.frozen, prepared.channels
    users, windows, _, _ = eval_devices(split, args.eval_users)
    profiles = encode_profiles(frozen, windows)

    exponents = tuple(args.exponents)
    networks = relaxation_networks(prepared, split, args.seed, exponents, args.device)
    importances = {}
    everyone = (len(users), channels.channels)
    shared = global_sensitivity(frozen, channels, split, samples=args.samples)
    calibration = HyperTrainConfig(seed=args.seed, exponents=exponents)
    shared = calibrated_global(prepared, split, DEFAULT_FLEET, shared, calibration)
    importances["global"] = np.broadcast_to(shared, everyone)
    importances[f"window T={SHARP_TEMPERATURE:g}"] = expected_sensitivity(
        frozen, channels, windows, args.samples, seed=1, temperature=SHARP_TEMPERATURE
    )

    names = [group.name for group in channels.groups]
    for bits in args.bits:
        budgets = np.full(len(users), budget_of(bits, channels))
        importances |= importances_at(networks, profiles, budgets)
        print(f"\n{args.dataset} / {args.backbone} / {bits:g} bits, {len(users)} test devices")
        print("| method | " + " | ".join(f"`{name}`" for name in names) + " |")
        print("|---|" + "---:|" * len(names))
        item_rows = []  # the output item table's rows by width: a pruned item is never shown
        for method, importance in importances.items():
            widths = prepared.table.array[issue_codes(prepared, importance, budgets)]
            cells = [float(widths[:, g.codes].mean()) for g in channels.groups]
            print(f"| {method} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
            rows = widths[:, channels.rows_group(frozen.output_table).codes]
            shares = {f"{w} bits": float((rows == w).mean()) for w in prepared.table.bits}
            item_rows.append(f"| {method} | " + " | ".join(f"{v:.1%}" for v in shares.values()))
            row = {
                "dataset": args.dataset,
                "backbone": args.backbone,
                "budget_bits": bits,
                "method": method,
                "seed": args.seed,
                "users": len(users),
                "code_bits": list(args.code_bits),
                "scales": args.scales,
                "exponents": list(exponents),
                "bits_per_weight": dict(zip(names, cells, strict=True)),
                "item_rows_by_width": shares,
                "machine": machine_line(),
            }
            append_row(Path(args.results), row)
        print("\nitem rows by stored width\n\n| method | " + " | ".join(shares) + " |")
        print("|---|" + "---:|" * len(shares) + "\n" + "\n".join(item_rows))


if __name__ == "__main__":
    main()
