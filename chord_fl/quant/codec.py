"""Wire format for a quantisation strategy: one 2-bit code (0..3) per channel.

Every payload starts with the same 10-byte header, all integers little-endian::

    offset 0  magic     uint8   0xCD
    offset 1  form      uint8   0 = FULL, 1 = DELTA, 2 = ENTROPY
    offset 2  count     uint32  channel count C
    offset 6  checksum  uint32  `checksum` of the full target code vector

followed by the form's body:

* FULL: the packed codes (`pack_codes`), exactly ceil(2C/8) bytes.
* DELTA: checksum of the base vector (uint32), the number K of changed channels (unsigned
  LEB128), K gaps between consecutive changed indices (LEB128; the first gap is index + 1, every
  gap >= 1), then the K new codes packed like FULL. Listing a channel whose code equals the base
  is rejected, so every target has exactly one DELTA encoding per base.
* ENTROPY: four uint16 symbol frequencies summing to 2**15 (all zero when C == 0), then a static
  order-0 rANS stream: the 32-bit final state (big-endian) followed by the renormalisation bytes.
  The stream is empty when C == 0 or only one code occurs (its frequency is then 2**15). The table
  must equal the one the encoder derives from the decoded codes.

C == 0 is supported: FULL is the bare header. Decoding is strict: any bytes that `encode_*` would
not produce for this count (and base) raise `CodecError`, and nothing else is ever raised.
"""

from __future__ import annotations

import struct
import zlib
from numbers import Integral

import numpy as np
import numpy.typing as npt

from chord_fl.errors import ChordError
from chord_fl.quant.varint import VarintError, encode_varints, read_varints

MAGIC = 0xCD
FULL, DELTA, ENTROPY = 0, 1, 2
FORM_NAMES = {FULL: "full", DELTA: "delta", ENTROPY: "entropy"}

_HEADER = struct.Struct("<BBII")
HEADER_BYTES = _HEADER.size
MAX_COUNT = 0xFFFFFFFF
Payload = bytes | bytearray | memoryview

# Values of `CodecError.reason`.
REASONS = ("input", "magic", "form", "count", "length", "malformed", "checksum", "base-mismatch")

_PROB_BITS = 15
_PROB_SCALE = 1 << _PROB_BITS
_RANS_L = 1 << 23  # lower bound of the normalised state interval [L, 256 L)
_TABLE = struct.Struct("<4H")
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)


class CodecError(ChordError, ValueError):
    """A strategy payload (or a code vector given to the codec) is invalid.

    `reason` is one of `REASONS`; "base-mismatch" means a DELTA payload cannot be applied to the
    base held (none, other length, or other checksum) and the full codes should be requested.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _as_codes(codes: npt.ArrayLike, what: str = "codes") -> np.ndarray:
    """`codes` as a 1-D uint8 array with values 0..3, or CodecError("input")."""
    arr = np.asarray(codes)
    if arr.ndim != 1:
        raise CodecError("input", f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if arr.dtype.kind not in "iu":
        raise CodecError("input", f"{what} must be integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 3:
        raise CodecError("input", f"{what} must lie in 0..3")
    if arr.size > MAX_COUNT:
        raise CodecError("input", f"{what} has {arr.size} channels, more than {MAX_COUNT}")
    return arr.astype(np.uint8, copy=False)


def _as_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, Integral) or not 0 <= count <= MAX_COUNT:
        raise CodecError("input", f"count must be an integer in 0..{MAX_COUNT}, got {count!r}")
    return int(count)


def _as_bytes(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError("input", f"payload must be bytes, got {type(data).__name__}")
    return bytes(data)


def packed_bytes(count: int) -> int:
    """Bytes of `count` packed codes: ceil(2 * count / 8)."""
    return (_as_count(count) + 3) // 4


def full_payload_bytes(count: int) -> int:
    """Size of the FULL payload for `count` channels."""
    return HEADER_BYTES + packed_bytes(count)


def pack_codes(codes: npt.ArrayLike) -> bytes:
    """Codes 4 per byte, code i in bits 2*(i%4)..2*(i%4)+1 of byte i//4, padding bits zero."""
    arr = _as_codes(codes)
    padded = np.zeros(packed_bytes(arr.size) * 4, dtype=np.uint8)
    padded[: arr.size] = arr
    return np.bitwise_or.reduce(padded.reshape(-1, 4) << _SHIFTS, axis=1).astype(np.uint8).tobytes()


def unpack_codes(data: Payload, count: int) -> np.ndarray:
    """Inverse of `pack_codes`; rejects a wrong length ("length") or set padding ("malformed")."""
    raw, count = _as_bytes(data), _as_count(count)
    if len(raw) != packed_bytes(count):
        raise CodecError(
            "length", f"{count} codes need {packed_bytes(count)} bytes, got {len(raw)}"
        )
    byte_arr = np.frombuffer(raw, dtype=np.uint8)
    codes = ((byte_arr[:, None] >> _SHIFTS) & 3).reshape(-1)
    if codes[count:].any():
        raise CodecError("malformed", "padding bits are set")
    return codes[:count].copy()


