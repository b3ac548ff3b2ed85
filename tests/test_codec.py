"""Tests for the strategy wire format: packing, the three payload forms, choosing the smallest,
strict validation of corrupt input and entropy-coding efficiency."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chord_fl.errors import ChordError
from chord_fl.quant import codec
from chord_fl.quant.codec import (
    DELTA,
    ENTROPY,
    FULL,
    HEADER_BYTES,
    MAGIC,
    REASONS,
    CodecError,
    checksum,
    decode_strategy,
    empirical_entropy,
    encode_delta,
    encode_entropy,
    encode_full,
    encode_strategy,
    full_payload_bytes,
    pack_codes,
    payload_form,
    unpack_codes,
)

LENGTHS = [0, 1, 3, 4, 5, 1000, 20000]
SKEW = [0.70, 0.20, 0.08, 0.02]
# Header, frequency table (4 x uint16) and the 4-byte final rANS state: the constant overhead.
ENTROPY_OVERHEAD_BITS = 8 * (HEADER_BYTES + 8 + 4)


def _codes(n: int, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(0, 4, size=n).astype(np.uint8)
    if kind == "skewed":
        return rng.choice(4, size=n, p=SKEW).astype(np.uint8)
    return np.full(n, 2, dtype=np.uint8)


def _mutate(codes: np.ndarray, changes: int, seed: int = 1) -> np.ndarray:
    """A copy of `codes` with `changes` channels set to a different code."""
    rng = np.random.default_rng(seed)
    out = codes.copy()
    idx = rng.choice(codes.size, size=min(changes, codes.size), replace=False)
    out[idx] = (out[idx] + rng.integers(1, 4, size=idx.size)) % 4
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _header(form: int, count: int, crc: int, magic: int = MAGIC) -> bytes:
    return struct.pack("<BBII", magic, form, count, crc)


def _reason(payload: bytes, count: int, base: np.ndarray | None = None) -> str:
    with pytest.raises(CodecError) as info:
        decode_strategy(payload, count, base)
    return info.value.reason


def _assert_valid(result: np.ndarray, count: int, payload: bytes) -> None:
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8
    assert result.shape == (count,)
    assert result.size == 0 or result.max() <= 3
    assert checksum(result) == struct.unpack_from("<I", payload, 6)[0]


# --- packing --------------------------------------------------------------------------------------


def test_pack_layout_by_hand():
    # code i sits in bits 2*(i%4).. of byte i//4; the padding of the last byte stays zero
    assert pack_codes([1, 2, 3, 0, 3]) == bytes([0b00_11_10_01, 0b00_00_00_11])
    assert pack_codes([]) == b""
    assert unpack_codes(bytes([0b00_11_10_01, 0b11]), 5).tolist() == [1, 2, 3, 0, 3]


@pytest.mark.parametrize("n", LENGTHS)
def test_pack_round_trip_and_size(n):
    codes = _codes(n, "uniform")
    packed = pack_codes(codes)
    assert len(packed) == math.ceil(2 * n / 8)
    back = unpack_codes(packed, n)
    assert back.dtype == np.uint8 and np.array_equal(back, codes)


def test_unpack_rejects_wrong_length_and_padding():
    packed = pack_codes([1, 2, 3, 1, 2])
    with pytest.raises(CodecError) as info:
        unpack_codes(packed, 4)
    assert info.value.reason == "length"
    with pytest.raises(CodecError) as info:
        unpack_codes(packed + b"\x00", 5)
    assert info.value.reason == "length"
    for bit in range(2, 8):  # every padding bit of the last byte
        bad = packed[:-1] + bytes([packed[-1] | (1 << bit)])
        with pytest.raises(CodecError) as info:
            unpack_codes(bad, 5)
        assert info.value.reason == "malformed"


@pytest.mark.parametrize("bad", [[0, 4], [-1], [[0, 1]], [0.0, 1.0], np.array([1, 2], dtype=float)])
def test_invalid_codes_are_rejected(bad):
    with pytest.raises(CodecError) as info:
        encode_strategy(bad)
    assert info.value.reason == "input"
    assert isinstance(info.value, ChordError) and isinstance(info.value, ValueError)


def test_checksum_is_crc32_of_packed_codes():
    codes = _codes(101, "skewed")
    assert checksum(codes) == zlib.crc32(pack_codes(codes))
    assert checksum([]) == 0


def test_empirical_entropy():
    assert empirical_entropy([0, 1, 2, 3]) == pytest.approx(2.0)
    assert empirical_entropy([0, 0, 1, 1]) == pytest.approx(1.0)
    assert empirical_entropy(np.full(50, 3, dtype=np.uint8)) == 0.0
    assert empirical_entropy([]) == 0.0
    expected = -sum(p * math.log2(p) for p in SKEW)
    assert empirical_entropy(_codes(200_000, "skewed")) == pytest.approx(expected, abs=0.01)


# --- payload layout -------------------------------------------------------------------------------


def test_header_layout():
    assert HEADER_BYTES == 10
    codes = _codes(7, "uniform")
    payload = encode_full(codes)
    magic, form, count, crc = struct.unpack_from("<BBII", payload)
    assert (magic, form, count, crc) == (MAGIC, FULL, 7, checksum(codes))
    assert payload[HEADER_BYTES:] == pack_codes(codes)
    assert encode_delta(codes, codes)[1] == DELTA
    assert encode_entropy(codes)[1] == ENTROPY


@pytest.mark.parametrize("n", [*LENGTHS, 2, 6, 7, 8, 9])
def test_full_size_is_header_plus_packed(n):
    assert full_payload_bytes(n) == HEADER_BYTES + math.ceil(2 * n / 8)
    assert len(encode_full(_codes(n, "uniform"))) == full_payload_bytes(n)


def test_delta_layout_by_hand():
    base = np.zeros(300, dtype=np.uint8)
    codes = base.copy()
    codes[[5, 200]] = [3, 1]
    expected = (
        _header(DELTA, 300, checksum(codes))
        + struct.pack("<I", checksum(base))
        + b"\x02"  # two changes
        + b"\x06"  # gap 6: index 5
        + b"\xc3\x01"  # gap 195 (two LEB128 bytes): index 200
        + bytes([0b01_11])
    )
    assert encode_delta(codes, base) == expected


def test_entropy_table_and_constant_codes():
    codes = _codes(5000, "skewed")
    payload = encode_entropy(codes)
    freqs = struct.unpack_from("<4H", payload, HEADER_BYTES)
    assert sum(freqs) == 1 << 15 and all(f > 0 for f in freqs)
    constant = _codes(20000, "constant")
    payload = encode_entropy(constant)
    assert len(payload) == HEADER_BYTES + 8
    assert struct.unpack_from("<4H", payload, HEADER_BYTES) == (0, 0, 1 << 15, 0)
    assert np.array_equal(decode_strategy(payload, 20000), constant)
    assert len(encode_entropy([])) == HEADER_BYTES + 8


def test_entropy_bytes_are_the_wire_formats_own():
    # Written by the encoder as it stood at commit 97654d2 (divmod per channel): a rewrite of
    # the coder must keep the bytes devices already decode. The long vector has a symbol rare
    # enough that one channel renormalises by two bytes.
    short = [3, 0, 2, 2, 1, 0, 0, 2, 1, 3, 0, 2, 0, 0, 1, 2, 2, 0, 1, 0, 0, 3, 2, 1, 0, 2, 0, 0]
    short += [1, 2, 0, 2]
    expected = "cd02200000008ae2c9fb003400180028000c02a8ff11039256884b3800"
    assert encode_entropy(short).hex() == expected
    skewed = np.random.default_rng(12).choice(4, size=20000, p=[0.6, 0.3, 0.0995, 0.0005])
    payload = encode_entropy(skewed)
    assert (len(payload), zlib.crc32(payload)) == (3264, 4182746387)


def test_payload_form():
    codes = _codes(100, "uniform")
    assert payload_form(encode_full(codes)) == "full"
    assert payload_form(encode_delta(codes, codes)) == "delta"
    assert payload_form(encode_entropy(codes)) == "entropy"
    with pytest.raises(CodecError):
        payload_form(b"\x00" * HEADER_BYTES)
    with pytest.raises(CodecError):
        payload_form(_header(7, 100, 0))


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "skewed", "constant"])
@pytest.mark.parametrize("n", LENGTHS)
def test_round_trip_every_form(n, kind):
    codes = _codes(n, kind)
    base = _mutate(codes, max(1, n // 50))
    for payload in (encode_full(codes), encode_entropy(codes)):
        assert np.array_equal(decode_strategy(payload, n), codes)
        assert np.array_equal(decode_strategy(payload, n, base), codes)  # base is ignored
    for b in (base, codes, _codes(n, "uniform", seed=7)):
        assert np.array_equal(decode_strategy(encode_delta(codes, b), n, b), codes)
    best = encode_strategy(codes, base)
    assert np.array_equal(decode_strategy(best, n, base), codes)
    candidates = [encode_full(codes), encode_delta(codes, base), encode_entropy(codes)]
    assert len(best) == min(map(len, candidates))


def test_encode_strategy_picks_each_form():
    uniform = _codes(1000, "uniform")
    assert payload_form(encode_strategy(uniform)) == "full"
    assert payload_form(encode_strategy(_codes(1000, "skewed"))) == "entropy"
    assert payload_form(encode_strategy(_mutate(uniform, 3), base=uniform)) == "delta"
    # a base of another length cannot be used
    assert payload_form(encode_strategy(uniform, base=uniform[:-1])) == "full"


def test_encode_strategy_ties_prefer_full_then_delta():
    # constant codes: ENTROPY is header + table = 18 bytes, FULL is 10 + ceil(C/4)
    for n in (29, 32):
        assert len(encode_entropy(np.zeros(n, np.uint8))) == len(encode_full(np.zeros(n, np.uint8)))
        assert payload_form(encode_strategy(np.zeros(n, np.uint8))) == "full"
    codes = np.zeros(200, np.uint8)
    base = codes.copy()
    base[150] = 1  # DELTA: 10 + 4 + 1 + 2 (gap 151) + 1 = 18 bytes, same as ENTROPY
    assert len(encode_delta(codes, base)) == len(encode_entropy(codes)) == 18
    assert payload_form(encode_strategy(codes, base)) == "delta"
    assert encode_strategy(codes, base) == encode_strategy(codes.copy(), base.copy())


def test_delta_with_few_changes_is_smaller_than_full():
    base = _codes(5000, "uniform")
    for changes in (0, 1, 10, 100):
        codes = _mutate(base, changes)
        delta = encode_delta(codes, base)
        assert len(delta) < len(encode_full(codes))
        assert len(delta) <= HEADER_BYTES + 4 + 3 + 3 * changes + math.ceil(changes / 4)


# --- entropy efficiency and speed -----------------------------------------------------------------


@pytest.mark.parametrize("n", [2000, 20000])
@pytest.mark.parametrize("seed", [0, 1])
def test_entropy_size_within_five_percent(n, seed):
    codes = _codes(n, "skewed", seed)
    h = empirical_entropy(codes)
    bits = 8 * len(encode_entropy(codes))
    assert bits / n <= 1.05 * h + ENTROPY_OVERHEAD_BITS / n
    assert bits < 0.7 * 8 * full_payload_bytes(n)  # skew H ~ 1.23 bits vs FULL's 2


# --- strict decoding ------------------------------------------------------------------------------


def test_header_errors():
    codes = _codes(10, "uniform")
    payload = encode_full(codes)
    assert _reason(bytes([MAGIC ^ 1]) + payload[1:], 10) == "magic"
    assert _reason(payload[:1] + b"\x03" + payload[2:], 10) == "form"
    assert _reason(payload, 11) == "count"
    assert _reason(payload[: HEADER_BYTES - 1], 10) == "length"
    assert _reason(b"", 0) == "length"
    crc = struct.unpack_from("<I", payload, 6)[0]
    assert _reason(payload[:6] + struct.pack("<I", crc ^ 1) + payload[10:], 10) == "checksum"


def test_non_bytes_and_bad_count_raise_codec_error():
    payload = encode_full([1, 2])
    for bad in ("text", None, 3, [1, 2]):
        with pytest.raises(CodecError):
            decode_strategy(bad, 2)  # type: ignore[arg-type]
    for count in (-1, 2**32, 2.0, True):
        with pytest.raises(CodecError):
            decode_strategy(payload, count)  # type: ignore[arg-type]
    assert np.array_equal(decode_strategy(bytearray(payload), 2), [1, 2])
    assert np.array_equal(decode_strategy(memoryview(payload), np.int64(2)), [1, 2])


def test_delta_needs_the_same_base():
    base = _codes(500, "uniform")
    codes = _mutate(base, 5)
    payload = encode_delta(codes, base)
    for wrong in (None, _mutate(base, 1, seed=9), base[:-1]):
        with pytest.raises(CodecError) as info:
            decode_strategy(payload, 500, wrong)
        assert info.value.reason == "base-mismatch"
        assert "request full codes" in str(info.value)
    assert np.array_equal(decode_strategy(payload, 500, base), codes)


def _delta(base: np.ndarray, body: bytes, target_crc: int = 0) -> bytes:
    return _header(DELTA, base.size, target_crc) + struct.pack("<I", checksum(base)) + body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x01" + b"\x0b" + b"\x01", "malformed"),  # index 10 >= C
        (b"\x02" + b"\x01\x00" + b"\x05", "malformed"),  # gap 0: repeated index
        (b"\x01" + b"\xff\xff\xff\xff\x1f" + b"\x01", "malformed"),  # gap >= 2**32
        (b"\x01" + b"\x81\x80\x80\x80\x80\x00" + b"\x01", "malformed"),  # 6-byte varint
        (b"\x01" + b"\x81\x00" + b"\x01", "malformed"),  # overlong varint
        (b"\x0b" + b"\x01" * 11 + b"\x00" * 3, "malformed"),  # more changes than channels
        (b"\x01" + b"\x01" + b"\x00", "malformed"),  # change keeps the base code
        (b"\x01" + b"\x01" + b"\x05", "malformed"),  # padding bit set
        (b"\x01" + b"\x01", "length"),  # missing packed code
        (b"\x01" + b"\x01" + b"\x01\x00", "length"),  # trailing byte
        (b"\x02" + b"\x01", "length"),  # ends inside the gaps
        (b"\x01" + b"\x81", "length"),  # ends inside a varint
        (b"", "length"),  # no change count
    ],
)
def test_malformed_delta_bodies(body, reason):
    base = np.zeros(10, dtype=np.uint8)
    assert _reason(_delta(base, body), 10, base) == reason


def test_delta_with_right_structure_but_wrong_target_checksum():
    base = np.zeros(10, dtype=np.uint8)
    target = base.copy()
    target[0] = 1
    assert _reason(_delta(base, b"\x01\x01\x01", checksum(target) ^ 1), 10, base) == "checksum"
    assert np.array_equal(
        decode_strategy(_delta(base, b"\x01\x01\x01", checksum(target)), 10, base), target
    )


def test_malformed_entropy_payloads():
    codes = _codes(300, "skewed")
    payload = encode_entropy(codes)
    head, table, stream = payload[:HEADER_BYTES], payload[HEADER_BYTES:18], payload[18:]
    freqs = struct.unpack("<4H", table)
    other = struct.pack("<4H", freqs[0] - 1, freqs[1] + 1, *freqs[2:])  # sums right, not canonical
    assert _reason(head + other + stream, 300) in {"malformed", "length", "checksum"}
    assert _reason(head + struct.pack("<4H", 1, 1, 1, 1) + stream, 300) == "malformed"
    assert _reason(head + table + stream[:3], 300) == "length"
    assert _reason(head + table + b"\xff" * 4 + stream[4:], 300) == "malformed"  # state too big
    const = encode_entropy(np.zeros(40, np.uint8))
    assert _reason(const + b"\x00", 40) == "length"
    empty = encode_entropy([])
    assert _reason(empty[:HEADER_BYTES] + struct.pack("<4H", 1 << 15, 0, 0, 0), 0) == "malformed"


def test_entropy_table_must_be_the_canonical_one(monkeypatch):
    codes = _codes(300, "skewed")
    canonical = codec._frequencies(np.bincount(codes, minlength=4))
    other = [canonical[0] - 1, canonical[1] + 1, *canonical[2:]]
    # a well-formed rANS stream under a table the encoder would not have chosen
    monkeypatch.setattr(codec, "_frequencies", lambda counts: list(other))
    payload = encode_entropy(codes)
    monkeypatch.undo()
    assert struct.unpack_from("<4H", payload, HEADER_BYTES) == tuple(other)
    assert _reason(payload, 300) == "malformed"


def _payloads(n: int) -> list[tuple[bytes, np.ndarray, np.ndarray]]:
    """(payload, codes, base) for every form."""
    codes = _codes(n, "skewed", seed=n)
    base = _mutate(codes, 2)
    payloads = (encode_full(codes), encode_delta(codes, base), encode_entropy(codes))
    return [(payload, codes, base) for payload in payloads]


def _accepted_corruptions(payload: bytes, n: int, base: np.ndarray, masks: range | list[int]):
    """(position, xor mask) of every single-byte corruption that still decodes."""
    accepted = []
    for pos in range(len(payload)):
        for mask in masks:
            corrupt = bytearray(payload)
            corrupt[pos] ^= mask
            try:
                decode_strategy(bytes(corrupt), n, base)
            except CodecError:
                continue
            accepted.append((pos, mask))
    return accepted


@pytest.mark.parametrize("n", [0, 1, 5, 13, 64])
def test_every_single_byte_corruption_is_rejected(n):
    (full, _, base), *others = _payloads(n)
    assert _accepted_corruptions(full, n, base, range(1, 256)) == []  # every other byte value
    single_bits = [1 << bit for bit in range(8)] + [0xFF]
    for payload, _, base in others:
        assert _accepted_corruptions(payload, n, base, single_bits) == []


@pytest.mark.parametrize("n", [0, 1, 4, 5, 13, 1000])
def test_truncation_and_trailing_bytes_are_rejected(n):
    for payload, codes, base in _payloads(n):
        assert np.array_equal(decode_strategy(payload, n, base), codes)
        for cut in range(len(payload)):
            with pytest.raises(CodecError):
                decode_strategy(payload[:cut], n, base)
        for extra in (b"\x00", b"\x01", b"\xff", b"\x00\x00\x00"):
            with pytest.raises(CodecError) as info:
                decode_strategy(payload + extra, n, base)
            assert info.value.reason in {"length", "malformed"}


def test_reasons_are_documented():
    assert set(REASONS) >= {"length", "checksum", "base-mismatch", "malformed", "form"}


# --- property tests -------------------------------------------------------------------------------

code_arrays = st.one_of(
    st.lists(st.integers(0, 3), max_size=300),
    st.lists(st.sampled_from([0] * 12 + [1, 1, 2, 3]), max_size=300),
    st.integers(0, 300).flatmap(lambda n: st.just([1] * n)),
).map(lambda xs: np.array(xs, dtype=np.uint8))


@st.composite
def codes_and_base(draw):
    codes = draw(code_arrays)
    choice = draw(st.sampled_from(["none", "same", "mutated", "random", "other-length"]))
    if choice == "none":
        return codes, None
    if choice == "same":
        return codes, codes.copy()
    if choice == "other-length":
        return codes, draw(code_arrays)
    if choice == "random":
        values = st.lists(st.integers(0, 3), min_size=codes.size, max_size=codes.size)
        return codes, np.array(draw(values), dtype=np.uint8)
    base = codes.copy()
    for i in draw(st.lists(st.integers(0, max(codes.size - 1, 0)), max_size=10)):
        if codes.size:
            base[i] = draw(st.integers(0, 3))
    return codes, base


@settings(max_examples=300, deadline=None)
@given(codes_and_base())
def test_property_round_trip(pair):
    codes, base = pair
    n = codes.size
    same_length = base is not None and base.size == n
    payload = encode_strategy(codes, base)
    assert np.array_equal(decode_strategy(payload, n, base if same_length else None), codes)
    assert np.array_equal(decode_strategy(encode_full(codes), n), codes)
    assert np.array_equal(decode_strategy(encode_entropy(codes), n), codes)
    sizes = [len(encode_full(codes)), len(encode_entropy(codes))]
    if same_length:
        delta = encode_delta(codes, base)
        assert np.array_equal(decode_strategy(delta, n, base), codes)
        sizes.append(len(delta))
    assert len(payload) == min(sizes)


def _decode_or_reject(payload: bytes, count: int, base: np.ndarray | None) -> np.ndarray | None:
    try:
        result = decode_strategy(payload, count, base)
    except CodecError as err:
        assert err.reason in REASONS
        return None
    _assert_valid(result, count, payload)
    return result


fuzz_bases = st.one_of(st.none(), code_arrays)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 40), fuzz_bases)
def test_fuzz_random_bytes(data, count, base):
    _decode_or_reject(data, count, base)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 3), st.integers(0, 40), st.binary(max_size=40), st.data())
def test_fuzz_random_bodies_behind_valid_headers(form, count, body, data):
    base = data.draw(
        st.one_of(
            st.none(),
            st.lists(st.integers(0, 3), min_size=count, max_size=count).map(
                lambda xs: np.array(xs, dtype=np.uint8)
            ),
        )
    )
    crc = data.draw(st.sampled_from([0, 0xFFFFFFFF, checksum(np.zeros(count, np.uint8))]))
    prefix = struct.pack("<I", checksum(base)) if form == DELTA and base is not None else b""
    _decode_or_reject(_header(form, count, crc) + prefix + body, count, base)


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10_000), st.integers(1, 255)
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=1000, deadline=None)
@given(codes_and_base(), st.sampled_from(["full", "delta", "entropy", "best"]), mutations)
def test_fuzz_mutated_payloads(pair, form, ops):
    codes, base = pair
    if base is None or base.size != codes.size:
        base = codes.copy()
    payload = {
        "full": encode_full,
        "entropy": encode_entropy,
        "delta": lambda c: encode_delta(c, base),
        "best": lambda c: encode_strategy(c, base),
    }[form](codes)
    mutated = bytearray(payload)
    for op, pos, value in ops:
        if op == "flip" and mutated:
            mutated[pos % len(mutated)] ^= value
        elif op == "insert":
            mutated.insert(pos % (len(mutated) + 1), value)
        elif op == "delete" and mutated:
            del mutated[pos % len(mutated)]
    result = _decode_or_reject(bytes(mutated), codes.size, base)
    # CRC-32 plus canonical encodings: whatever still decodes is the original vector
    assert result is None or np.array_equal(result, codes)
