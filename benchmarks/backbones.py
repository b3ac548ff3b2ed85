"""Backbone sanity table: data set x backbone -> HR@10 and NDCG@10 (both protocols), time, machine.

Each finished row is appended to a JSON-lines file at once, so a long run loses nothing and several
processes (say one per core, `--threads 1`) can fill one table. The table is printed from that file.

    python benchmarks/backbones.py --datasets ml-100k ml-1m --backbones sasrec caser popularity
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from results_file import append_row, read_rows

from chord_fl.machine import machine_line
from chord_fl.pretrain import pretrain
from chord_fl.train import TrainConfig

# Settings chosen on validation targets only. SASRec follows its paper on MovieLens (max_len 200,
# dropout 0.2); Caser learns more slowly at lr 1e-3, so it gets 2e-3.
SETTINGS = {
    "sasrec": ({"hidden": 64, "max_len": 200, "dropout": 0.2}, {"lr": 1e-3}),
    "caser": ({"hidden": 64, "max_len": 200}, {"lr": 2e-3}),
    "popularity": ({}, {}),
}


def run_row(dataset: str, backbone: str, args: argparse.Namespace) -> dict:
    backbone_options, train_options = SETTINGS[backbone]
    train = TrainConfig(
        epochs=args.epochs, patience=args.patience, eval_every=args.eval_every, **train_options
    )
    checkpoint = Path(args.checkpoints) / f"{dataset}-{backbone}.pt"
    report = pretrain(
        dataset, backbone, args.data_dir, 1, train, backbone_options, checkpoint, progress=True
    )
    return {
        "dataset": dataset,
        "backbone": backbone,
        "users": report["users"],
        "items": report["items"],
        "test": report["test"],
        "validation": report["validation"],
        "best_epoch": report["best_epoch"],
        "epochs_run": report["epochs_run"],
        "train_seconds": report["train_seconds"],
        "machine": machine_line(),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| data set | backbone | items | HR@10 sampled | NDCG@10 sampled | HR@10 full | "
        "NDCG@10 full | epochs (best) | train s | machine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        sampled, full = row["test"]["sampled"], row["test"]["full"]
        lines.append(
            f"| {row['dataset']} | {row['backbone']} | {row['items']} | {sampled['hr@10']:.4f} | "
            f"{sampled['ndcg@10']:.4f} | {full['hr@10']:.4f} | {full['ndcg@10']:.4f} | "
            f"{row['epochs_run']} ({row['best_epoch']}) | {row['train_seconds']:.0f} | "
            f"{row['machine']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m"])
    parser.add_argument("--backbones", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--results", default="benchmarks/results/backbones.jsonl")
    parser.add_argument("--checkpoints", default="checkpoints/benchmark")
    parser.add_argument("--table-only", action="store_true", help="print the table and exit")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Path(args.results)
    if not args.table_only:
        for dataset in args.datasets:
            for backbone in args.backbones:
                row = run_row(dataset, backbone, args)
                append_row(results, row)
                print(table([row]), flush=True)
    rows = read_rows(results)
    print(f"\nTest targets, leave-one-out ({results}):\n")
    print(table(rows))


if __name__ == "__main__":
    main()
