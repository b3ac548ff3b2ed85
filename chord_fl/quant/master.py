"""The frozen weights a device downloads once: the fp32 backbone, or an 8-bit master.

The device only ever runs its weights quantized to the code table's widths (2, 4 or 8 bits), so it
does not need them in fp32: the 8-bit master stores every quantizable channel as int8 levels with
one fp16 scale (the same per-channel quantizer as the 8-bit code), and every other tensor in fp32.
The device decodes it once and derives its 2- and 4-bit channels from it; its 8-bit channels are
the master itself. About a quarter of the fp32 download.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from chord_fl.errors import ConfigError
from chord_fl.models import SequentialRecommender
from chord_fl.quant.channels import ChannelMap, channel_map, channel_rows, rows_to_tensor
from chord_fl.quant.quantizer import quantize_rows

MASTERS = ("fp32", "int8")
MASTER_BITS = 8
LEVELS, SCALES = ".levels", ".scales"  # suffixes of a quantized tensor's arrays in the download


def check_master(master: str) -> None:
    if master not in MASTERS:
        raise ConfigError(f"master must be one of {', '.join(MASTERS)}, got {master!r}")


def master_arrays(model: SequentialRecommender, master: str) -> dict[str, np.ndarray]:
    """What the one-time download holds: the state dict (fp32), or int8 levels and fp16 scales
    of every quantizable tensor plus the other tensors in fp32 (int8)."""
    check_master(master)
    state = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    if master == "fp32":
        return state
    params = dict(model.named_parameters())
    arrays = {}
    for group in channel_map(model).groups:
        del state[group.name]
        levels, scales, _ = quantize_rows(
            channel_rows(params[group.name], group.channel_axis), MASTER_BITS
        )
        arrays[group.name + LEVELS] = levels.numpy()
        arrays[group.name + SCALES] = scales.numpy()
    return {**state, **arrays}


def decode_master(
    arrays: dict[str, np.ndarray], template: SequentialRecommender
) -> SequentialRecommender:
    """The model a device runs from its download (`template` gives the architecture)."""
    channels = channel_map(template)
    state = {name: torch.from_numpy(np.array(a)) for name, a in arrays.items()}
    for group in channels.groups:
        if group.name in state:
            continue
        levels = state.pop(group.name + LEVELS).float()
        scales = state.pop(group.name + SCALES).float()
        state[group.name] = rows_to_tensor(levels * scales[:, None], group)
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model.eval()


def int8_master(frozen: SequentialRecommender) -> SequentialRecommender:
    """The frozen model as a device rebuilds it from the 8-bit master."""
    return decode_master(master_arrays(frozen, "int8"), frozen)


def master_bytes(channels: ChannelMap, master: str) -> int:
    """Bytes of the download's arrays (no container around them)."""
    check_master(master)
    if master == "fp32":
        return channels.fp32_bytes
    scales = 2 * channels.channels
    return channels.weights * MASTER_BITS // 8 + scales + channels.unquantized_bytes
