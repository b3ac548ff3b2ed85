"""Can element-level sensitivity help when precision is chosen per channel? Its ceiling, measured.

The allocator weighs each channel's quantization error by one importance per channel. Knowing every
weight's sensitivity F_ck instead, it could weigh the error where it falls, sum_k F_ck d_ck(q)^2,
rather than (sum_k F_ck) (sum_k d_ck(q)^2) / K. For each test device this computes both from the
window's exact expected sensitivity (the window ceiling, per channel and per weight), allocates
each at the same budget, and compares, paired by device:

- the element-aware objective (the second-order loss estimate) each allocation reaches;
- the share of channels whose code differs;
- NDCG@10 on the devices' test targets, full and sampled.

If the channel-level allocation is as good as the element-aware one, no element-level map (ours
or any other) can improve channel codes, whatever its accuracy.

    python benchmarks/element_level.py --dataset ml-100k --backbone sasrec --users 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from results_file import append_row, benchmark_parser, budget_of, paired, paired_text, parse
from tqdm import tqdm

from chord_fl.cloud import evaluate_codes
from chord_fl.evaluation import PROTOCOLS
from chord_fl.experiment import Setup, eval_devices, load_backbone, load_split
from chord_fl.machine import machine_line
from chord_fl.quant.allocation import allocate, codes_error
from chord_fl.quant.budget import channel_budget
from chord_fl.quant.channels import channel_rows
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.sensitivity import expected_weight_sensitivity


def weight_errors(prepared: PreparedModel) -> np.ndarray:
    """(W, Q) squared quantization error of every weight at every code, code-vector order."""
    params = dict(prepared.frozen.named_parameters())
    parts = []
    for group in prepared.channels.groups:
        rows = channel_rows(params[group.name], group.channel_axis).detach()
        candidates = prepared.candidate_rows(group)  # (Q, C, K), code 0: zeros
        parts.append(((candidates - rows) ** 2).flatten(1).T.double().numpy())
    return np.concatenate(parts)


def run(args: argparse.Namespace) -> None:
    setup = Setup(
        args.dataset, args.backbone, args.data_dir or None, rounds=1, checkpoint=args.checkpoint
    )
    split = load_split(setup)
    prepared = PreparedModel(load_backbone(setup, split, device=args.device))
    channels = prepared.channels
    users, windows, targets, negatives = eval_devices(split, args.users)
    starts = np.cumsum([0, *channels.elements()[:-1]])
    errors = weight_errors(prepared)  # (W, Q)
    per_weight = np.stack(
        [
            expected_weight_sensitivity(prepared.frozen, channels, window)
            for window in tqdm(windows, desc="per-weight sensitivity")
        ]
    )  # (D, W)
    channel_importance = np.add.reduceat(per_weight, starts, axis=1)  # (D, C)
    elements = channels.elements()[None, :]
    for bits in args.bits:
        budget = budget_of(bits, channels)
        left = channel_budget(channels, np.array([budget]))
        by_channel = allocate(
            channel_importance / elements,
            prepared.errors,
            prepared.cost,
            np.full(len(users), left[0]),
        )
        by_weight = np.empty_like(by_channel)
        aware = np.empty((len(users), 2))  # element-aware objective of (by_channel, by_weight)
        for device in range(len(users)):
            table = np.add.reduceat(per_weight[device][:, None] * errors, starts, axis=0)  # (C, Q)
            by_weight[device] = allocate(
                np.ones((1, channels.channels)), table, prepared.cost, left
            )[0]
            for column, codes in enumerate((by_channel[device], by_weight[device])):
                aware[device, column] = codes_error(
                    codes[None], table, np.ones((1, channels.channels))
                )[0]
        metrics = {
            name: evaluate_codes(prepared, windows, targets, codes, negatives)
            for name, codes in (("channel", by_channel), ("weight", by_weight))
        }
        differences = paired(
            {p: metrics["weight"][p]["ndcg@10"] for p in PROTOCOLS},
            {p: metrics["channel"][p]["ndcg@10"] for p in PROTOCOLS},
        )
        row = {
            "dataset": args.dataset,
            "backbone": args.backbone,
            "budget_bits": bits,
            "users": len(users),
            "objective_ratio": float(np.median(aware[:, 0] / aware[:, 1])),
            "codes_differ": float((by_channel != by_weight).mean()),
            "weight_minus_channel": differences,
            "machine": machine_line(),
        }
        for name, by_protocol in metrics.items():
            row[name] = {p: float(by_protocol[p]["ndcg@10"].mean()) for p in PROTOCOLS}
        append_row(Path(args.results), row)
        print(
            f"{args.dataset} {args.backbone} {bits:g} bits, {len(users)} devices: element-aware "
            f"objective, channel-level allocation / element-aware allocation (median) "
            f"{row['objective_ratio']:.4f}; codes differ on {row['codes_differ']:.2%} of "
            f"channels; NDCG@10 element-aware minus channel-level: {paired_text(differences)}",
            flush=True,
        )


def main() -> None:
    parser = benchmark_parser(__doc__, "benchmarks/results/element-level.jsonl")
    parser.add_argument("--bits", nargs="+", type=float, default=[2.5, 3.0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--checkpoint", help="the frozen backbone (default: pretrain's cache)")
    run(parse(parser))


if __name__ == "__main__":
    main()
