"""How much each channel of the frozen model matters to one user: squared gradients of the user's
next-item loss, summed over the channel's weights (a diagonal Fisher estimate, as HAWQ-style
methods use), in the units the allocator consumes (it multiplies them by quantization errors).

- `target_sensitivity`: the gradient for a given target. With each device's real test target it is
  the *oracle*, a ceiling no deployable method can use; with history targets it feeds the global
  strategy.
- `expected_sensitivity`: the expectation over targets drawn from the frozen model's own
  predictive distribution for the user's window (at temperature 1, the Fisher information of the
  window), or from that distribution sharpened: what a perfect profile-to-sensitivity map could
  output, the *window ceiling*, and the supervision target of the hypernetworks.

Why sharpen: the Fisher spreads a window's importance over every item the model finds plausible,
so the rows of the few items that will make the top of its ranking get too few bits. Measured on
MovieLens-1M with SASRec (500 users, validation targets, `benchmarks/sharpening.py`), sharpening
to T = 0.3 moved the window allocation from well below the oracle to level with it (docs/design.md,
section 6).

For cross-entropy over the full catalogue, the gradient of target y's loss with respect to the
scores is p - e_y, so every target's weight gradient is one vector-Jacobian product of the same
forward pass; they are computed together, batched.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from chord_fl.data.split import RoundSplit
from chord_fl.models import SequentialRecommender
from chord_fl.quant.channels import ChannelMap

GRADIENT_BATCH = 64  # targets per batched backward pass
# The sharpening at which a window's allocation reached the oracle's on MovieLens-1M validation
# targets (benchmarks/sharpening.py): the window ceiling's and the device refinement's.
SHARP_TEMPERATURE = 0.3


def _channel_squares(
    model: SequentialRecommender,
    channels: ChannelMap,
    window: np.ndarray,
    targets: np.ndarray,
    per_weight: bool = False,
) -> torch.Tensor:
    """(K, C) squared gradient of each target's loss, summed per channel (or (K, W) per weight),
    for one window."""
    params = dict(model.named_parameters())
    weights = [params[group.name] for group in channels.groups]
    with _gradients_on(weights):
        return _squares(model, channels, weights, window, targets, per_weight)


@contextlib.contextmanager
def _gradients_on(weights: list[torch.Tensor]):
    """Gradients for these weights even in a model frozen with requires_grad_(False)."""
    before = [weight.requires_grad for weight in weights]
    try:
        with torch.enable_grad():
            for weight in weights:
                weight.requires_grad_(True)
            yield
    finally:
        for weight, flag in zip(weights, before, strict=True):
            weight.requires_grad_(flag)


def _squares(
    model: SequentialRecommender,
    channels: ChannelMap,
    weights: list[torch.Tensor],
    window: np.ndarray,
    targets: np.ndarray,
    per_weight: bool = False,
) -> torch.Tensor:
    """(K, C) squared gradients summed per channel, or (K, W) per weight (`per_weight`), every
    channel's weights in a row in code-vector order."""
    scores = model.full_scores(model.pad_windows([window]))[0]
    probabilities = torch.softmax(scores, dim=0).detach()
    out = []
    for start in range(0, len(targets), GRADIENT_BATCH):
        chunk = torch.as_tensor(
            targets[start : start + GRADIENT_BATCH], dtype=torch.long, device=scores.device
        )
        directions = probabilities.repeat(len(chunk), 1)
        directions[torch.arange(len(chunk), device=scores.device), chunk] -= 1.0
        grads = torch.autograd.grad(
            scores, weights, grad_outputs=directions, is_grads_batched=True, retain_graph=True
        )
        squares = [
            (grad.movedim(group.channel_axis + 1, 1) ** 2).flatten(2)  # (targets, C_l, K_l)
            for grad, group in zip(grads, channels.groups, strict=True)
        ]
        out.append(torch.cat([sq.flatten(1) if per_weight else sq.sum(2) for sq in squares], 1))
    return torch.cat(out)


def target_sensitivity(
    model: SequentialRecommender,
    channels: ChannelMap,
    windows: list[np.ndarray],
    targets: np.ndarray,
) -> np.ndarray:
    """(U, C) sensitivity of each user's loss on its own target."""
    model.eval()
    out = np.empty((len(windows), channels.channels))
    for row, (window, target) in enumerate(zip(windows, targets, strict=True)):
        out[row] = _channel_squares(model, channels, window, np.array([target]))[0].cpu().numpy()
    return out


