"""Rank each user's target under the two protocols and turn ranks into metrics."""

from __future__ import annotations

import numpy as np
import torch

from chord_fl.data.sequences import PADDING
from chord_fl.data.split import RoundSplit, pad_left
from chord_fl.metrics import mean_metrics, pessimistic_ranks
from chord_fl.models import SequentialRecommender

PROTOCOLS = ("full", "sampled")


def target_ranks(
    model: SequentialRecommender,
    windows: list[np.ndarray],
    targets: np.ndarray,
    negatives: np.ndarray | None = None,
    exclude_seen: bool = True,
    batch_size: int = 256,
) -> np.ndarray:
    """0-based pessimistic rank of each target.

    With `negatives` (U, N): among the target and its N negatives ("sampled" protocol). Without:
    among all items ("full"), leaving out items already in the window when `exclude_seen`.
    """
    protocol = "full" if negatives is None else "sampled"
    return protocol_ranks(
        model, windows, targets, negatives, (protocol,), exclude_seen, batch_size
    )[protocol]


@torch.no_grad()
def protocol_ranks(
    model: SequentialRecommender,
    windows: list[np.ndarray],
    targets: np.ndarray,
    negatives: np.ndarray | None,
    protocols: tuple[str, ...] = PROTOCOLS,
    exclude_seen: bool = True,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Ranks under each of `protocols` ("sampled" needs `negatives`), every batch encoded once."""
    was_training = model.training
    if was_training:  # switching modes walks every module: only when needed
        model.eval()
    ranks: dict[str, list[torch.Tensor]] = {protocol: [] for protocol in protocols}
    for start in range(0, len(windows), batch_size):
        stop = start + batch_size
        batch_windows = windows[start:stop]
        seqs = model.pad_windows(batch_windows)
        target = torch.from_numpy(np.asarray(targets[start:stop], dtype=np.int64)).to(seqs.device)
        states = model.encode(seqs)
        if "sampled" in ranks:
            batch_negatives = torch.from_numpy(negatives[start:stop]).to(seqs.device)
            candidates = torch.cat([target[:, None], batch_negatives], 1)
            scores = model.score_encoded(states, candidates)
            ranks["sampled"].append(pessimistic_ranks(scores, scores[:, 0]))
        if "full" not in ranks:
            continue
        scores = model.full_scores_encoded(states)
        ranks["full"].append(full_ranks(scores, batch_windows, target, exclude_seen))
    if was_training:
        model.train()
    return {protocol: torch.cat(parts).cpu().numpy() for protocol, parts in ranks.items()}


def full_ranks(
    scores: torch.Tensor,
    windows: list[np.ndarray],
    targets: torch.Tensor,
    exclude_seen: bool = True,
) -> torch.Tensor:
    """Pessimistic ranks of `targets` among all items of (B, num_items + 1) `scores` (modified in
    place), leaving out the windows' items when `exclude_seen`."""
    target_scores = scores.gather(1, targets[:, None]).squeeze(1)
    if exclude_seen:
        seen = torch.from_numpy(pad_left(windows, max(map(len, windows))))
        scores.scatter_(1, seen.to(scores.device), float("-inf"))
        # A repeated item may be both seen and the target: the target always competes.
        scores.scatter_(1, targets[:, None], target_scores[:, None])
    scores[:, PADDING] = float("-inf")
    return pessimistic_ranks(scores, target_scores)


def evaluate_stages(
    model: SequentialRecommender,
    split: RoundSplit,
    stages: list[int],
    negatives: np.ndarray,
    protocols: tuple[str, ...] = PROTOCOLS,
    exclude_seen: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean metrics over every user's target at each of `stages`, per protocol."""
    result = {}
    for protocol in protocols:
        ranks = [
            target_ranks(
                model,
                split.windows(stage),
                split.targets(stage),
                negatives if protocol == "sampled" else None,
                exclude_seen,
            )
            for stage in stages
        ]
        result[protocol] = mean_metrics(np.concatenate(ranks))
    return result
