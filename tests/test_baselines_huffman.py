"""Canonical Huffman coder and Deep Compression's relative indices: exactness, entropy, hostile bytes."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from jointsparse.baselines import (
    DEEP_COMPRESSION_BITS,
    INDEX_BITS,
    HuffmanError,
    RelativeIndexError,
    huffman_decode,
    huffman_encode,
    relative_index_decode,
    relative_index_encode,
    relative_index_layer_decode,
    relative_index_layer_encode,
)
from jointsparse.baselines.huffman import MAX_CODE_LENGTH, canonical_codes, code_lengths


def entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.integers(0, 400), elements=st.integers(0, 300)))
def test_huffman_round_trips_any_symbols(symbols):
    decoded = huffman_decode(huffman_encode(symbols))
    assert decoded.dtype == np.int64 and np.array_equal(decoded, symbols)


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.integers(0, 32, 50_000),  # uniform 5-bit codes
        lambda rng: np.minimum(rng.geometric(0.35, 80_000), 255),  # skewed 8-bit
        lambda rng: (rng.random(60_000) < 0.97).astype(np.int64),  # nearly constant: H << 1 bit
        lambda rng: np.full(1000, 7),  # one symbol
    ],
)
def test_huffman_is_within_one_bit_of_the_order0_entropy(draw):
    symbols = draw(np.random.default_rng(0))
    data = huffman_encode(symbols)
    assert np.array_equal(huffman_decode(data), symbols)
    counts = np.bincount(symbols)
    lengths = code_lengths(counts)
    mean_length = float((counts * lengths).sum() / symbols.size)
    entropy = entropy_bits(symbols)
    assert entropy - 1e-9 <= mean_length <= entropy + 1  # strictly below with two or more symbols
    assert counts.nonzero()[0].size == 1 or mean_length < entropy + 1
    table_size = struct.unpack_from("<4sBQII", data)[4]
    assert len(data) - 21 - table_size == -(-int((counts * lengths).sum()) // 8)  # the payload is the codes
    assert table_size <= 2 * counts.size  # a byte per used symbol, two per run of unused ones


def test_code_lengths_are_limited_and_canonical_codes_are_prefix_free():
    counts = np.array([int(1.7**i) + 1 for i in range(40)])  # Fibonacci-like: an unlimited tree is 39 deep
    lengths = code_lengths(counts)
    assert lengths.max() <= MAX_CODE_LENGTH
    assert sum(2.0 ** -int(length) for length in lengths) == 1.0  # complete
    codes = canonical_codes(lengths)
    words = {format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths)}
    assert len(words) == 40 and not any(a != b and b.startswith(a) for a in words for b in words)
    symbols = np.repeat(np.arange(40), np.minimum(counts, 2000))
    assert np.array_equal(huffman_decode(huffman_encode(symbols)), symbols)


def test_huffman_rejects_bad_symbols():
    for bad, message in ((np.array([-1, 2]), r"\[0, 65536\)"), (np.array([70000]), r"\[0, 65536\)"), (np.array([0.5]), "integers"), (np.array([True]), "integers")):
        with pytest.raises(HuffmanError, match=message):
            huffman_encode(bad)


def test_huffman_decode_rejects_corrupt_streams():
    symbols = np.random.default_rng(1).integers(0, 20, 5000)
    good = huffman_encode(symbols)
    magic, version, count, alphabet, table_size = struct.unpack_from("<4sBQII", good)
    body = good[21:]
    cases = {
        "shorter than": good[:10],
        "magic": b"XXXX" + good[4:],
        "version": good[:4] + bytes([9]) + good[5:],
        "holds only": struct.pack("<4sBQII", magic, version, 2**60, alphabet, table_size) + body,  # no huge allocation
        "ends after": good[:-40],
        "data after": good + b"\x00",
        "table runs past": struct.pack("<4sBQII", magic, version, count, alphabet, 10**6) + body,
        "describes": struct.pack("<4sBQII", magic, version, count, alphabet + 3, table_size) + body,
        "exceeds 65536": struct.pack("<4sBQII", magic, version, count, 2**20, table_size) + body,
        "complete prefix": good[:21] + bytes([1]) + good[22:],  # one length changed
    }
    for message, data in cases.items():
        with pytest.raises(HuffmanError, match=message):
            huffman_decode(data)


def test_huffman_decode_never_fails_otherwise_on_random_damage():
    rng = np.random.default_rng(2)
    good = huffman_encode(rng.integers(0, 9, 3000))
    for trial in range(300):
        data = bytearray(good)
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(0, len(data))] ^= 1 << int(rng.integers(0, 8))
        try:
            decoded = huffman_decode(bytes(data))
        except HuffmanError:
            continue
        # No checksum here (the .jsz sections carry one): a flip inside the payload can decode,
        # but only to the declared number of symbols of the alphabet.
        assert decoded.size <= 8 * len(data) and (decoded.size == 0 or decoded.max() < 65536)
    for size in range(0, 60, 7):
        with pytest.raises(HuffmanError):
            huffman_decode(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


# -- relative indices -----------------------------------------------------------------------------


def test_relative_indices_with_fillers_as_han_describes():
    gaps, filler = relative_index_encode(np.array([1, 4, 15]), width=3)
    # gaps 2, 3, 11: the last exceeds 2^3, so one filler (a gap of 8) comes first
    assert gaps.tolist() == [1, 2, 7, 2] and filler.tolist() == [False, False, True, False]
    assert relative_index_decode(gaps, 3).tolist() == [1, 4, 12, 15]
    assert relative_index_decode(gaps, 3, filler).tolist() == [1, 4, 15]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5000), max_size=60), st.integers(1, 8))
def test_relative_indices_round_trip_incl_long_gaps(steps, width):
    positions = np.cumsum(np.array(steps, dtype=np.int64)) - 1
    gaps, filler = relative_index_encode(positions, width)
    assert gaps.size == 0 or (gaps.min() >= 0 and gaps.max() < 2**width)
    assert int(filler.sum()) == sum((s - 1) // 2**width for s in steps)
    assert np.array_equal(relative_index_decode(gaps, width, filler), positions)


def test_relative_index_errors():
    with pytest.raises(RelativeIndexError, match="strictly increasing"):
        relative_index_encode(np.array([3, 3]), 4)
    with pytest.raises(RelativeIndexError, match="strictly increasing"):
        relative_index_encode(np.array([-2]), 4)
    with pytest.raises(RelativeIndexError, match="width"):
        relative_index_encode(np.array([1]), 0)
    with pytest.raises(RelativeIndexError, match=r"\[0, 16\)"):
        relative_index_decode(np.array([16]), 4)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_layer_stream_round_trips_han_settings(kind):
    rng = np.random.default_rng(3)
    size, bits = 40_000, DEEP_COMPRESSION_BITS[kind]
    codes = np.where(rng.random(size) < 0.08, rng.integers(1, 2**bits, size), 0)
    codes[-1] = 0
    codes[: 2**INDEX_BITS[kind] * 3] = 0  # a run needing fillers at the start
    data = relative_index_layer_encode(codes.reshape(200, 200), INDEX_BITS[kind])
    assert np.array_equal(relative_index_layer_decode(data), codes)
    assert len(data) < size * bits / 8 * 0.2  # 8% density: far below the dense size
    empty = relative_index_layer_encode(np.zeros(5000, dtype=np.int64), 5)  # trailing fillers only
    assert np.array_equal(relative_index_layer_decode(empty), np.zeros(5000))


def test_layer_stream_rejects_corrupt_headers():
    data = relative_index_layer_encode(np.array([0, 3, 0, 0, 5, 0]), 2)
    magic, version, width, size, gap_bytes = struct.unpack_from("<4sBBQQ", data)
    body = data[22:]
    with pytest.raises(RelativeIndexError, match="does not fit"):
        relative_index_layer_decode(struct.pack("<4sBBQQ", magic, version, width, 2**50, gap_bytes) + body)
    with pytest.raises(RelativeIndexError, match="width"):
        relative_index_layer_decode(struct.pack("<4sBBQQ", magic, version, 99, size, gap_bytes) + body)
    with pytest.raises(RelativeIndexError, match="runs past"):
        relative_index_layer_decode(struct.pack("<4sBBQQ", magic, version, width, size, 10**9) + body)
    with pytest.raises(ValueError):
        relative_index_layer_decode(data[:-3])
