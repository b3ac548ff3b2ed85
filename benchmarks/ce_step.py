"""Training-step time of the full-softmax cross-entropy: the library's chunked loss, in float32 and
in bfloat16 (`ce_dtype`), against plain autograd through the whole (positions x items) logits, on
the same batches of a real data set. With `--dropout P` (SASRec), two more arms train with dropout
P everywhere and the bfloat16 loss: torch's dropout masks and fused attention
(`fast_dropout=False`) against the library's cheaper masks.

The arms take the same batches (a fixed sample of one epoch's length-sorted batches) from the
same starting weights, alternating arm by arm `--repeats` times; the medians are scaled to a whole
epoch. Prints seconds per epoch for each arm, and the ratios of the three loss arms in turn
and of the two dropout arms.

    python benchmarks/ce_step.py --dataset ml-1m --backbone sasrec
    python benchmarks/ce_step.py --dataset ml-1m --backbone sasrec --dropout 0.2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from chord_fl.data import load_dataset, make_split
from chord_fl.machine import machine_line
from chord_fl.models import SequentialRecommender, seeded_backbone
from chord_fl.train import TrainConfig, padded_batches, training_sequences


def whole_softmax_loss(model: SequentialRecommender, seqs: torch.Tensor) -> torch.Tensor:
    states, targets = model.training_states(seqs)
    return F.cross_entropy(model.full_scores_encoded(states), targets)


def chunked_loss(model: SequentialRecommender, seqs: torch.Tensor) -> torch.Tensor:
    return model.training_loss(seqs, "ce")


def chunked_bfloat16_loss(model: SequentialRecommender, seqs: torch.Tensor) -> torch.Tensor:
    return model.training_loss(seqs, "ce", ce_dtype="bfloat16")


def seconds_per_batch(start: SequentialRecommender, loss_of, sample: list[torch.Tensor]) -> float:
    model = copy.deepcopy(start).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=TrainConfig().lr)
    began = time.perf_counter()
    for seqs in sample:
        loss = loss_of(model, seqs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - began) / len(sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--data-dir")
    parser.add_argument("--batches", type=int, default=12, help="batches timed per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dropout", type=float, default=0.0, help="SASRec: add the dropout arms")
    args = parser.parse_args()
    if args.dropout and args.backbone != "sasrec":
        parser.error("--dropout compares SASRec's dropout masks; use --backbone sasrec")
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    split = make_split(data, 1)
    model = seeded_backbone(args.backbone, data.num_items, 0)
    histories, lengths = training_sequences(split, model.max_len)
    epoch = list(padded_batches(histories, lengths, TrainConfig(), np.random.default_rng(0)))
    sample = epoch[: args.batches]
    arms = {
        "whole softmax (autograd)": (model, whole_softmax_loss),
        "chunked": (model, chunked_loss),
        "chunked, bfloat16": (model, chunked_bfloat16_loss),
    }
    if args.dropout:
        for fast, name in ((False, "torch's dropout"), (True, "fast dropout")):
            rate = {"dropout": args.dropout, "attention_dropout": args.dropout}
            dropping = seeded_backbone("sasrec", data.num_items, 0, **rate, fast_dropout=fast)
            arms[f"bfloat16, {name} {args.dropout:g}"] = (dropping, chunked_bfloat16_loss)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, (start, loss_of) in arms.items():
            times[name].append(seconds_per_batch(start, loss_of, sample))
    print(
        f"{args.dataset} {args.backbone}: {len(epoch)} batches an epoch, {args.threads} threads; "
        f"{machine_line()}"
    )
    epoch_seconds = [statistics.median(t) * len(epoch) for t in times.values()]
    for name, seconds in zip(arms, epoch_seconds, strict=True):
        print(f"  {name:34s} {seconds:6.1f} s an epoch")
    pairs = [(0, 1), (1, 2)] + ([(3, 4)] if args.dropout else [])
    names = list(arms)
    print(
        "  "
        + "; ".join(
            f"{names[a]} / {names[b]}: {epoch_seconds[a] / epoch_seconds[b]:.2f}x" for a, b in pairs
        )
    )


if __name__ == "__main__":
    main()
