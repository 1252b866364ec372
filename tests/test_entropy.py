"""jointsparse.codecs.entropy: symbol and position streams, both coders, hostile streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jointsparse.codecs import FormatError
from jointsparse.codecs.entropy import (
    CODERS,
    adaptive_blocks,
    GAP_ESCAPE,
    decode_positions,
    decode_symbols,
    encode_positions,
    encode_symbols,
    order0_entropy_bits,
    positions_to_symbols,
    symbols_to_positions,
)


def test_order0_entropy_of_known_histograms():
    assert order0_entropy_bits(np.array([5, 5])) == pytest.approx(10.0)
    assert order0_entropy_bits(np.array([8, 0, 0])) == 0.0
    assert order0_entropy_bits(np.array([2, 1, 1])) == pytest.approx(6.0)
    assert order0_entropy_bits(np.zeros(4)) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    coder=st.sampled_from(CODERS),
    alphabet=st.sampled_from([1, 2, 3, 31, 256, 257, 4095, 65535]),
    count=st.integers(0, 3000),
    skew=st.floats(0.0, 4.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_symbol_streams_round_trip(coder, alphabet, count, skew, seed):
    rng = np.random.default_rng(seed)
    weights = np.exp(-skew * np.arange(alphabet) / max(alphabet, 1) * 8)
    symbols = rng.choice(alphabet, size=count, p=weights / weights.sum())
    stream = encode_symbols(symbols, alphabet, coder)
    decoded, model_bytes = decode_symbols(stream.data, count, alphabet, coder)
    np.testing.assert_array_equal(decoded, symbols)
    assert model_bytes == stream.model_bytes
    assert stream.entropy_bytes == pytest.approx(order0_entropy_bits(np.bincount(symbols, minlength=alphabet)) / 8)


@pytest.mark.parametrize("bits", [5, 6])
def test_ans_index_stream_is_within_5_percent_of_order0_entropy_model_included(bits):
    """A 90%-sparse layer's worth of k-means-like indices (skewed, 2^b - 1 letters)."""
    rng = np.random.default_rng(bits)
    alphabet = 2**bits - 1
    weights = np.exp(-0.5 * ((np.arange(alphabet) - alphabet / 2) / (alphabet / 5)) ** 2)
    symbols = rng.choice(alphabet, size=40_000, p=weights / weights.sum())
    stream = encode_symbols(symbols, alphabet, "ans")
    assert stream.nbytes <= 1.05 * stream.entropy_bytes
    assert stream.nbytes - stream.model_bytes <= 1.002 * stream.entropy_bytes + 8


def test_ans_bitmap_is_near_entropy_and_beats_zstd():
    rng = np.random.default_rng(0)
    positions = np.flatnonzero(rng.random(200_000) < 0.1)
    ans = encode_positions(positions, 200_000, "ans", "bitmap")[1]
    zstd = encode_positions(positions, 200_000, "zstd", "bitmap")[1]
    assert ans.nbytes <= 1.002 * ans.entropy_bytes + 16
    assert ans.nbytes < zstd.nbytes


