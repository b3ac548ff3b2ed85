"""What a simulated phone does in a round, with no Flower in sight: encode its profile, apply the
cloud's codes to the frozen weights it holds, score its round target, or (FedAvg) train locally.

One `Phone` per process serves every device that process simulates; each call works on
one partition (one user's sequence) only.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from chord_fl.data.split import pad_left
from chord_fl.errors import ConfigError
from chord_fl.evaluation import protocol_ranks
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import CODE_COLUMNS
from chord_fl.federation.world import World
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.metrics import per_user_metrics
from chord_fl.models import SequentialRecommender
from chord_fl.quant.budget import widest_uniform
from chord_fl.quant.codec import decode_strategy
from chord_fl.quant.quantizer import QuantizedModel
from chord_fl.quant.uniform import UniformModel, quantize_uniform
from chord_fl.refine import refine_item_rows

UNIFORM_CACHE = 4  # quantized copies a worker keeps (widths of the received or frozen weights)
# FedAvg's local epochs score 256 shared items per step, not the whole catalogue: a phone's budget.
# (The cloud pretrains Caser with this loss and SASRec with the full softmax.)
LOCAL_LOSS = "sampled"


@dataclass(frozen=True)
class DeviceReport:
    """A device's answer to an evaluation round."""

    metrics: dict[str, float]  # full-ranking "hr@5"... and "sampled_hr@5"...
    model_bytes: int
    avg_bits: float
    adapt_ms: float  # producing the round's model: decode + quantize, or local training
    code_counts: tuple[int, ...] = ()  # channels at each code, for code strategies

    def as_dict(self) -> dict[str, float]:
        out = {**self.metrics, "model_bytes": self.model_bytes, "avg_bits": self.avg_bits}
        out["adapt_ms"] = self.adapt_ms
        out.update(zip(CODE_COLUMNS, self.code_counts, strict=False))
        return out


def _milliseconds(start: float) -> float:
    return 1000.0 * (time.perf_counter() - start)


