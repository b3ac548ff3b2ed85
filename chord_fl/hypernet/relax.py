"""A differentiable stand-in for budgeted allocation, used only to train the hypernetworks.

The allocator minimises sum_c imp_c * err_c(q_c) subject to sum_c cost_c(q_c) <= budget. Its
Lagrangian splits per channel: each channel picks the code minimising imp_c err_c(q) + mu cost_c(q).
Relaxed, each channel gets a softmax over codes of -(imp err + mu cost) / temperature, with mu set
by bisection so that the expected cost meets the budget. By default gradients flow to the
importances only (mu is treated as a constant, as in a dual step), so the gradient sees extra
precision as free; with `implicit=True` they also flow through mu, by implicit differentiation of
the budget constraint: raising some channels' importance raises mu and lowers every other
channel's expected precision, as the hard allocator would.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from chord_fl.cloud import issue_codes
from chord_fl.models import SequentialRecommender
from chord_fl.quant.channels import rows_to_tensor
from chord_fl.quant.quantizer import PreparedModel

if TYPE_CHECKING:
    from chord_fl.hypernet.training import HyperTrainConfig

EXCLUDED_PENALTY = 20.0  # logits; exp(-20) ~ 2e-9, so an excluded item's probability vanishes


def _probabilities(
    importance: torch.Tensor, error: torch.Tensor, cost: torch.Tensor, mu: torch.Tensor, temp: float
) -> torch.Tensor:
    """(B, C) importance, (C, Q) error and cost, (B,) mu -> (B, C, Q) code probabilities."""
    # Laid out code-major, (B, Q, C): torch's CPU softmax over a last dimension as short as a code
    # table is several times slower than over a middle one (this is most of the bisection's time).
    lagrangian = importance[:, None, :] * error.T.contiguous() + mu[:, None, None] * cost.T
    return torch.softmax(-lagrangian / temp, dim=1).transpose(1, 2)


@torch.no_grad()
def budget_multiplier(
    importance: torch.Tensor,
    error: torch.Tensor,
    cost: torch.Tensor,
    budget: torch.Tensor,
    temperature: float = 1.0,
    steps: int = 40,
) -> torch.Tensor:
    """(B,) smallest mu >= 0 whose expected cost is within `budget`, by bisection in log space."""

    def expected_cost(mu: torch.Tensor) -> torch.Tensor:
        return (_probabilities(importance, error, cost, mu, temperature) * cost).sum((-1, -2))

    low = torch.full_like(budget, -30.0)
    high = torch.full_like(budget, 30.0)
    for _ in range(steps):
        middle = (low + high) / 2
        over = expected_cost(torch.exp(middle)) > budget
        low = torch.where(over, middle, low)
        high = torch.where(over, high, middle)
    mu = torch.exp(high)
    return torch.where(expected_cost(torch.zeros_like(budget)) <= budget, 0.0, mu)


def soft_codes(
    importance: torch.Tensor,
    error: torch.Tensor,
    cost: torch.Tensor,
    budget: torch.Tensor,
    temperature: float = 1.0,
    implicit: bool = False,
) -> torch.Tensor:
    """(B, C, Q) differentiable code probabilities that spend about `budget` bytes each."""
    mu = budget_multiplier(importance.detach(), error, cost, budget, temperature)
    probabilities = _probabilities(importance, error, cost, mu, temperature)
    if not implicit:
        return probabilities
    spent = (probabilities * cost).sum((-1, -2))
    with torch.no_grad():
        # d spent / d mu = -(1/T) sum_c Var_q(cost), under the current probabilities.
        mean = (probabilities * cost).sum(-1)
        variance = (probabilities * cost**2).sum(-1) - mean**2
        slope = -variance.sum(-1) / temperature
        binding = (mu > 0) & (slope < 0)
        safe_slope = torch.where(binding, slope, torch.ones_like(slope))
    # Equal to mu in value; its gradient is d mu / d importance = -(d spent / d importance) / slope.
    step = (spent - spent.detach()) / safe_slope
    mu = mu - torch.where(binding, step, torch.zeros_like(step))
    return _probabilities(importance, error, cost, mu, temperature)


class Relaxation:
    """Everything about the frozen model that a training step reuses: costs, errors, levels."""

    def __init__(
        self, prepared: PreparedModel, frozen: SequentialRecommender | None = None
    ) -> None:
        """`frozen`: the frozen model the training steps run, a copy of the prepared one on the
        cloud's training device (default: the prepared one, on the CPU)."""
        self.prepared = prepared
        self.frozen = prepared.frozen if frozen is None else frozen
        self.device = device = self.frozen.device
        errors = prepared.errors
        self.error = torch.tensor(errors / errors[:, 0].mean(), dtype=torch.float32, device=device)
        cost = prepared.channels.cost(prepared.table)
        self.cost = torch.tensor(cost, dtype=torch.float32, device=device)
        self.candidates = [prepared.candidate_rows(g).to(device) for g in prepared.channels.groups]

    def loss(
        self,
        importance: torch.Tensor,
        channel_bytes: np.ndarray,
        seqs: torch.Tensor,
        targets: torch.Tensor,
        config: HyperTrainConfig,
    ) -> torch.Tensor:
        budget = torch.tensor(channel_bytes, dtype=torch.float32, device=self.device)
        probabilities = soft_codes(
            importance, self.error, self.cost, budget, config.temperature, config.implicit_budget
        )
        hard = None
        if config.straight_through:
            hard = issue_codes(
                self.prepared,
                importance.detach().cpu().numpy(),
                channel_bytes + self.prepared.channels.fixed_bytes,
            )
        frozen = self.frozen
        weights = {}
        for group, candidates in zip(self.prepared.channels.groups, self.candidates, strict=True):
            rows = torch.einsum("bcq,qck->bck", probabilities[:, group.codes], candidates)
            if hard is not None:
                picked = torch.from_numpy(hard[:, group.codes].astype(np.int64)).to(self.device)
                chosen = candidates[picked, torch.arange(group.channels, device=self.device)]
                rows = chosen + rows - rows.detach()
            weights[group.name] = rows_to_tensor(rows, group)
        scores = _scores_per_row(frozen, weights, seqs)
        item_group = self.prepared.item_group
        if item_group is not None:
            # Items the device would not hold score far below the rest (a soft -inf).
            pruned = probabilities[:, item_group.codes, 0]
            if hard is not None:
                hard_pruned = torch.from_numpy(hard[:, item_group.codes] == 0)
                hard_pruned = hard_pruned.to(self.device, torch.float32)
                pruned = hard_pruned + pruned - pruned.detach()
            scores = scores - EXCLUDED_PENALTY * pruned
        if config.objective == "distill":
            with torch.no_grad():  # column 0 is padding (-inf in both models)
                teacher = F.log_softmax(frozen(seqs)[:, 1:], dim=1)
            student = F.log_softmax(scores[:, 1:], dim=1)
            loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        else:
            loss = F.cross_entropy(scores, targets)
        spent = (probabilities * self.cost).sum((1, 2))
        overspend = F.relu(spent / budget.clamp_min(1.0) - 1.0).mean()
        return loss + config.budget_penalty * overspend


def _scores_per_row(
    frozen: torch.nn.Module, weights: dict[str, torch.Tensor], seqs: torch.Tensor
) -> torch.Tensor:
    """(B, N + 1) scores of row b's window under row b's weights (each (B, ...)), in one batched
    call rather than B forward passes."""
    with warnings.catch_warnings():
        # vmap runs attention one row at a time (no batching rule for CPU's fused kernel);
        # the rest of the model still runs batched, so the warning says nothing to act on.
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        return vmap(lambda w, seq: functional_call(frozen, w, (seq[None],))[0])(weights, seqs)