def checksum(codes: npt.ArrayLike) -> int:
    """CRC-32 (zlib.crc32) of `pack_codes(codes)`; the channel count is not included."""
    return zlib.crc32(pack_codes(codes))


def empirical_entropy(codes: npt.ArrayLike) -> float:
    """Order-0 entropy of the codes in bits per symbol (0.0 for an empty vector)."""
    arr = _as_codes(codes)
    if arr.size == 0:
        return 0.0
    p = np.bincount(arr, minlength=4) / arr.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def _header(form: int, codes: np.ndarray) -> bytes:
    return _HEADER.pack(MAGIC, form, codes.size, checksum(codes))


def encode_full(codes: npt.ArrayLike) -> bytes:
    """FULL payload: header + packed codes."""
    arr = _as_codes(codes)
    return _header(FULL, arr) + pack_codes(arr)


def _read_varints(buf: bytes, pos: int, k: int) -> tuple[np.ndarray, int]:
    try:
        return read_varints(buf, pos, k, MAX_COUNT)
    except VarintError as exc:
        raise CodecError(exc.reason, str(exc)) from None


# --- DELTA ----------------------------------------------------------------------------------------


def encode_delta(codes: npt.ArrayLike, base: npt.ArrayLike) -> bytes:
    """DELTA payload: the channels where `codes` differs from `base` (same length) and new codes."""
    arr, base_arr = _as_codes(codes), _as_codes(base, "base")
    if base_arr.size != arr.size:
        raise CodecError("input", f"base has {base_arr.size} channels, codes {arr.size}")
    changed = np.flatnonzero(arr != base_arr)
    gaps = np.diff(changed, prepend=-1)
    return b"".join(
        (
            _header(DELTA, arr),
            struct.pack("<I", checksum(base_arr)),
            encode_varints(np.array([changed.size])),
            encode_varints(gaps),
            pack_codes(arr[changed]),
        )
    )


def _decode_delta(raw: bytes, count: int, base: npt.ArrayLike | None) -> np.ndarray:
    pos = HEADER_BYTES + 4
    if len(raw) < pos:
        raise CodecError("length", "DELTA payload shorter than header + base checksum")
    (base_crc,) = struct.unpack_from("<I", raw, HEADER_BYTES)
    if base is None:
        raise CodecError("base-mismatch", "DELTA payload but no base held; request full codes")
    base_arr = _as_codes(base, "base")
    if base_arr.size != count:
        raise CodecError(
            "base-mismatch", f"base has {base_arr.size} channels, not {count}; request full codes"
        )
    if checksum(base_arr) != base_crc:
        raise CodecError("base-mismatch", "base differs from the payload's; request full codes")
    (k_arr, pos) = _read_varints(raw, pos, 1)
    k = int(k_arr[0])
    if k > count:
        raise CodecError("malformed", f"{k} changes for {count} channels")
    gaps, pos = _read_varints(raw, pos, k)
    if (gaps == 0).any():
        raise CodecError("malformed", "changed indices are not strictly increasing")
    if (gaps > count).any():
        raise CodecError("malformed", "changed index out of range")
    indices = np.cumsum(gaps).astype(np.int64) - 1
    if k and indices[-1] >= count:
        raise CodecError("malformed", "changed index out of range")
    new = unpack_codes(raw[pos:], k)
    if (new == base_arr[indices]).any():
        raise CodecError("malformed", "a listed change keeps the base code")
    target = base_arr.copy()
    target[indices] = new
    return target


# --- ENTROPY (static order-0 rANS) ----------------------------------------------------------------