def _digest(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].numpy().tobytes())
    return digest.hexdigest()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class Phone:
    def __init__(self, world: World, config: RunConfig) -> None:
        self.world = world
        self.config = config
        self._scratch: SequentialRecommender = copy.deepcopy(world.prepared.frozen).eval()
        self._uniform_models: dict[tuple[str, int, bool], tuple[UniformModel, float]] = {}

    # -- CHORD and the other code strategies ---------------------------------------------------

    def profile(self, partition: int, round_: int) -> np.ndarray:
        """(hidden,) fp16 profile of the device's real-time window."""
        self.world.check_partition(partition)
        window = self.world.split.users[partition].window(round_)
        return encode_profiles(self.world.prepared.frozen, [window], self.config.profile_window)[0]

    def budget(self, partition: int) -> int:
        self.world.check_partition(partition)
        return int(self.world.budgets[partition])

    def apply_codes(
        self, partition: int, round_: int, payload: bytes, base: np.ndarray | None
    ) -> tuple[np.ndarray, DeviceReport]:
        """Decode the cloud's codes (against the last codes held, for a delta), quantize the frozen
        weights and score the round's target. Raises CodecError for a payload that does not
        decode. With `refine-items`, the item table's rows are re-allocated for the device's own
        window first (`chord_fl.refine`); the codes returned are the cloud's (the next delta's
        base)."""
        prepared = self.world.prepared
        start = time.perf_counter()
        codes = decode_strategy(payload, prepared.channels.channels, base)
        held = codes
        if self.config.refine_items:
            window = self.world.split.users[partition].window(round_)
            held = refine_item_rows(prepared, codes, window)
        quantized = prepared.quantize(held, fresh_model=False)
        adapt_ms = _milliseconds(start)
        return codes, self._quantized_report(quantized, partition, round_, adapt_ms)

    def apply_uniform(
        self, partition: int, round_: int, bits: int, per_tensor: bool
    ) -> DeviceReport:
        """Quantize the frozen weights uniformly at the cloud's width and score the round's
        target."""
        model, prepare_ms = self._uniform(self.world.prepared.frozen, "frozen", bits, per_tensor)
        return self._quantized_report(model, partition, round_, prepare_ms)

    def evaluate_fp32(self, partition: int, round_: int) -> DeviceReport:
        model = self.world.prepared.frozen
        return self._fp32_report(model, partition, round_, 0.0)

    # -- FedAvg ----------------------------------------------------------------------------------

    def local_fit(
        self, weights: dict[str, torch.Tensor], partition: int, round_: int
    ) -> tuple[dict[str, torch.Tensor], int, float]:
        """Train the received weights on the device's own sequence up to the round's window:
        (new weights, positions trained on, milliseconds)."""
        self.world.check_partition(partition)
        window = self.world.split.users[partition].window(round_)
        model = self._load(weights)
        seqs = torch.from_numpy(pad_left([window], min(model.max_len + 1, len(window))))
        start = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(_seed(self.config.seed, partition, round_))
            optimizer = torch.optim.Adam(model.parameters(), lr=self.config.local_lr)
            model.train()
            for _ in range(self.config.local_epochs):
                loss = model.training_loss(seqs, LOCAL_LOSS)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        trained = {name: value.detach().clone() for name, value in model.state_dict().items()}
        return trained, seqs.shape[1] - 1, _milliseconds(start)

    def evaluate_weights(
        self, weights: dict[str, torch.Tensor], partition: int, round_: int, uniform: bool
    ) -> DeviceReport:
        """Score received weights as they are, or quantized uniformly to the device's budget."""
        if not uniform:
            return self._fp32_report(self._load(weights), partition, round_, 0.0)
        channels = self.world.prepared.channels
        width = widest_uniform(channels, self.budget(partition))
        if width is None:
            raise ConfigError(f"partition {partition}: its budget holds no uniform model")
        model, prepare_ms = self._uniform(self._load(weights), _digest(weights), *width)
        return self._quantized_report(model, partition, round_, prepare_ms)

    # -- shared --------------------------------------------------------------------------------

    def _load(self, weights: dict[str, torch.Tensor]) -> SequentialRecommender:
        self._scratch.load_state_dict(weights)
        return self._scratch

    def _uniform(
        self, model: SequentialRecommender, source: str, bits: int, per_tensor: bool
    ) -> tuple[UniformModel, float]:
        """`model` (named `source`) quantized at one width, and the milliseconds that took.

        Devices that share a width share one quantized copy here; every real device quantizes
        its own, so each is charged the time it took once."""
        key = (source, bits, per_tensor)
        if key not in self._uniform_models:
            if len(self._uniform_models) >= UNIFORM_CACHE:
                self._uniform_models.pop(next(iter(self._uniform_models)))
            start = time.perf_counter()
            quantized = quantize_uniform(model, self.world.prepared.channels, bits, per_tensor)
            self._uniform_models[key] = (quantized, _milliseconds(start))
        return self._uniform_models[key]

    def score(self, model: SequentialRecommender, partition: int, round_: int) -> dict[str, float]:
        """Metrics of the round's target under both protocols."""
        self.world.check_partition(partition)
        user = self.world.split.users[partition]
        windows, targets = [user.window(round_)], np.array([user.target(round_)])
        negatives = self.world.negatives[partition : partition + 1]
        metrics = {}
        ranks = protocol_ranks(model, windows, targets, negatives)
        for prefix, protocol in (("", "full"), ("sampled_", "sampled")):
            metrics.update(
                {
                    prefix + name: float(v[0])
                    for name, v in per_user_metrics(ranks[protocol]).items()
                }
            )
        return metrics

    def _quantized_report(
        self,
        quantized: QuantizedModel | UniformModel,
        partition: int,
        round_: int,
        adapt_ms: float,
    ) -> DeviceReport:
        counts = ()
        if isinstance(quantized, QuantizedModel):
            counts = np.bincount(quantized.codes, minlength=len(CODE_COLUMNS))
        return DeviceReport(
            metrics=self.score(quantized.model, partition, round_),
            model_bytes=int(quantized.nbytes),
            avg_bits=quantized.avg_bits,
            adapt_ms=adapt_ms,
            code_counts=tuple(int(c) for c in counts),
        )

    def _fp32_report(
        self, model: SequentialRecommender, partition: int, round_: int, adapt_ms: float
    ) -> DeviceReport:
        return DeviceReport(
            metrics=self.score(model, partition, round_),
            model_bytes=self.world.prepared.channels.fp32_bytes,
            avg_bits=32.0,
            adapt_ms=adapt_ms,
        )
