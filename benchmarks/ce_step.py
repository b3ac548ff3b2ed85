"""Training-step time of the full-softmax cross-entropy: the library's chunked loss, in float32 and
in bfloat16 (`ce_dtype`), against plain autograd through the whole (positions x items) logits, on
the same batches of a real data set.

The three arms take the same batches (a fixed sample of one epoch's length-sorted batches) from
the same starting weights, alternating arm by arm `--repeats` times; the medians are scaled to a
whole epoch. Prints seconds per epoch for each arm and the ratios of neighbouring arms.

    python benchmarks/ce_step.py --dataset ml-1m --backbone sasrec
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    split = make_split(data, 1)
    model = seeded_backbone(args.backbone, data.num_items, 0)
    histories, lengths = training_sequences(split, model.max_len)
    epoch = list(padded_batches(histories, lengths, TrainConfig(), np.random.default_rng(0)))
    sample = epoch[: args.batches]
    arms = {
        "whole softmax (autograd)": whole_softmax_loss,
        "chunked": chunked_loss,
        "chunked, bfloat16": chunked_bfloat16_loss,
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, loss_of in arms.items():
            times[name].append(seconds_per_batch(model, loss_of, sample))
    print(
        f"{args.dataset} {args.backbone}: {len(epoch)} batches an epoch, {args.threads} threads; "
        f"{machine_line()}"
    )
    epoch_seconds = {name: statistics.median(t) * len(epoch) for name, t in times.items()}
    for name, seconds in epoch_seconds.items():
        print(f"  {name:26s} {seconds:6.1f} s an epoch")
    whole, chunked, bfloat16 = epoch_seconds.values()
    print(
        f"  whole / chunked: {whole / chunked:.2f}x; chunked / bfloat16: {chunked / bfloat16:.2f}x"
    )


if __name__ == "__main__":
    main()
