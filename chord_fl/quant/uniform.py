"""The uniform comparator at its strongest: every quantizable weight at one width from 1 to 8 bits,
with one fp16 scale per channel or one per tensor, the widest that fits the device's budget
(`budget.widest_uniform`). It needs no codes, so it keeps the code bytes a code strategy pays.
Storage is real, as for coded models: `nbytes` is read off the packed buffers."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from chord_fl.models import SequentialRecommender
from chord_fl.quant.budget import UNIFORM_BITS
from chord_fl.quant.channels import ChannelMap, channel_rows, rows_to_tensor
from chord_fl.quant.quantizer import (
    DEFAULT_CLIP_GRID,
    from_unsigned,
    pack_bits,
    quantize_channels,
    to_unsigned,
)


@dataclass
class UniformModel:
    model: SequentialRecommender
    bits: int
    per_tensor: bool
    packed: dict[str, np.ndarray]  # tensor name -> packed integers (one run per channel or tensor)
    scales: dict[str, np.ndarray]  # tensor name -> fp16 scales (C,) or (1,)
    unquantized_bytes: int

    @property
    def nbytes(self) -> int:
        stored = [*self.packed.values(), *self.scales.values()]
        return self.unquantized_bytes + int(sum(array.nbytes for array in stored))

    @property
    def avg_bits(self) -> float:
        return float(self.bits)


def quantize_uniform(
    frozen: SequentialRecommender,
    channels: ChannelMap,
    bits: int,
    per_tensor: bool,
    clip_grid: tuple[float, ...] = DEFAULT_CLIP_GRID,
) -> UniformModel:
    """A copy of `frozen` with every tensor of `channels` at `bits` bits; `frozen` is untouched."""
    if bits not in UNIFORM_BITS:
        raise ValueError(f"uniform bits must be in 1..8, got {bits}")
    model = copy.deepcopy(frozen).eval()
    params = dict(model.named_parameters())
    packed, scales = {}, {}
    with torch.no_grad():
        for group in channels.groups:
            rows = channel_rows(params[group.name], group.channel_axis)
            levels, scale, _ = quantize_channels(rows, bits, per_tensor, clip_grid)
            unsigned = to_unsigned(levels, bits)
            # A per-tensor scale packs the tensor as one run, with no padding between channels.
            runs = unsigned.reshape(1, -1) if per_tensor else unsigned
            packed[group.name] = pack_bits(runs, bits)
            scales[group.name] = scale.numpy()
            values = from_unsigned(unsigned, bits) * scale.numpy().astype(np.float32)[:, None]
            dequantized = torch.from_numpy(values)
            params[group.name].copy_(rows_to_tensor(dequantized, group))
    return UniformModel(model, bits, per_tensor, packed, scales, channels.unquantized_bytes)
