"""Per-channel symmetric quantization with real bit-packed storage.

A channel at b bits stores integers in [-(2^(b-1) - 1), 2^(b-1) - 1], shifted to unsigned and packed
b bits per weight, plus one fp16 scale (or, with shared scales, the tensor's scale for that width).
The scale's clipping ratio is chosen from a grid to minimise the squared error of the channel (or
of the whole tensor). `PreparedModel` does that once per frozen model (a device holds the
frozen weights anyway); `quantize` then only selects, packs and dequantizes for a code vector.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from chord_fl.errors import ConfigError
from chord_fl.models import SequentialRecommender
from chord_fl.quant.channels import (
    SCALES,
    ChannelGroup,
    ChannelMap,
    CodeTable,
    channel_map,
    channel_rows,
    rows_to_tensor,
)
from chord_fl.quant.codec import pack_codes, unpack_codes

DEFAULT_CLIP_GRID = tuple(np.round(np.linspace(0.2, 1.0, 17), 3))
PRUNED_ITEMS = ("exclude", "zero")


def quantize_rows(
    rows: torch.Tensor, bits: int, clip_grid: tuple[float, ...] = DEFAULT_CLIP_GRID
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C, K) float rows -> int8 levels (C, K), fp16 scales (C,), squared errors (C,).

    The error is measured with the fp16 scale the device will actually use. At 1 bit a weight is
    its sign times the channel's mean magnitude (the least-squares scale for signs); from 2 bits
    levels are symmetric around zero.
    """
    rows = rows.detach().float()
    if bits == 1:
        levels = torch.where(rows >= 0, 1, -1).to(torch.int8)
        scale = rows.abs().mean(dim=1).to(torch.float16)
        error = ((levels * scale.float()[:, None] - rows) ** 2).sum(dim=1)
        return levels, scale, error
    qmax = 2 ** (bits - 1) - 1
    peak = rows.abs().amax(dim=1)
    best_error = torch.full_like(peak, float("inf"))
    best_levels = torch.zeros(rows.shape, dtype=torch.int8)
    best_scale = torch.zeros_like(peak, dtype=torch.float16)
    for ratio in clip_grid:
        scale = (peak * ratio / qmax).to(torch.float16)
        safe = torch.where(scale > 0, scale.float(), torch.ones_like(peak))
        levels = torch.clamp(torch.round(rows / safe[:, None]), -qmax, qmax)
        error = ((levels * scale.float()[:, None] - rows) ** 2).sum(dim=1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale, best_scale)
        best_levels[better] = levels[better].to(torch.int8)
    return best_levels, best_scale, best_error


