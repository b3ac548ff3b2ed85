"""Which weights are channels, what each precision code means, and what each choice costs.

A channel is one output slice of a quantizable tensor (a Linear row, a Conv filter, an item
embedding row). Codes index a `CodeTable`; the whole model's codes form one flat vector, tensor
after tensor in `ChannelMap` order. Every other tensor stays fp32 and is counted in `fixed_bytes`.

Scales come in two granularities: one fp16 scale per stored channel (the default), or a few shared
per tensor, one for each stored width, so that a channel costs only its packed integers. Shared
scales fit a channel less well but save 16 bits a channel, a quarter of a bit a weight at 64-weight
rows: at low budgets that buys wider channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chord_fl.errors import ConfigError
from chord_fl.models import SequentialRecommender

SCALE_BYTES = 2  # one fp16 scale
CODE_BITS = 2
SCALES = ("channel", "tensor")


@dataclass(frozen=True)
class CodeTable:
    """Bits for each 2-bit code; 0 bits means the channel is pruned (all zeros, nothing stored)."""

    bits: tuple[int, ...] = (0, 2, 4, 8)

    def __post_init__(self) -> None:
        if len(self.bits) != 2**CODE_BITS:
            raise ConfigError(f"a code table needs {2**CODE_BITS} entries, got {self.bits}")
        if any(b != 0 and not 2 <= b <= 8 for b in self.bits):
            raise ConfigError(f"code bits must be 0 (pruned) or 2..8, got {self.bits}")
        if list(self.bits) != sorted(set(self.bits)):
            raise ConfigError(f"code bits must be strictly increasing, got {self.bits}")

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.bits, dtype=np.int64)

    @property
    def stored(self) -> tuple[int, ...]:
        """The widths that store integers (every entry but pruning)."""
        return tuple(bits for bits in self.bits if bits)


@dataclass(frozen=True)
class ChannelGroup:
    """One quantizable tensor: `channels` slices of `elements` weights along `channel_axis`."""

    name: str
    shape: tuple[int, ...]
    channel_axis: int
    channels: int
    elements: int
    offset: int  # index of this tensor's first channel in the model's flat code vector

    @property
    def codes(self) -> slice:
        return slice(self.offset, self.offset + self.channels)

    @property
    def code_bytes(self) -> int:
        return -(-CODE_BITS * self.channels // 8)


@dataclass(frozen=True)
class ChannelMap:
    groups: tuple[ChannelGroup, ...]
    unquantized_bytes: int  # fp32 tensors outside every group (biases, norms, positions)
    # 0: an fp16 scale per stored channel; n > 0: n fp16 scales per tensor, one per stored width
    shared_scales: int = 0

    @property
    def channels(self) -> int:
        return sum(group.channels for group in self.groups)

    @property
    def weights(self) -> int:
        """Quantizable weight elements."""
        return sum(group.channels * group.elements for group in self.groups)

    @property
    def base_bytes(self) -> int:
        """fp32 leftovers plus packed codes: what budgets are set on top of, whatever the scales."""
        return self.unquantized_bytes + sum(group.code_bytes for group in self.groups)

    @property
    def fixed_bytes(self) -> int:
        """Bytes a quantized model takes whatever its codes: `base_bytes` plus shared scales."""
        return self.base_bytes + len(self.groups) * self.shared_scales * SCALE_BYTES

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.weights + self.unquantized_bytes

    def rows_group(self, name: str) -> ChannelGroup | None:
        """The group of tensor `name` when its channels are its rows (an item table by items)."""
        return next((g for g in self.groups if g.name == name and g.channel_axis == 0), None)

    def elements(self) -> np.ndarray:
        """(C,) weights per channel, in code-vector order."""
        return np.concatenate([np.full(g.channels, g.elements, np.int64) for g in self.groups])

    def cost(self, table: CodeTable) -> np.ndarray:
        """(C, Q) bytes each channel takes at each code: packed integers plus, unless scales are
        shared, its fp16 scale."""
        bits = table.array[None, :]
        packed = -(-self.elements()[:, None] * bits // 8)
        own_scale = 0 if self.shared_scales else SCALE_BYTES
        return np.where(bits > 0, packed + own_scale, 0)


def channel_rows(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """(channels, elements) view of `weight` with `axis` first."""
    return weight.movedim(axis, 0).reshape(weight.shape[axis], -1)


def rows_to_tensor(rows: torch.Tensor, group: ChannelGroup) -> torch.Tensor:
    """Inverse of `channel_rows` for `group`'s tensor; works on (..., C, K) batches of rows."""
    axis = group.channel_axis
    moved = [group.shape[axis]] + [size for i, size in enumerate(group.shape) if i != axis]
    batch = rows.shape[:-2]
    return rows.reshape(*batch, *moved).movedim(len(batch), len(batch) + axis)


def channel_map(
    model: SequentialRecommender, embedding_axis: int = 0, shared_scales: int = 0
) -> ChannelMap:
    """Map every tensor the backbone lists as quantizable; embedding tables use `embedding_axis`
    (0: one channel per item, 1: one channel per hidden dimension)."""
    if embedding_axis not in (0, 1):
        raise ConfigError(f"embedding_axis must be 0 (rows) or 1 (columns), got {embedding_axis}")
    params = dict(model.named_parameters())
    groups, offset = [], 0
    for tensor in model.quantizable_tensors():
        if tensor.name not in params:
            raise ConfigError(f"{type(model).__name__} lists unknown tensor {tensor.name!r}")
        weight = params[tensor.name]
        axis = embedding_axis if tensor.name.endswith("embedding.weight") else tensor.channel_axis
        channels = weight.shape[axis]
        elements = weight.numel() // channels
        groups.append(
            ChannelGroup(tensor.name, tuple(weight.shape), axis, channels, elements, offset)
        )
        offset += channels
    quantized = {group.name for group in groups}
    leftover = sum(4 * t.numel() for name, t in model.state_dict().items() if name not in quantized)
    return ChannelMap(tuple(groups), leftover, shared_scales)