def _frequencies(counts: np.ndarray) -> list[int]:
    """Symbol counts scaled to sum to 2**15, each occurring symbol >= 1; all zero if none occur."""
    total = int(counts.sum())
    if total == 0:
        return [0, 0, 0, 0]
    freqs = [max(1, c * _PROB_SCALE // total) if c else 0 for c in counts.tolist()]
    # The rounding slack goes to the most frequent symbol, which can absorb it at least cost.
    top = int(np.argmax(counts))
    freqs[top] += _PROB_SCALE - sum(freqs)
    return freqs


def encode_entropy(codes: npt.ArrayLike) -> bytes:
    """ENTROPY payload: header, frequency table and rANS stream of the codes."""
    arr = _as_codes(codes)
    freqs = _frequencies(np.bincount(arr, minlength=4))
    head = _header(ENTROPY, arr) + _TABLE.pack(*freqs)
    if arr.size == 0 or _PROB_SCALE in freqs:
        return head
    starts = (0, freqs[0], freqs[0] + freqs[1], freqs[0] + freqs[1] + freqs[2])
    # Per symbol: the renormalisation limit, its frequency f, 2**15 - f and its start.
    steps = [
        (((_RANS_L >> _PROB_BITS) << 8) * f, f, _PROB_SCALE - f, start)
        for f, start in zip(freqs, starts, strict=True)
    ]
    x = _RANS_L
    out = bytearray()
    emit = out.append
    # rANS is last-in first-out: encode backwards so the decoder emits channels in order.
    for s in reversed(arr.tolist()):
        limit, f, rest, start = steps[s]
        while x >= limit:
            emit(x & 0xFF)
            x >>= 8
        # (x // f) * 2**15 + x % f + start, in one division: a third less time per channel.
        x += (x // f) * rest + start
    out += x.to_bytes(4, "little")
    out.reverse()
    return head + bytes(out)


def _decode_entropy(raw: bytes, count: int) -> np.ndarray:
    pos = HEADER_BYTES + _TABLE.size
    if len(raw) < pos:
        raise CodecError("length", "ENTROPY payload shorter than header + frequency table")
    freqs = list(_TABLE.unpack_from(raw, HEADER_BYTES))
    stream = raw[pos:]
    if count == 0:
        if any(freqs) or stream:
            raise CodecError("malformed", "ENTROPY payload of no channels must be a zero table")
        return np.zeros(0, dtype=np.uint8)
    if sum(freqs) != _PROB_SCALE:
        raise CodecError("malformed", f"frequencies sum to {sum(freqs)}, not {_PROB_SCALE}")
    if _PROB_SCALE in freqs:
        if stream:
            raise CodecError("length", "trailing bytes after a single-symbol ENTROPY payload")
        codes = np.full(count, freqs.index(_PROB_SCALE), dtype=np.uint8)
    else:
        codes = _rans_decode(stream, freqs, count)
    if _frequencies(np.bincount(codes, minlength=4)) != freqs:
        raise CodecError("malformed", "frequency table does not match the decoded codes")
    return codes


def _rans_decode(stream: bytes, freqs: list[int], count: int) -> np.ndarray:
    if len(stream) < 4:
        raise CodecError("length", "ENTROPY stream shorter than its 4-byte state")
    # With four symbols, two comparisons find a slot's symbol: cheaper than building 2**15-entry
    # slot tables for every payload.
    f0, f1, f2, f3 = freqs
    c1, c2, c3 = f0, f0 + f1, f0 + f1 + f2
    x = int.from_bytes(stream[:4], "big")
    if not _RANS_L <= x < _RANS_L << 8:
        raise CodecError("malformed", "rANS state out of range")
    mask, lower = _PROB_SCALE - 1, _RANS_L
    out = bytearray(count)
    p = 4
    try:
        for i in range(count):
            slot = x & mask
            x >>= _PROB_BITS
            if slot < c2:
                if slot < c1:
                    x = f0 * x + slot
                else:
                    out[i] = 1
                    x = f1 * x + slot - c1
            elif slot < c3:
                out[i] = 2
                x = f2 * x + slot - c2
            else:
                out[i] = 3
                x = f3 * x + slot - c3
            while x < lower:
                x = (x << 8) | stream[p]
                p += 1
    except IndexError:
        raise CodecError("length", "ENTROPY stream ends early") from None
    if p != len(stream):
        raise CodecError("length", f"{len(stream) - p} trailing bytes after the ENTROPY stream")
    if x != _RANS_L:
        raise CodecError("malformed", "rANS stream does not end in its initial state")
    return np.frombuffer(bytes(out), dtype=np.uint8).copy()


# --- choosing and decoding ------------------------------------------------------------------------


def encode_strategy(codes: npt.ArrayLike, base: npt.ArrayLike | None = None) -> bytes:
    """The smallest of FULL, DELTA (only if `base` has the same length) and ENTROPY.

    Ties go to FULL, then DELTA, then ENTROPY.
    """
    arr = _as_codes(codes)
    candidates = [encode_full(arr)]
    if base is not None:
        base_arr = _as_codes(base, "base")
        if base_arr.size == arr.size:
            candidates.append(encode_delta(arr, base_arr))
    candidates.append(encode_entropy(arr))
    return min(candidates, key=len)  # min keeps the first of equal sizes


def _read_header(raw: bytes) -> tuple[int, int, int]:
    if len(raw) < HEADER_BYTES:
        raise CodecError("length", f"payload of {len(raw)} bytes is shorter than the header")
    magic, form, count, crc = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CodecError("magic", f"magic byte is {magic:#04x}, not {MAGIC:#04x}")
    if form not in FORM_NAMES:
        raise CodecError("form", f"unknown payload form {form}")
    return form, count, crc


def payload_form(payload: Payload) -> str:
    """Form name ("full", "delta" or "entropy") from the header; the body is not checked."""
    form, _, _ = _read_header(_as_bytes(payload))
    return FORM_NAMES[form]


def decode_strategy(payload: Payload, count: int, base: npt.ArrayLike | None = None) -> np.ndarray:
    """The full code vector (uint8, length `count`) from any payload form, fully validated.

    `base` is the code vector the device holds; only DELTA payloads need it.
    """
    raw, count = _as_bytes(payload), _as_count(count)
    form, header_count, crc = _read_header(raw)
    if header_count != count:
        raise CodecError("count", f"payload is for {header_count} channels, not {count}")
    if form == FULL:
        codes = unpack_codes(raw[HEADER_BYTES:], count)
    elif form == DELTA:
        codes = _decode_delta(raw, count, base)
    else:
        codes = _decode_entropy(raw, count)
    if checksum(codes) != crc:
        raise CodecError("checksum", "decoded codes do not match the payload's checksum")
    return codes
