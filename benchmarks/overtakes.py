"""Which sampled negatives overtake a device's target once its model is quantized, by the width
its allocation gave the negative's item row.

Under the sampled protocol a target competes with 100 random items, mostly unpopular ones. An
allocation driven by expected sensitivity gives unpopular items' rows few bits (the frozen model
gives them little probability), so their quantized scores are noisy; this counts how often such a
row's score reaches the target's, against the fp32 model and against the uniform model at the same
budget. The allocation is the window ceiling (each device's own expected sensitivity), the best
any profile-to-sensitivity map could output.

    python benchmarks/overtakes.py --dataset ml-1m --bits 3 --code-bits 0 2 3 4 --scales tensor \
        --checkpoint checkpoints/benchmark/ml-1m-sasrec.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from results_file import append_row, benchmark_parser, budget_of, parse, prepared_backbone
from tqdm import tqdm

from chord_fl.cli_options import add_quantizer_options
from chord_fl.cloud import issue_codes
from chord_fl.experiment import eval_devices
from chord_fl.machine import machine_line
from chord_fl.quant.budget import widest_uniform
from chord_fl.quant.uniform import quantize_uniform
from chord_fl.sensitivity import expected_sensitivity


@torch.no_grad()
def overtaken(model, seq: torch.Tensor, target: int, negatives: np.ndarray) -> np.ndarray:
    """(N,) True where a negative scores at least the target (ties count against, as in ranks)."""
    scores = model.full_scores(seq)[0]
    return (scores[torch.from_numpy(negatives)] >= scores[target]).numpy()


def run(args: argparse.Namespace) -> dict:
    split, prepared = prepared_backbone(args)
    frozen, channels = prepared.frozen, prepared.channels
    users, windows, targets, negatives = eval_devices(split, args.users)

    budget = budget_of(args.bits, channels)
    window = expected_sensitivity(frozen, channels, windows, args.samples, seed=1)
    codes = issue_codes(prepared, window, np.full(len(users), budget))
    bits, per_tensor = widest_uniform(channels, budget)
    uniform = quantize_uniform(frozen, channels, bits, per_tensor).model
    seqs = frozen.pad_windows(windows)
    beats = {name: [] for name in ("fp32", "uniform", "window")}
    for u in tqdm(range(len(users)), desc="devices", unit="device"):
        allocated = prepared.dequantized(codes[u], fresh_model=False)
        for name, model in (("fp32", frozen), ("uniform", uniform), ("window", allocated)):
            beats[name].append(overtaken(model, seqs[u : u + 1], targets[u], negatives[u]))
    beats = {name: np.array(rows) for name, rows in beats.items()}
    row_codes = codes[:, prepared.item_group.codes][np.arange(len(users))[:, None], negatives]

    by_width = []
    for code, width in enumerate(prepared.table.bits):
        held = row_codes == code
        rates = {name: float(b[held].mean()) if held.any() else 0.0 for name, b in beats.items()}
        by_width.append({"bits": width, "share": float(held.mean()), **rates})
    return {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "budget_bits": args.bits,
        "code_bits": list(prepared.table.bits),
        "scales": args.scales,
        "uniform_bits": bits,
        "users": len(users),
        "overtaking": {name: float(b.sum(1).mean()) for name, b in beats.items()},
        "by_width": by_width,
        "machine": machine_line(),
    }


def report(row: dict) -> str:
    lines = [
        f"{row['dataset']} / {row['backbone']} / {row['budget_bits']:g} bits / codes "
        f"{'-'.join(map(str, row['code_bits']))} / {row['scales']} scales, {row['users']} devices",
        "",
        "negatives at or above the target, per device: "
        + ", ".join(f"{name} {count:.2f}" for name, count in row["overtaking"].items()),
        "",
        "| item row at (window allocation) | share of negatives | overtake: fp32 | "
        f"uniform {row['uniform_bits']} bits | window | window excess over fp32, per device |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for entry in row["by_width"]:
        excess = entry["share"] * (entry["window"] - entry["fp32"]) * 100
        lines.append(
            f"| {entry['bits']} bits | {entry['share']:.3f} | {entry['fp32']:.4f} | "
            f"{entry['uniform']:.4f} | {entry['window']:.4f} | {excess:+.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__, "benchmarks/results/overtakes.jsonl")
    parser.add_argument("--checkpoint", help="the frozen backbone (default: pretrain's)")
    parser.add_argument("--bits", type=float, default=3.0, help="all-in budget of every device")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--samples", type=int, default=16, help="targets per window (Fisher)")
    add_quantizer_options(parser)
    args = parse(parser)
    row = run(args)
    append_row(Path(args.results), row)
    print(report(row))


if __name__ == "__main__":
    main()
