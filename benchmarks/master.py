"""The 8-bit master against the fp32 download: bytes once, and what it costs in accuracy, paired by
device on test targets, through the same world, cloud and codes as a federated run.

Every device of the data set gets one budget (`--bits` all-in average bits) and is scored with each
method twice: holding the fp32 backbone, and holding its 8-bit master (`master=int8`). Each master
has its own cloud (hypernetworks trained, global sensitivity measured, on the weights the devices
hold), cached like a run's.

    python benchmarks/master.py --dataset ml-100k --backbone sasrec --methods uniform global chord
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from results_file import append_row, benchmark_parser, paired, paired_text, parse

from chord_fl.evaluation import PROTOCOLS
from chord_fl.experiment import evaluate_method
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.world import load_cloud, load_world
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.machine import machine_line
from chord_fl.quant.master import MASTERS, master_bytes


def single_tier(bits: float) -> str:
    """The run config's `tiers` setting of one tier at `bits` average bits."""
    return (
        f'tier = [{{name = "{bits:g}-bit", share = 1.0, uplink_bps = 1e6, downlink_bps = 1e6, '
        f"speed = 1.0, availability = 1.0, avg_bits = {bits}}}]"
    )


def run(args: argparse.Namespace) -> None:
    per_device: dict[tuple[str, str, str], np.ndarray] = {}
    downloads = {}
    for master in MASTERS:
        for method in args.methods:
            config = RunConfig(
                strategy=method,
                dataset=args.dataset,
                backbone=args.backbone,
                data_dir=args.data_dir,
                rounds=1,
                tiers=single_tier(args.bits),
                master=master,
                checkpoint_dir=args.checkpoint_dir,
                cloud_device=args.device,
            )
            world = load_world(config, progress=True)  # cached: one per master
            if master not in downloads:
                downloads[master] = master_bytes(world.prepared.frozen, master)
                windows = world.split.windows(1)
                profiles = encode_profiles(world.prepared.frozen, windows)
            cloud = load_cloud(world, method, config, progress=True)
            row, metrics = evaluate_method(
                method,
                cloud,
                windows,
                world.split.targets(1),
                profiles,
                world.budgets,
                world.negatives,
            )
            for protocol, values in metrics.items():
                per_device[master, method, protocol] = values["ndcg@10"]
            print(
                f"{args.dataset} {args.backbone} {method:<8} {master} master: NDCG@10 full "
                f"{row['full']['ndcg@10']:.4f} sampled {row['sampled']['ndcg@10']:.4f} "
                f"({row['avg_bits']:.2f} bits, {row['model_bytes']:.0f} B)",
                flush=True,
            )
    print(
        f"download once: fp32 {downloads['fp32']:,} B, int8 master {downloads['int8']:,} B "
        f"({downloads['fp32'] / downloads['int8']:.2f}x smaller)"
    )
    for method in args.methods:
        differences = paired(
            {p: per_device["int8", method, p] for p in PROTOCOLS},
            {p: per_device["fp32", method, p] for p in PROTOCOLS},
        )
        row = {
            "dataset": args.dataset,
            "backbone": args.backbone,
            "method": method,
            "budget_bits": args.bits,
            "devices": len(per_device["fp32", method, "full"]),
            "download_fp32": downloads["fp32"],
            "download_int8": downloads["int8"],
            "int8_minus_fp32": differences,
            "machine": machine_line(),
        }
        for protocol in PROTOCOLS:
            row[protocol] = {m: float(per_device[m, method, protocol].mean()) for m in MASTERS}
        append_row(Path(args.results), row)
        print(f"{method:<8} int8 minus fp32 master, NDCG@10: {paired_text(differences)}")


def main() -> None:
    parser = benchmark_parser(__doc__, "benchmarks/results/master.jsonl")
    parser.add_argument("--bits", type=float, default=3.0)
    parser.add_argument("--methods", nargs="+", default=["uniform", "global", "chord"])
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    run(parse(parser))


if __name__ == "__main__":
    main()
