"""What a device's profile can tell the cloud when the backbone is random (`init=random`).

With a randomly initialised backbone, every code strategy recommends from the seeded weights, and
all the cloud learns about a device is its profile: the random model's encoding of the window. The
best any code strategy can do is bounded by the best recommendation the cloud could make from that
profile (codes can, at most, pick which items stay on the device: a pruned scoring row takes its
item off the list). This measures that bound, paired by device on test targets: readouts trained on
the cloud's history (next item from the profile of the items before it), each stopped on
validation targets, for the random backbone's profile and, as a check that the readouts work, for
a trained backbone's profile, against the popularity ranker.

    python benchmarks/random_init.py --dataset ml-100k --backbone sasrec
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from results_file import append_row, benchmark_parser, parse
from tqdm import tqdm

from chord_fl.evaluation import full_ranks
from chord_fl.experiment import INITS, Setup, load_backbone, load_split
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.supervision import training_windows
from chord_fl.machine import machine_line
from chord_fl.metrics import per_user_metrics

Readout = Callable[[torch.Tensor], torch.Tensor]  # (B, hidden) profiles -> (B, items + 1) scores


def ndcg(scores: torch.Tensor, windows: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Per-device full-ranking NDCG@10, window items left out (as every method is scored)."""
    ranks = full_ranks(scores.clone(), windows, torch.from_numpy(targets))
    return per_user_metrics(ranks.numpy())["ndcg@10"]


def neural_readouts(
    profiles: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, hidden: int, epochs: int
) -> Iterator[Readout]:
    """A softmax readout (linear when `hidden` is 0) after each epoch; its output bias starts at the
    log popularity: training starts from the popularity ranker."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(profiles.shape[1], hidden), torch.nn.GELU()] if hidden else []
    head = torch.nn.Linear(hidden or profiles.shape[1], len(prior))
    with torch.no_grad():
        head.weight.mul_(0.01)
        head.bias.copy_(prior)
    net = torch.nn.Sequential(*layers, head)
    mean, std = profiles.mean(0), profiles.std(0) + 1e-6
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        for batch in torch.randperm(len(targets)).split(256):
            loss = torch.nn.functional.cross_entropy(
                net((profiles[batch] - mean) / std), targets[batch]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        yield lambda p: net((p - mean) / std).detach()


def knn_readouts(profiles: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, items: int):
    """Next items of the k most similar training profiles (cosine), k from 10 to 1000; ties broken
    by popularity."""
    mean = profiles.mean(0)
    keys = torch.nn.functional.normalize(profiles - mean, dim=1)
    for k in (10, 30, 100, 300, 1000):

        def readout(p: torch.Tensor, k: int = k) -> torch.Tensor:
            similarity = torch.nn.functional.normalize(p - mean, dim=1) @ keys.T
            _, nearest = similarity.topk(k, dim=1)
            votes = torch.zeros(len(p), items).scatter_add_(
                1, targets[nearest], torch.ones(nearest.shape)
            )
            return votes + 1e-3 * prior / prior.max()

        yield readout


def run(args: argparse.Namespace) -> None:
    for init in args.inits:
        setup = Setup(args.dataset, args.backbone, args.data_dir or None, rounds=1, init=init)
        split = load_split(setup)
        model = load_backbone(setup, split, device=args.device)
        histories = split.histories()
        users = np.arange(len(split))
        pairs = [w for w in training_windows(histories, users, args.positions + 1) if len(w) > 1]
        train_targets = torch.tensor([w[-1] for w in pairs])
        train = torch.from_numpy(encode_profiles(model, [w[:-1] for w in pairs])).float()
        stages = {
            "validation": (split.windows(0), split.targets(0)),
            "test": (split.windows(1), split.targets(1)),
        }
        profiles = {
            name: torch.from_numpy(encode_profiles(model, windows)).float()
            for name, (windows, _) in stages.items()
        }
        counts = np.bincount(np.concatenate(histories), minlength=split.num_items + 1)
        prior = torch.log1p(torch.from_numpy(counts).float())
        popularity = ndcg(prior.expand(len(users), -1), *stages["test"])
        readouts = {
            "linear": neural_readouts(train, train_targets, prior, 0, args.epochs),
            "mlp": neural_readouts(train, train_targets, prior, 256, args.epochs),
            "knn": knn_readouts(train, train_targets, prior, split.num_items + 1),
        }
        for name, candidates in readouts.items():
            best, chosen = -1.0, None
            for step, readout in enumerate(tqdm(candidates, desc=f"{init} {name}", leave=False)):
                score = ndcg(readout(profiles["validation"]), *stages["validation"]).mean()
                if score > best:
                    best, chosen = score, (step, ndcg(readout(profiles["test"]), *stages["test"]))
            step, test = chosen
            difference = test - popularity
            row = {
                "dataset": args.dataset,
                "backbone": args.backbone,
                "init": init,
                "readout": name,
                "chosen_step": step,
                "validation_ndcg@10": float(best),
                "test_ndcg@10": float(test.mean()),
                "popularity_ndcg@10": float(popularity.mean()),
                "minus_popularity": float(difference.mean()),
                "standard_error": float(difference.std(ddof=1) / np.sqrt(len(difference))),
                "users": len(users),
                "training_pairs": len(pairs),
                "machine": machine_line(),
            }
            append_row(Path(args.results), row)
            z = row["minus_popularity"] / row["standard_error"]
            print(
                f"{args.dataset} {args.backbone} {init:<10} {name:<6} test NDCG@10 "
                f"{row['test_ndcg@10']:.4f}, popularity {row['popularity_ndcg@10']:.4f}: "
                f"{row['minus_popularity']:+.4f} +- {row['standard_error']:.4f} (z {z:+.1f})",
                flush=True,
            )


def main() -> None:
    parser = benchmark_parser(__doc__, "benchmarks/results/random-init-readouts.jsonl")
    parser.add_argument("--inits", nargs="+", choices=INITS, default=["random", "pretrained"])
    parser.add_argument("--positions", type=int, default=20, help="training pairs per user")
    parser.add_argument("--epochs", type=int, default=8, help="most epochs of each neural readout")
    run(parse(parser))


if __name__ == "__main__":
    main()
