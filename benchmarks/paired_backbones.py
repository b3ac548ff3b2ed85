"""Two backbone checkpoints on the same test targets, paired by user: is one better beyond noise?

Prints each checkpoint's test NDCG@10 (full ranking and 100 sampled negatives, drawn with
`--negatives-seed`) and the paired difference (first minus second, mean +- standard error, z),
overall and for the users whose test window is longer than `--longer-than` items (where a shorter
input length could matter).

    python benchmarks/paired_backbones.py --dataset amazon-beauty \
        checkpoints/backbone-length/amazon-beauty-sasrec.pt \
        checkpoints/backbone-length200/amazon-beauty-sasrec.pt --longer-than 41
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from results_file import difference_text

from chord_fl.checkpoint import load_checkpoint
from chord_fl.data import load_dataset, make_split
from chord_fl.evaluation import protocol_ranks
from chord_fl.machine import machine_line
from chord_fl.metrics import per_user_metrics
from chord_fl.train import evaluation_negatives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir")
    parser.add_argument("--negatives-seed", type=int, default=0)
    parser.add_argument("--longer-than", type=int, default=0, help="0: no subgroup")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    split = make_split(load_dataset(args.dataset, args.data_dir), 1)
    windows, targets = split.windows(1), split.targets(1)
    negatives = evaluation_negatives(split, 100, args.negatives_seed)
    print(f"{args.dataset}, {len(split)} users; {machine_line()}")
    ndcg = []
    for path in (args.first, args.second):
        model, _ = load_checkpoint(path)
        if model.num_items != split.num_items:
            parser.error(
                f"{path} scores {model.num_items} items, {args.dataset} has {split.num_items}"
            )
        ranks = protocol_ranks(model, windows, targets, negatives)
        ndcg.append({p: per_user_metrics(r)["ndcg@10"] for p, r in ranks.items()})
        means = ", ".join(f"{p} {v.mean():.4f}" for p, v in ndcg[-1].items())
        print(f"  {path} (max_len {model.max_len}): NDCG@10 {means}")
    long = np.array([len(window) > args.longer_than for window in windows])
    for protocol in ndcg[0]:
        difference = ndcg[0][protocol] - ndcg[1][protocol]
        line = f"  first - second, {protocol}: {difference_text(difference)}"
        if long.any() and not long.all():
            line += (
                f"; windows longer than {args.longer_than} ({long.sum()} users) "
                f"{difference_text(difference[long])}, the others "
                f"{difference_text(difference[~long])}"
            )
        print(line)


if __name__ == "__main__":
    main()