def quantize_channels(
    rows: torch.Tensor,
    bits: int,
    shared_scale: bool,
    clip_grid: tuple[float, ...] = DEFAULT_CLIP_GRID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`quantize_rows` with a scale per row, or one scale for all rows (`shared_scale`, scales
    (1,)); errors are per row either way."""
    if not shared_scale:
        return quantize_rows(rows, bits, clip_grid)
    levels, scale, _ = quantize_rows(rows.reshape(1, -1), bits, clip_grid)
    levels = levels.reshape(rows.shape)
    error = ((levels * scale.float() - rows.detach().float()) ** 2).sum(dim=1)
    return levels, scale, error


def level_offset(bits: int) -> int:
    """What shifts a `bits`-wide level to an unsigned stored value (1 bit: -1, 1 -> 0, 1)."""
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def to_unsigned(levels: torch.Tensor, bits: int) -> np.ndarray:
    values = levels.numpy().astype(np.int16) + level_offset(bits)
    return (values // 2 if bits == 1 else values).astype(np.uint8)


def from_unsigned(values: np.ndarray, bits: int) -> np.ndarray:
    levels = values.astype(np.float32)
    return 2 * levels - 1 if bits == 1 else levels - level_offset(bits)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """(n, K) unsigned values < 2^bits -> (n, ceil(K * bits / 8)) uint8, little-endian bit order."""
    n, k = values.shape
    if 8 % bits == 0:  # whole values per byte: OR shifted strided slices (the common, fast case)
        per_byte = 8 // bits
        padded = np.zeros((n, -(-k // per_byte) * per_byte), dtype=np.uint8)
        padded[:, :k] = values
        packed = padded[:, ::per_byte].copy()
        for slot in range(1, per_byte):
            packed |= padded[:, slot::per_byte] << np.uint8(slot * bits)
        return packed
    planes = (values[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, K, bits)
    return np.packbits(planes.reshape(n, k * bits).astype(np.uint8), axis=1, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, elements: int) -> np.ndarray:
    n = packed.shape[0]
    if 8 % bits == 0:
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        values = (packed[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
        return values.reshape(n, -1)[:, :elements]
    planes = np.unpackbits(packed, axis=1, count=elements * bits, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (planes.reshape(n, elements, bits) * weights).sum(axis=2).astype(np.uint8)


@dataclass(frozen=True)
class PackedTensor:
    """What a device stores for one quantized tensor: its codes, then for each precision the
    channels at that precision (in channel order) as packed integers and fp16 scales (one per
    channel, or with shared scales the tensor's one scale for each stored width)."""

    group: ChannelGroup
    codes: np.ndarray  # packed 2-bit codes, ceil(2C/8) bytes
    packed: dict[int, np.ndarray]  # bits -> (n_b, ceil(K b / 8)) uint8
    scales: dict[int, np.ndarray]  # bits -> (n_b,) float16

    @property
    def nbytes(self) -> int:
        stored = [self.codes, *self.packed.values(), *self.scales.values()]
        return int(sum(array.nbytes for array in stored))

    def dequantize(self, table: CodeTable) -> torch.Tensor:
        """The tensor as stored: what a device that kept only this packed form would run."""
        group = self.group
        codes = unpack_codes(self.codes.tobytes(), group.channels)
        rows = np.zeros((group.channels, group.elements), dtype=np.float32)
        for code, bits in enumerate(table.bits):
            if bits == 0 or bits not in self.packed:
                continue
            where = np.flatnonzero(codes == code)
            levels = from_unsigned(unpack_bits(self.packed[bits], bits, group.elements), bits)
            rows[where] = levels * self.scales[bits].astype(np.float32)[:, None]
        return rows_to_tensor(torch.from_numpy(rows), group)


@dataclass
class QuantizedModel:
    """A device's model under one strategy: packed storage plus a model that runs it."""

    model: SequentialRecommender
    tensors: dict[str, PackedTensor]
    channels: ChannelMap
    table: CodeTable
    codes: np.ndarray

    @property
    def nbytes(self) -> int:
        """Memory of the stored model: packed buffers plus the fp32 tensors left unquantized."""
        return self.channels.unquantized_bytes + sum(t.nbytes for t in self.tensors.values())

    @property
    def avg_bits(self) -> float:
        bits = self.table.array[self.codes]
        return float((bits * self.channels.elements()).sum() / self.channels.weights)


class PreparedModel:
    """A frozen model with every channel's levels precomputed at every precision of the table."""

    def __init__(
        self,
        frozen: SequentialRecommender,
        table: CodeTable = CodeTable(),
        embedding_axis: int = 0,
        clip_grid: tuple[float, ...] = DEFAULT_CLIP_GRID,
        pruned_items: str = "exclude",
        scales: str = "channel",
    ) -> None:
        """`pruned_items`: "exclude" means an item whose scoring row is pruned is not on the
        device and is never recommended; "zero" scores it with a zero row like any pruned weight.
        `scales`: "channel" (an fp16 scale per stored channel) or "tensor" (shared per tensor and
        width)."""
        if pruned_items not in PRUNED_ITEMS:
            raise ConfigError(f"pruned_items must be one of {', '.join(PRUNED_ITEMS)}")
        if scales not in SCALES:
            raise ConfigError(f"scales must be one of {', '.join(SCALES)}, got {scales!r}")
        self.frozen = frozen
        self.table = table
        shared = len(table.stored) if scales == "tensor" else 0
        self.channels = channel_map(frozen, embedding_axis, shared)
        self.item_group = (
            self.channels.rows_group(frozen.output_table) if pruned_items == "exclude" else None
        )
        params = dict(frozen.named_parameters())
        self._levels: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        errors = []
        for group in self.channels.groups:
            rows = channel_rows(params[group.name], group.channel_axis)
            by_bits, group_errors = {}, []
            for bits in table.bits:
                if bits == 0:
                    group_errors.append((rows.detach().float() ** 2).sum(dim=1))
                    continue
                levels, scale, error = quantize_channels(rows, bits, bool(shared), clip_grid)
                unsigned = to_unsigned(levels, bits)
                by_bits[bits] = (unsigned, scale.numpy())
                group_errors.append(error)
            self._levels[group.name] = by_bits
            errors.append(torch.stack(group_errors, dim=1))
        self.errors = torch.cat(errors).numpy().astype(np.float64)  # (C, Q) squared error
        self.cost = self.channels.cost(table)  # (C, Q) bytes
        # Dequantizing a strategy is then one gather per tensor (the device's hot path); the
        # packed form `quantize` also builds dequantizes to exactly these rows.
        self._candidates = {g.name: self._dequantized_candidates(g) for g in self.channels.groups}
        self._channel_index = {g.name: torch.arange(g.channels) for g in self.channels.groups}
        self._work = copy.deepcopy(frozen).eval()
        self._work_params = dict(self._work.named_parameters())

    def candidate_rows(self, group: ChannelGroup) -> torch.Tensor:
        """(Q, C_l, K_l) dequantized rows of `group` at every code (code 0: zeros); shared, so
        read-only."""
        return self._candidates[group.name]

    def _dequantized_candidates(self, group: ChannelGroup) -> torch.Tensor:
        rows = torch.zeros(len(self.table.bits), group.channels, group.elements)
        for code, bits in enumerate(self.table.bits):
            if bits:
                unsigned, scales = self._levels[group.name][bits]
                levels = torch.from_numpy(from_unsigned(unsigned, bits))
                rows[code] = levels * torch.from_numpy(scales.astype(np.float32))[:, None]
        return rows

    def _pack(self, group: ChannelGroup, codes: np.ndarray) -> PackedTensor:
        packed, scales = {}, {}
        shared = bool(self.channels.shared_scales)
        for code, bits in enumerate(self.table.bits):
            if bits == 0:
                continue
            unsigned, all_scales = self._levels[group.name][bits]
            if shared:  # kept whether used or not: the shared scales are fixed bytes
                scales[bits] = all_scales
            chosen = np.flatnonzero(codes == code)
            if not len(chosen):
                continue
            packed[bits] = pack_bits(unsigned[chosen], bits)
            if not shared:
                scales[bits] = all_scales[chosen]
        code_bytes = np.frombuffer(pack_codes(codes), dtype=np.uint8)
        return PackedTensor(group, code_bytes, packed, scales)

    def quantize(self, codes: np.ndarray, fresh_model: bool = True) -> QuantizedModel:
        """Quantize under `codes` (C,); the frozen weights are never modified.

        With `fresh_model=False` the returned model reuses one working copy (faster on a device
        that keeps a single quantized model; an earlier result's model changes too).
        """
        codes = self._checked(codes)
        tensors = {g.name: self._pack(g, codes[g.codes]) for g in self.channels.groups}
        model = self._load(codes, fresh_model)
        return QuantizedModel(model, tensors, self.channels, self.table, codes)

    def dequantized(self, codes: np.ndarray, fresh_model: bool = True) -> SequentialRecommender:
        """The model `quantize` returns, without packing its storage: for scoring codes where
        nobody holds the packed bytes (the cloud's validation and benchmarks)."""
        return self._load(self._checked(codes), fresh_model)

    def _checked(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.shape != (self.channels.channels,):
            raise ConfigError(f"expected {self.channels.channels} codes, got shape {codes.shape}")
        if codes.dtype.kind not in "iu" or codes.min(initial=0) < 0 or codes.max(initial=0) > 3:
            raise ConfigError("codes must be integers in 0..3")
        return codes.astype(np.uint8)

    def _load(self, codes: np.ndarray, fresh_model: bool) -> SequentialRecommender:
        """The working model (or a copy) with every channel's rows at its code."""
        model = copy.deepcopy(self._work) if fresh_model else self._work
        params = dict(model.named_parameters()) if fresh_model else self._work_params
        with torch.no_grad():
            for group in self.channels.groups:
                # int64, because torch reads a uint8 index as a mask.
                code_index = torch.from_numpy(codes[group.codes].astype(np.int64))
                rows = self._candidates[group.name][code_index, self._channel_index[group.name]]
                params[group.name].copy_(rows_to_tensor(rows, group))
        model.unavailable = self.unavailable_items(codes)
        # Both models are built in eval mode; walking every module to set it again costs a
        # tenth of a device's quantization.
        return model if not model.training else model.eval()

    def unavailable_items(self, codes: np.ndarray) -> torch.Tensor | None:
        """(num_items + 1,) True where the codes prune an item's scoring row (when excluded)."""
        if self.item_group is None:
            return None
        return torch.from_numpy(np.asarray(codes)[self.item_group.codes] == 0)


def quantize(
    frozen: SequentialRecommender,
    codes: np.ndarray,
    table: CodeTable = CodeTable(),
    embedding_axis: int = 0,
) -> QuantizedModel:
    """The one-call entry point: quantize `frozen` under `codes` and return the packed model."""
    return PreparedModel(frozen, table, embedding_axis).quantize(codes)
