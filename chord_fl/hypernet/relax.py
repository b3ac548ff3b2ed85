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

import torch


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