@settings(max_examples=60, deadline=None)
@given(
    coder=st.sampled_from(CODERS),
    numel=st.integers(0, 3000),
    density=st.floats(0.0, 1.0),
    clustered=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_position_streams_round_trip_for_both_codings(coder, numel, density, clustered, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(numel) < density
    if clustered and numel:  # long zero runs exercise the gap escapes
        mask[: int(numel * 0.8)] = False
    positions = np.flatnonzero(mask)
    for coding in ("bitmap", "gaps"):
        chosen, stream = encode_positions(positions, numel, coder, coding)
        decoded, _, _ = decode_positions(stream.data, chosen, stream.count, numel, positions.size, coder)
        np.testing.assert_array_equal(decoded, positions)
    best, stream = encode_positions(positions, numel, coder)
    assert stream.nbytes == min(encode_positions(positions, numel, coder, c)[1].nbytes for c in ("bitmap", "gaps"))


def test_gap_symbols_use_escapes_for_long_runs():
    symbols, alphabet = positions_to_symbols(np.array([0, 600, 601]), 1000, "gaps")
    assert alphabet == 256
    np.testing.assert_array_equal(symbols, [0, GAP_ESCAPE, GAP_ESCAPE, 89, 0])  # 599 = 2 * 255 + 89
    np.testing.assert_array_equal(symbols_to_positions(symbols, 1000, 3, "gaps"), [0, 600, 601])
    with pytest.raises(FormatError, match="ends in an escape"):
        symbols_to_positions(np.array([0, GAP_ESCAPE], dtype=np.uint8), 1000, 1, "gaps")
    with pytest.raises(FormatError, match="reaches position"):
        symbols_to_positions(np.array([200], dtype=np.uint8), 100, 1, "gaps")
    with pytest.raises(FormatError, match="manifest says"):
        symbols_to_positions(np.array([1, 2], dtype=np.uint8), 100, 3, "gaps")


def test_decoder_checks_declared_counts_against_the_stream_before_allocating():
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.3, 1000) - 1, 30)  # skewed: a count table pays off
    stream = encode_symbols(symbols, 31, "ans", adaptive=False)
    assert stream.model_bytes > 1  # a count table: its sum must match the declared count
    with pytest.raises(FormatError, match="counts sum"):
        decode_symbols(stream.data, 10**12, 31, "ans")
    with pytest.raises(FormatError, match="entries for an alphabet"):
        decode_symbols(stream.data, 1000, 7, "ans")
    zstd = encode_symbols(symbols, 31, "zstd")
    with pytest.raises(FormatError, match="frame declares"):
        decode_symbols(zstd.data, 10**12, 31, "zstd")
    with pytest.raises(FormatError, match="no data"):
        decode_symbols(b"", 5, 31, "ans")
    with pytest.raises(FormatError, match="empty stream"):
        decode_symbols(b"\x01", 0, 31, "ans")
    with pytest.raises(FormatError, match="alphabet"):
        decode_symbols(stream.data, 1000, 0, "ans")
    with pytest.raises(FormatError, match="unknown coder"):
        decode_symbols(stream.data, 1000, 31, "huffman")
    with pytest.raises(FormatError, match="unknown ANS model kind"):
        decode_symbols(b"\x07abcd", 3, 31, "ans")


def test_compact_models_for_degenerate_streams():
    # One symbol repeated: the count table alone (no payload), cut after the last used symbol.
    repeated = encode_symbols(np.full(5000, 3), 65535, "ans")
    assert repeated.nbytes <= 8 and repeated.model_bytes == repeated.nbytes
    np.testing.assert_array_equal(decode_symbols(repeated.data, 5000, 65535, "ans")[0], 3)
    with pytest.raises(FormatError, match="no payload"):
        decode_symbols(repeated.data + b"\x01\x00\x00\x00", 5000, 65535, "ans")
    # A flat histogram over a big alphabet: the uniform model (no table) is smaller.
    flat = encode_symbols(np.arange(0, 65535, 1600), 65535, "ans")
    assert flat.model_bytes == 1


