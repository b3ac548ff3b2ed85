"""Cloud-side training of a backbone on the history split, with validation-target early stopping."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from chord_fl.data.negatives import sample_negatives
from chord_fl.data.split import VALIDATION, RoundSplit, pad_left
from chord_fl.errors import ConfigError, require_positive
from chord_fl.evaluation import PROTOCOLS, target_ranks
from chord_fl.metrics import METRICS, mean_metrics
from chord_fl.models import LOSSES, Popularity, SequentialRecommender


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "sampled"
    loss_negatives: int = 256  # shared negatives per batch for the "sampled" loss
    patience: int = 10  # evaluations without a better validation score before stopping
    eval_every: int = 1  # epochs between validation evaluations
    select_metric: str = "ndcg@10"
    select_protocol: str = "sampled"
    num_negatives: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.select_metric not in METRICS:
            raise ConfigError(f"select_metric must be one of {', '.join(METRICS)}")
        if self.select_protocol not in PROTOCOLS:
            raise ConfigError(f"select_protocol must be one of {', '.join(PROTOCOLS)}")
        require_positive(
            self,
            "epochs",
            "batch_size",
            "patience",
            "eval_every",
            "num_negatives",
            "loss_negatives",
        )
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def evaluation_negatives(split: RoundSplit, count: int, seed: int) -> np.ndarray:
    """The sampled protocol's negatives, drawn once per split and seed (shared by every stage:
    they avoid each user's whole sequence)."""
    rng = np.random.default_rng([seed, 0x6E6567])
    return sample_negatives([user.items for user in split.users], split.num_items, count, rng)


def fit(
    model: SequentialRecommender,
    split: RoundSplit,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
) -> FitResult:
    """Train on the histories; keep the weights with the best validation score."""
    start = time.perf_counter()
    if isinstance(model, Popularity):
        model.fit(split.histories())
        return FitResult(0, float("nan"), time.perf_counter() - start)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    histories = [h for h in split.histories() if len(h) >= 2]
    negatives = evaluation_negatives(split, config.num_negatives, config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = FitResult(0, float("-inf"), 0.0)
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    epochs = tqdm(range(1, config.epochs + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in epochs:
        model.train()
        order = rng.permutation(len(histories))
        losses = []
        for begin in range(0, len(order), config.batch_size):
            batch = [histories[i] for i in order[begin : begin + config.batch_size]]
            # Pad to the batch's longest history only: short-sequence data sets train faster.
            length = min(model.max_len + 1, max(map(len, batch)))
            seqs = torch.from_numpy(pad_left(batch, length))
            loss = model.training_loss(seqs, config.loss, config.loss_negatives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        record = {"epoch": epoch, "loss": float(np.mean(losses))}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            ranks = target_ranks(
                model,
                split.windows(VALIDATION),
                split.targets(VALIDATION),
                negatives if config.select_protocol == "sampled" else None,
            )
            score = mean_metrics(ranks)[config.select_metric]
            record["validation"] = score
            if score > result.best_score:
                result.best_epoch, result.best_score, stale = epoch, score, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        result.history.append(record)
        epochs.set_postfix(loss=f"{record['loss']:.4f}", best=f"{result.best_score:.4f}")
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
