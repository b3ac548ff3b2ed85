"""Unsigned LEB128 varints, vectorised: the index gaps of the strategy codec's DELTA form."""

from __future__ import annotations

import numpy as np


class VarintError(ValueError):
    """Bytes that are not k canonical varints; `reason` is "malformed" or "length"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode_varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (< 2**35), vectorised."""
    v = values.astype(np.uint64)
    if v.size == 0:
        return b""
    lengths = 1 + sum((v >> np.uint64(7 * k)) > 0 for k in range(1, 5)).astype(np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.zeros(int(ends[-1]), dtype=np.uint8)
    for k in range(5):
        has = lengths > k
        byte = (v[has] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (lengths[has] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


def read_varints(buf: bytes, pos: int, k: int, limit: int) -> tuple[np.ndarray, int]:
    """k canonical uint32 LEB128 varints from buf[pos:], and the position after them."""
    if k == 0:
        return np.zeros(0, dtype=np.uint64), pos
    window = np.frombuffer(buf, dtype=np.uint8)[pos : pos + 5 * k]
    ends = np.flatnonzero(window < 0x80)[:k]
    starts = np.concatenate(([0], ends[:-1] + 1))[: len(ends)]
    lengths = ends - starts + 1
    if (lengths > 5).any():
        raise VarintError("malformed", "varint longer than 5 bytes")
    if len(ends) < k:
        next_start = int(ends[-1]) + 1 if len(ends) else 0
        if window.size - next_start >= 5:
            raise VarintError("malformed", "varint longer than 5 bytes")
        raise VarintError("length", "payload ends inside the varints")
    if ((lengths > 1) & (window[ends] == 0)).any():
        raise VarintError("malformed", "overlong varint")
    used = int(ends[-1]) + 1
    within = np.arange(used) - np.repeat(starts, lengths)
    parts = (window[:used] & 0x7F).astype(np.uint64) << (7 * within).astype(np.uint64)
    values = np.add.reduceat(parts, starts)
    if (values > limit).any():
        raise VarintError("malformed", f"varint over {limit}")
    return values, pos + used
