"""Full-softmax cross-entropy over the catalogue, in chunks of rows that fit the CPU's caches.

A batch of SASRec on MovieLens-1M scores about 20,000 positions against 3,416 items: logits and
their gradient of about 270 MB each, which on a CPU spend more time moving through memory than
being computed. Here each chunk's softmax gradient is formed as soon as its logits are, while they
are still in cache, so the logits never exist whole and backward only scales the stored gradients.

The chunk's three products and its softmax can run in bfloat16 (`dtype`), with the loss's sums
and the gradients handed back in float32: on this project's CPU (AVX512-BF16) a SASRec epoch on
MovieLens-1M took 1.57x less time (`benchmarks/ce_step.py`). bfloat16 keeps 8 bits of mantissa:
logits near 10 are rounded by up to 0.03, so each probability, and its gradient, carries an error
of a few percent, noise that did not cost accuracy in the runs measured (README).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CHUNK_ROWS = 1024  # rows per chunk: 1,024 x 3,416 float logits are 14 MB
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SMALLEST = 1e-30  # a target probability below this: its loss from the logits instead


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states, weight, bias, targets, excluded, chunk_rows, track, dtype):
        inputs = (states, weight, bias)
        needs = [track and need for need in ctx.needs_input_grad[:3]]
        grads = [
            torch.zeros_like(t) if need else None for t, need in zip(inputs, needs, strict=True)
        ]
        table = weight.to(dtype)
        offset = bias.to(dtype) if bias is not None else None
        total = states.new_zeros((), dtype=torch.float64)
        for start in range(0, len(states), chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk, chosen = states[rows].to(dtype), targets[rows].unsqueeze(1)
            logits = chunk @ table.T
            if offset is not None:
                logits += offset
            logits[:, excluded] = float("-inf")
            # One fused pass (faster than a log-sum-exp and then exp); the loss is -log p.
            gradient = torch.softmax(logits, -1)
            picked = gradient.gather(1, chosen)
            losses = -picked.float().log()
            lost = picked.squeeze(1) < SMALLEST  # near float32's least: -log p imprecise or inf
            if lost.any():
                wrong = logits[lost].float()
                losses[lost] = torch.logsumexp(wrong, -1, keepdim=True) - wrong.gather(
                    1, chosen[lost]
                )
            total += losses.sum(dtype=torch.float64)
            if not any(needs):
                continue
            # d loss / d logits = softmax - one-hot (indexing, not scatter_add_, which copies
            # a bfloat16 chunk to float32 and back)
            gradient[torch.arange(len(chosen), device=chosen.device), chosen.squeeze(1)] -= 1
            if grads[0] is not None:
                grads[0][rows] = gradient @ table
            if grads[1] is not None:
                grads[1] += gradient.T @ chunk
            if grads[2] is not None:
                grads[2] += gradient.sum(0, dtype=torch.float32)
        ctx.grads = [g.div_(len(states)) if g is not None else None for g in grads]
        return (total / len(states)).to(states.dtype)  # no rows: NaN, as F.cross_entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        scaled = [g * grad_output if g is not None else None for g in ctx.grads]
        return (*scaled, None, None, None, None, None)


def chunked_cross_entropy(
    states: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    excluded: int = 0,
    chunk_rows: int = CHUNK_ROWS,
    dtype: str = "float32",
) -> torch.Tensor:
    """Mean cross-entropy of (M, D) `states` scored against every row of the (N, D) `weight`
    (plus `bias`), the item `excluded` (padding) never predicted: the same value and gradients
    as `F.cross_entropy` on the whole (M, N) logits, up to float rounding (bfloat16's with
    `dtype="bfloat16"`). Gradients are formed only where autograd records (not under
    `torch.no_grad`)."""
    track = torch.is_grad_enabled()
    return _ChunkedCrossEntropy.apply(
        states, weight, bias, targets, excluded, chunk_rows, track, DTYPES[dtype]
    )