def test_corrupt_ans_payload_raises_format_error():
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 63, 5000)
    data = bytearray(encode_symbols(symbols, 63, "ans").data)
    failures = 0
    for position in range(len(data) - 64, len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x5A
        try:
            decoded, _ = decode_symbols(bytes(corrupt), 5000, 63, "ans")
        except FormatError:
            failures += 1
            continue
        assert decoded.shape == (5000,) and decoded.max() < 63  # wrong but well-formed
    assert failures > 0


def test_encoder_rejects_out_of_range_symbols():
    with pytest.raises(ValueError, match="outside"):
        encode_symbols(np.array([0, 5]), 5, "ans")
    with pytest.raises(ValueError, match="coder"):
        encode_symbols(np.array([0]), 5, "lzma")
    with pytest.raises(ValueError, match="position coding"):
        positions_to_symbols(np.array([1]), 4, "runs")


def test_the_adaptive_model_learns_instead_of_storing_a_table():
    """Format version 3: a skewed stream of a 5-bit layer's size costs less without its count
    table, coded block by block with the counts seen so far."""
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.3, 1000) - 1, 30)
    learned = encode_symbols(symbols, 31, "ans")
    counted = encode_symbols(symbols, 31, "ans", adaptive=False)
    assert learned.data[0] == 2 and learned.model_bytes == 1 and counted.data[0] == 1
    assert learned.nbytes < counted.nbytes
    decoded, model_bytes = decode_symbols(learned.data, 1000, 31, "ans")
    np.testing.assert_array_equal(decoded, symbols)
    assert model_bytes == 1
    # Blocks: 8 symbols, then half of what came before; every boundary crossed in a round trip.
    assert adaptive_blocks(30) == [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert adaptive_blocks(0) == [] and adaptive_blocks(1) == [(0, 1)]
    for count in (1, 7, 8, 9, 17, 100, 5000):
        part = symbols[:count] if count <= 1000 else np.resize(symbols, count)
        stream = encode_symbols(part, 31, "ans")
        np.testing.assert_array_equal(decode_symbols(stream.data, count, 31, "ans")[0], part)


def test_adaptive_streams_are_checked():
    rng = np.random.default_rng(1)
    symbols = np.minimum(rng.geometric(0.3, 1000) - 1, 30)
    data = encode_symbols(symbols, 31, "ans").data
    assert data[0] == 2
    with pytest.raises(FormatError, match="^unknown ANS model kind 2 \\(adaptive models are format version 3\\)$"):
        decode_symbols(data, 1000, 31, "ans", adaptive=False)  # what a version-1 or -2 file gets
    with pytest.raises(FormatError, match="data left"):  # the coder must be exhausted
        decode_symbols(data + b"\x01\x00\x00\x00", 1000, 31, "ans")
    with pytest.raises(FormatError, match="data left"):  # fewer symbols declared than coded
        decode_symbols(data, 900, 31, "ans")
    with pytest.raises(FormatError, match="multiple of 4"):
        decode_symbols(data[:-1], 1000, 31, "ans")
    with pytest.raises(FormatError):
        decode_symbols(data[:-4], 1000, 31, "ans")
    # A one-letter alphabet has nothing to learn: an adaptive stream of it has no payload.
    np.testing.assert_array_equal(decode_symbols(b"\x02", 5, 1, "ans")[0], np.zeros(5))
    with pytest.raises(FormatError, match="no payload"):
        decode_symbols(b"\x02\x01\x00\x00\x00", 5, 1, "ans")
    # Random payloads decode to symbols inside the alphabet, or fail with FormatError only.
    for seed in range(40):
        noise = np.random.default_rng(seed).integers(0, 256, 4 * (1 + seed % 9), dtype=np.uint8).tobytes()
        try:
            decoded, _ = decode_symbols(b"\x02" + noise, 50 + seed, 31, "ans")
        except FormatError:
            continue
        assert decoded.size == 50 + seed and int(decoded.max()) < 31


def test_the_one_varint_helper():
    from jointsparse.codecs.varint import MAX_VARINT_BYTES, get_varint, put_varint, varint_bytes

    for value in (0, 1, 127, 128, 300, 2**32, 2**64 - 1):
        data = b"\xaa" + varint_bytes(value) + b"\xbb"
        assert get_varint(data, 1) == (value, len(data) - 1)
    assert varint_bytes(300) == b"\xac\x02" and len(varint_bytes(2**64 - 1)) == MAX_VARINT_BYTES
    out = bytearray()
    put_varint(out, 5)
    put_varint(out, 129)
    assert bytes(out) == b"\x05\x81\x01"
    with pytest.raises(ValueError, match="unsigned"):
        put_varint(bytearray(), -1)
    with pytest.raises(FormatError, match="^ANS model table is truncated or has an over-long varint$"):
        get_varint(b"\x81\x81", 0, "ANS model table")
    with pytest.raises(FormatError, match="over-long"):
        get_varint(b"\x80" * MAX_VARINT_BYTES + b"\x01", 0)
    with pytest.raises(FormatError, match="section table"):  # it must end before ``end``
        get_varint(b"\x81\x01", 0, "section table", end=1)
    # A truncated count table in a stream: FormatError, never IndexError.
    with pytest.raises(FormatError, match="ANS model table is truncated"):
        decode_symbols(b"\x01\x03\x05\x85", 10, 31, "ans")
