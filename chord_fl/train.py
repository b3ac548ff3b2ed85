"""Cloud-side training of a backbone on the history split, with validation-target early stopping."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from chord_fl.data.negatives import sample_negatives
from chord_fl.data.split import VALIDATION, RoundSplit, pad_left
from chord_fl.errors import ConfigError, require_positive
from chord_fl.evaluation import PROTOCOLS, target_ranks
from chord_fl.machine import torch_device
from chord_fl.metrics import METRICS, mean_metrics
from chord_fl.models import LOSSES, Popularity, SequentialRecommender
from chord_fl.models.losses import DTYPES as CE_DTYPES

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How the cloud trains a backbone. The defaults are SASRec's (`default_training` has each
    backbone's): full-softmax cross-entropy, which converges in far fewer epochs than sampled
    losses, under a warm-up then cosine learning rate."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    loss: str = "ce"
    loss_negatives: int = 256  # shared negatives per batch for the "sampled" loss
    # dtype of the "ce" loss's products and softmax: "bfloat16" made a SASRec epoch 1.57x faster
    # on a CPU with bfloat16 instructions (sums and weights stay float32; see models/losses.py)
    ce_dtype: str = "float32"
    # The learning rate over `epochs`: "constant", or a warm-up then cosine decay.
    schedule: str = "cosine"
    warmup: float = 0.05  # share of the epochs spent warming up (cosine schedule)
    batch_by_length: bool = True  # batches of similar lengths: less padding, same samples
    patience: int = 10  # evaluations without a better validation score before stopping
    eval_every: int = 4  # epochs between validation evaluations
    select_metric: str = "ndcg@10"
    select_protocol: str = "sampled"
    num_negatives: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.select_metric not in METRICS:
            raise ConfigError(f"select_metric must be one of {', '.join(METRICS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.ce_dtype not in CE_DTYPES:
            raise ConfigError(f"ce_dtype must be one of {', '.join(CE_DTYPES)}")
        if self.ce_dtype != "float32" and "ce" not in self.loss.split("+"):
            raise ConfigError(f"ce_dtype {self.ce_dtype} applies to the ce loss, not {self.loss!r}")
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


# Caser keeps its earlier training: under SASRec's cross-entropy recipe it learned poorly on
# MovieLens-100K (test sampled NDCG@10 0.31, against 0.41 with the sampled softmax at 2e-3).
BACKBONE_TRAINING = {
    "caser": {
        "loss": "sampled",
        "lr": 2e-3,
        "epochs": 60,
        "schedule": "constant",
        "patience": 4,
        "eval_every": 2,
    },
}


def default_training(backbone: str, **changes: object) -> TrainConfig:
    """`backbone`'s default training, with `changes` (e.g. a seed) on top."""
    return dataclasses.replace(TrainConfig(**BACKBONE_TRAINING.get(backbone, {})), **changes)


def evaluation_negatives(split: RoundSplit, count: int, seed: int) -> np.ndarray:
    """The sampled protocol's negatives, drawn once per split and seed (shared by every stage:
    they avoid each user's whole sequence)."""
    rng = np.random.default_rng([seed, 0x6E6567])
    return sample_negatives([user.items for user in split.users], split.num_items, count, rng)


def batches(
    lengths: np.ndarray, batch_size: int, by_length: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's batches of sample indices, in random order. By length: each batch holds samples
    of similar length (random among equals), so a batch padded to its longest wastes little."""
    if not by_length:
        order = rng.permutation(len(lengths))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order = np.lexsort((rng.random(len(lengths)), lengths))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [chunks[i] for i in rng.permutation(len(chunks))]


def training_sequences(split: RoundSplit, max_len: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The histories a backbone trains on (two items or more) and each one's trained length."""
    histories = [h for h in split.histories() if len(h) >= 2]
    return histories, np.array([min(len(h), max_len + 1) for h in histories])


def padded_batches(
    histories: list[np.ndarray], lengths: np.ndarray, config: TrainConfig, rng: np.random.Generator
) -> Iterator[torch.Tensor]:
    """One epoch of (B, L+1) training sequences (`batches`), each padded to its longest history
    only: short-sequence data sets train faster."""
    for batch in batches(lengths, config.batch_size, config.batch_by_length, rng):
        yield torch.from_numpy(pad_left([histories[i] for i in batch], lengths[batch].max()))


def learning_rate_factor(config: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of `config.lr` at optimiser step `step` of `total_steps`."""
    if config.schedule == "constant":
        return 1.0
    warmup = max(1, round(config.warmup * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def fit(
    model: SequentialRecommender,
    split: RoundSplit,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
    device: str = "auto",
) -> FitResult:
    """Train on the histories on `device` (see `chord_fl.machine.torch_device`); keep the weights
    with the best validation score. The model comes back on the CPU."""
    start = time.perf_counter()
    if isinstance(model, Popularity):
        model.fit(split.histories())
        return FitResult(0, float("nan"), time.perf_counter() - start)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model.to(torch_device(device))
    histories, lengths = training_sequences(split, model.max_len)
    negatives = evaluation_negatives(split, config.num_negatives, config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(histories) // config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: learning_rate_factor(config, step, config.epochs * steps_per_epoch),
    )
    result = FitResult(0, float("-inf"), 0.0)
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    stale = 0
    epochs = tqdm(range(1, config.epochs + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in epochs:
        model.train()
        losses = []
        for seqs in padded_batches(histories, lengths, config, rng):
            loss = model.training_loss(
                seqs.to(model.device), config.loss, config.loss_negatives, config.ce_dtype
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
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
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        result.history.append(record)
        epochs.set_postfix(loss=f"{record['loss']:.4f}", best=f"{result.best_score:.4f}")
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    model.cpu().eval()
    result.seconds = time.perf_counter() - start
    return result
