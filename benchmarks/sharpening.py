"""Sharpening the window's sensitivity: which temperature of the frozen model's next-item
distribution gives the best allocation, where in the model the gain lies, and whether the profile
alone can carry it.

On each device's window (validation targets by default: this is how the temperatures of
`benchmarks/headroom.py --ceiling-temperature` and `HyperTrainConfig.sensitivity_temperature`
were chosen), every importance below goes through the same allocator at the same all-in budget,
and its NDCG@10 is paired by device against the plain Fisher (the window at T = 1):

- window-T: the window's expected sensitivity with targets drawn from p^(1/T), for each T;
- sharp-items / sharp-rest: the Fisher with only the item table's rows (or only the rest of the
  model) replaced by their shape at `--split-temperature`, each part keeping the Fisher's total,
  so one part's gain shows without the other's;
- logits-T: the Fisher with the item table's rows replaced by the softmax of the backbone's own
  logits over T (over every item, same total): what a profile-only item head, which cannot tell
  the window's own items from the rest, can give;
- window-T1+refined, global+refined: those allocations with the item table's rows re-allocated
  on the device (`chord_fl.refine`) within the bytes they gave the table;
- global: the `global` strategy's one importance for every device;
- oracle: the device's sensitivity to its actual target.

    python benchmarks/sharpening.py --dataset ml-1m --code-bits 0 2 3 4 --scales tensor \
        --checkpoint checkpoints/benchmark/ml-1m-sasrec.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from results_file import append_row, benchmark_parser, budget_of, paired, parse, prepared_backbone

from chord_fl.cli_options import add_quantizer_options
from chord_fl.cloud import evaluate_codes, issue_codes
from chord_fl.data.split import VALIDATION
from chord_fl.experiment import eval_devices
from chord_fl.machine import machine_line
from chord_fl.refine import refine_item_rows
from chord_fl.sensitivity import (
    SHARP_TEMPERATURE,
    expected_sensitivity,
    global_sensitivity,
    normalised,
    target_sensitivity,
)


def with_part(base: np.ndarray, shape: np.ndarray, part: np.ndarray) -> np.ndarray:
    """`base` with the channels in `part` given `shape`'s profile over them, at `base`'s total
    there (per device)."""
    scale = base[:, part].sum(1, keepdims=True) / shape[:, part].sum(1, keepdims=True)
    return np.where(part, shape * scale, base)


def logit_rows(frozen, windows: list[np.ndarray], temperature: float) -> np.ndarray:
    """(U, num_items + 1) softmax of the backbone's own logits over T, over every item."""
    with torch.no_grad():
        logits = frozen.full_scores(frozen.pad_windows(windows))
    return torch.softmax(logits.double() / temperature, dim=1).numpy()


def importances(
    args: argparse.Namespace, split, prepared, windows, targets
) -> dict[str, np.ndarray]:
    frozen, channels = prepared.frozen, prepared.channels
    item = np.zeros(channels.channels, dtype=bool)
    item[prepared.item_group.codes] = True

    def window(temperature: float) -> np.ndarray:
        return normalised(
            expected_sensitivity(
                frozen, channels, windows, args.samples, seed=1, temperature=temperature
            )
        )

    fisher = window(1.0)
    out = {"window-T1": fisher}
    for temperature in args.temperatures:
        if temperature != 1.0:
            out[f"window-T{temperature:g}"] = window(temperature)
    split_at = out.get(f"window-T{args.split_temperature:g}")
    if split_at is None:
        split_at = window(args.split_temperature)
    out["sharp-items"] = with_part(fisher, split_at, item)
    out["sharp-rest"] = with_part(fisher, split_at, ~item)
    for temperature in (1.0, args.split_temperature):
        rows = np.zeros_like(fisher)
        rows[:, prepared.item_group.codes] = logit_rows(frozen, windows, temperature)
        out[f"logits-T{temperature:g}"] = with_part(fisher, rows, item)
    out["global"] = np.broadcast_to(
        global_sensitivity(frozen, channels, split, samples=args.samples), fisher.shape
    )
    out["oracle"] = target_sensitivity(frozen, channels, windows, targets)
    return out


def run(args: argparse.Namespace) -> None:
    split, prepared = prepared_backbone(args)
    users, windows, targets, negatives = eval_devices(split, args.users)
    if args.stage == "validation":
        windows = [split.users[i].window(VALIDATION) for i in users]
        targets = split.targets(VALIDATION)[users]
    measured = importances(args, split, prepared, windows, targets)
    for bits in args.bits:
        budgets = np.full(len(users), budget_of(bits, prepared.channels))
        codes = {name: issue_codes(prepared, imp, budgets) for name, imp in measured.items()}
        for name in ("window-T1", "global"):
            codes[f"{name}+refined"] = np.array(
                [
                    refine_item_rows(prepared, device_codes, window, args.split_temperature)
                    for device_codes, window in zip(codes[name], windows, strict=True)
                ]
            )
        per_device = {
            name: evaluate_codes(prepared, windows, targets, device_codes, negatives)
            for name, device_codes in codes.items()
        }
        ndcg = {
            name: {protocol: m["ndcg@10"] for protocol, m in metrics.items()}
            for name, metrics in per_device.items()
        }
        print(f"\n{args.dataset} / {args.backbone} / {bits:g} bits / {args.stage} targets")
        print("| importance | NDCG@10 full | sampled | minus window-T1, full (z) | sampled (z) |")
        print("|---|---|---|---|---|")
        for name, scores in ndcg.items():
            diff = paired(scores, ndcg["window-T1"])
            cells = [f"{m:+.4f} ± {e:.4f} ({m / e if e else 0.0:+.1f})" for m, e in diff.values()]
            print(
                f"| {name} | {scores['full'].mean():.4f} | {scores['sampled'].mean():.4f} | "
                + " | ".join(cells)
                + " |"
            )
            append_row(
                Path(args.results),
                {
                    "importance": name,
                    "dataset": args.dataset,
                    "backbone": args.backbone,
                    "stage": args.stage,
                    "budget_bits": bits,
                    "code_bits": list(prepared.table.bits),
                    "scales": args.scales,
                    "users": len(users),
                    "samples": args.samples,
                    "ndcg@10": {p: float(v.mean()) for p, v in scores.items()},
                    "minus_window_T1": diff,
                    "machine": machine_line(),
                },
            )


def main() -> None:
    parser = benchmark_parser(__doc__, "benchmarks/results/sharpening.jsonl")
    add_quantizer_options(parser)
    parser.add_argument("--checkpoint", help="the frozen backbone (default: pretrain's)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--samples", type=int, default=16, help="targets per window")
    parser.add_argument("--bits", nargs="+", type=float, default=[2.5, 3.0])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 0.7, 0.5, 0.3, 0.15])
    parser.add_argument("--split-temperature", type=float, default=SHARP_TEMPERATURE)
    parser.add_argument("--stage", choices=("validation", "test"), default="validation")
    run(parse(parser))


if __name__ == "__main__":
    main()