def _window_scores(
    model: SequentialRecommender, window: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's state (D,) and its scores over every item (num_items + 1,), one encoding."""
    with torch.no_grad():
        states = model.encode(model.pad_windows([window]))
        return states[0], model.full_scores_encoded(states)[0]


def _unseen_distribution(
    scores: torch.Tensor, window: np.ndarray, temperature: float
) -> np.ndarray:
    """softmax(scores / T) over the items outside `window`: p^(1 / T) renormalised, 0 elsewhere."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = scores.double() / temperature
    logits[torch.from_numpy(np.asarray(window, dtype=np.int64)).to(logits.device)] = float("-inf")
    return torch.softmax(logits, dim=0).cpu().numpy()


def target_distribution(
    model: SequentialRecommender, window: np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """(num_items + 1,) the targets a window's sensitivity is taken over: the frozen model's
    next-item distribution renormalised over items the user has not interacted with (as
    full-ranking evaluation excludes them), sharpened (`temperature` < 1) as p^(1 / T)."""
    return _unseen_distribution(_window_scores(model, window)[1], window, temperature)


def expected_sensitivity(
    model: SequentialRecommender,
    channels: ChannelMap,
    windows: list[np.ndarray],
    samples: int | None = 32,
    seed: int = 0,
    temperature: float = 1.0,
) -> np.ndarray:
    """(U, C) expected sensitivity of each user's next-item loss over its window's
    `target_distribution`: exact over every item (`samples` None; for small catalogues), or the
    mean over `samples` targets drawn from it (unbiased).

    With samples, the rows of the output item table are computed exactly wherever the item is not
    in the window: such a row's gradient is (p_c - [y = c]) h, with h the window's state and p the
    model's softmax, so its expected square is |h|^2 (p_c^2 (1 - q_c) + (1 - p_c)^2 q_c) under the
    target distribution q. That is most channels, and sampling would leave them very noisy (a row
    is large only when its own item is drawn)."""
    model.eval()
    table = channels.rows_group(model.output_table)
    out = np.empty((len(windows), channels.channels))
    for row, window in enumerate(windows):
        state, scores = _window_scores(model, window)
        q = _unseen_distribution(scores, window, temperature)
        if samples is None:
            items = np.flatnonzero(q > 0)
            weights = q[items]
        else:
            rng = np.random.default_rng([seed, row, 0x66697368])
            items = rng.choice(len(q), size=samples, p=q / q.sum())
            weights = np.full(samples, 1.0 / samples)
        squares = _channel_squares(model, channels, window, items).double().cpu().numpy()
        out[row] = weights @ squares
        if samples is not None and table is not None:
            exact = _row_sensitivity(state, scores, q)
            outside = np.ones(table.channels, dtype=bool)
            outside[np.asarray(window, dtype=np.int64)] = False
            outside[0] = False  # padding: its row is never scored
            rows = out[row, table.codes]  # a view: writing it writes `out`
            rows[outside] = exact[outside]
    return out


def expected_weight_sensitivity(
    model: SequentialRecommender, channels: ChannelMap, window: np.ndarray
) -> np.ndarray:
    """(W,) the window's expected sensitivity per weight, exact over every item the user has not
    seen (for small catalogues): what a perfect element-level map could output. Weights are in
    code-vector order, each channel's `elements` in a row; summed per channel it equals
    `expected_sensitivity(..., samples=None)`."""
    model.eval()
    q = target_distribution(model, window)
    items = np.flatnonzero(q > 0)
    squares = _channel_squares(model, channels, window, items, per_weight=True)
    squares = squares.double().cpu().numpy()
    return q[items] @ squares


def output_row_sensitivity(
    model: SequentialRecommender, window: np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """(num_items + 1,) expected squared gradient of each output row from the scoring side, for
    targets drawn from the window's `target_distribution` q at `temperature`: one forward pass,
    so a device holding the fp32 weights computes it too (for an input table tied to the output,
    the window's own rows also carry the encoder's input, which this leaves out)."""
    state, scores = _window_scores(model, window)
    return _row_sensitivity(state, scores, _unseen_distribution(scores, window, temperature))


def _row_sensitivity(state: torch.Tensor, scores: torch.Tensor, q: np.ndarray) -> np.ndarray:
    """|h|^2 (p_c^2 (1 - q_c) + (1 - p_c)^2 q_c) per item row c, from the window's state h and
    scores (p their softmax) and the target distribution q."""
    p = torch.softmax(scores.double(), dim=0).cpu().numpy()
    norm = float((state.double() ** 2).sum())
    return norm * (p**2 * (1 - q) + (1 - p) ** 2 * q)


def global_sensitivity(
    model: SequentialRecommender,
    channels: ChannelMap,
    split: RoundSplit,
    max_users: int = 1000,
    samples: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """(C,) one non-personalised importance for everyone: the expected sensitivity of (up to
    `max_users`) training users' history windows, each divided by its mean over channels before
    averaging, so that no window's sharpness outweighs the others.

    (The realised-target form, the mean of `target_sensitivity` over the users' last history
    items, was measured weaker: benchmarks/headroom.py. So were sharpened targets, which help a
    device's own allocation: averaged over users at T = 0.3 they lost 0.034 full-ranking NDCG@10
    on MovieLens-1M validation targets at 2.5 bits; every user's top items differ.)"""
    rng = np.random.default_rng([seed, 0x676C6F62])
    users = np.sort(rng.permutation(len(split))[:max_users])
    windows = [split.users[i].history for i in users]
    rows = expected_sensitivity(model, channels, windows, samples, seed)
    return normalised(rows).mean(axis=0)


def normalised(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its mean (the allocator is blind to a device's common scale)."""
    return rows / np.maximum(rows.mean(axis=1, keepdims=True), 1e-300)
