"""Rank each user's target under the two protocols and turn ranks into metrics."""

from __future__ import annotations

import numpy as np
import torch

from chord_fl.data.sequences import PADDING
from chord_fl.data.split import RoundSplit, pad_left
from chord_fl.metrics import mean_metrics, pessimistic_ranks
from chord_fl.models import SequentialRecommender

PROTOCOLS = ("full", "sampled")


@torch.no_grad()
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
    was_training = model.training
    model.eval()
    ranks = []
    for start in range(0, len(windows), batch_size):
        stop = start + batch_size
        batch_windows = windows[start:stop]
        seqs = torch.from_numpy(pad_left(batch_windows, model.max_len)).to(model.device)
        target = torch.from_numpy(np.asarray(targets[start:stop], dtype=np.int64)).to(seqs.device)
        if negatives is not None:
            batch_negatives = torch.from_numpy(negatives[start:stop]).to(seqs.device)
            candidates = torch.cat([target[:, None], batch_negatives], 1)
            scores = model.score(seqs, candidates)
            ranks.append(pessimistic_ranks(scores, scores[:, 0]))
            continue
        scores = model.full_scores(seqs)
        target_scores = scores.gather(1, target[:, None]).squeeze(1)
        if exclude_seen:
            seen = torch.from_numpy(pad_left(batch_windows, max(map(len, batch_windows))))
            seen = seen.to(seqs.device)
            scores.scatter_(1, seen, float("-inf"))
            # A repeated item may be both seen and the target: the target always competes.
            scores.scatter_(1, target[:, None], target_scores[:, None])
        scores[:, PADDING] = float("-inf")
        ranks.append(pessimistic_ranks(scores, target_scores))
    model.train(was_training)
    return torch.cat(ranks).cpu().numpy()


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
