"""The frozen weights a device downloads once: the fp32 backbone, or an 8-bit master.

The device only ever runs its weights quantized to the code table's widths (2, 4 or 8 bits), so it
does not need them in fp32: the 8-bit master stores every quantizable channel as int8 levels with
one fp16 scale (the same per-channel quantizer as the 8-bit code), every other matrix (position
embeddings) the same way by rows, and vectors (biases, norms) in fp32. The device decodes it once
and derives its 2- and 4-bit channels from it; its 8-bit channels are the master itself. About a
quarter of the fp32 download.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from chord_fl.errors import ConfigError
from chord_fl.models import SequentialRecommender
from chord_fl.quant.channels import channel_map, channel_rows
from chord_fl.quant.quantizer import quantize_rows

MASTERS = ("fp32", "int8")
MASTER_BITS = 8
LEVELS, SCALES = ".levels", ".scales"  # suffixes of a quantized tensor's arrays in the download
FORMAT = 2  # names the encoding in cache keys: a cloud model fitted to another master is stale


def check_master(master: str) -> None:
    if master not in MASTERS:
        raise ConfigError(f"master must be one of {', '.join(MASTERS)}, got {master!r}")


def master_tag(master: str) -> str:
    """What tells cached cloud models of this master apart ("" for the fp32 backbone)."""
    check_master(master)
    return "" if master == "fp32" else f"{master}-master-v{FORMAT}"


def _rows(model: SequentialRecommender) -> dict[str, tuple[torch.Tensor, int]]:
    """Every tensor the master stores by rows, with the axis its rows run along: the quantizable
    tensors by their channels, other matrices by their first axis."""
    channels = {g.name: g.channel_axis for g in channel_map(model).groups}
    return {
        name: (tensor, channels.get(name, 0))
        for name, tensor in model.state_dict().items()
        if name in channels or (tensor.dim() >= 2 and tensor.is_floating_point())
    }


def master_arrays(model: SequentialRecommender, master: str) -> dict[str, np.ndarray]:
    """What the one-time download holds: the state dict (fp32), or int8 levels and fp16 scales
    of every matrix by rows plus the vectors in fp32 (int8)."""
    check_master(master)
    state = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    if master == "fp32":
        return state
    for name, (tensor, axis) in _rows(model).items():
        del state[name]
        levels, scales, _ = quantize_rows(channel_rows(tensor, axis), MASTER_BITS)
        state[name + LEVELS] = levels.numpy()
        state[name + SCALES] = scales.numpy()
    return state


def decode_master(
    arrays: dict[str, np.ndarray], template: SequentialRecommender
) -> SequentialRecommender:
    """The model a device runs from its download (`template` gives the architecture)."""
    state = {name: torch.from_numpy(np.array(a)) for name, a in arrays.items()}
    for name, (tensor, axis) in _rows(template).items():
        if name in state:  # an fp32 download
            continue
        rows = state.pop(name + LEVELS).float() * state.pop(name + SCALES).float()[:, None]
        shape = (tensor.shape[axis], *(n for i, n in enumerate(tensor.shape) if i != axis))
        state[name] = rows.reshape(shape).movedim(0, axis)
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model.eval()


def int8_master(frozen: SequentialRecommender) -> SequentialRecommender:
    """The frozen model as a device rebuilds it from the 8-bit master."""
    return decode_master(master_arrays(frozen, "int8"), frozen)


def master_bytes(model: SequentialRecommender, master: str) -> int:
    """Bytes of the download's arrays (no container around them)."""
    return sum(array.nbytes for array in master_arrays(model, master).values())
