"""Canonical Huffman coding of non-negative integer symbols, byte-oriented and free of torch.

Format (little-endian)::

    magic b"JSHF" | version u8 | count u64 | alphabet u32 | table_bytes u32 | table | payload

``alphabet`` is the largest symbol + 1 (at most 2^16). The table holds one code length per
symbol of the alphabet: a byte 1..20 is a length; a byte 0 followed by a byte r stands for r + 1
unused symbols. Codes are canonical (by length, then symbol) and at most
:data:`MAX_CODE_LENGTH` bits, so lengths alone define them. The payload is the codes' bits, most
significant first, zero-padded to a byte.

Decoding checks everything before it allocates: the table must describe a complete prefix code
(or one symbol of length 1), the payload must hold at least ``count * shortest_code`` bits (so
the output is at most 8x the payload's byte count), every code must be valid, and the payload
must end where the last code ends (only zero padding after it). Violations raise
:class:`HuffmanError`; the decoder's loops are bounded by the payload length.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

MAGIC = b"JSHF"
VERSION = 1
MAX_CODE_LENGTH = 20
MAX_ALPHABET = 1 << 16
_HEADER = struct.Struct("<4sBQII")
_SEGMENT = 1 << 18  # bit positions decoded per vectorized window computation


class HuffmanError(ValueError):
    """Symbols that cannot be coded, or bytes that are not a valid Huffman stream."""


# -- code construction ---------------------------------------------------------------------------


def _tree_lengths(counts: list[int]) -> list[int]:
    """Huffman code lengths of symbols with the given (positive) counts; ties by creation order."""
    heap = [(count, index) for index, count in enumerate(counts)]
    heapq.heapify(heap)
    parent = [0] * (2 * len(counts) - 1)
    node = len(counts)
    while len(heap) > 1:
        first_count, first = heapq.heappop(heap)
        second_count, second = heapq.heappop(heap)
        parent[first] = parent[second] = node
        heapq.heappush(heap, (first_count + second_count, node))
        node += 1
    depth = [0] * len(parent)
    for index in range(len(parent) - 2, -1, -1):  # parents are created after their children
        depth[index] = depth[parent[index]] + 1
    return depth[: len(counts)]


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths for symbol ``counts`` (0 for unused symbols), at most ``max_length``.

    A single used symbol gets length 1. If the optimal tree is deeper than ``max_length``, the
    counts are halved (rounding up, so none vanishes) until it is not: a rare case (it needs a
    symbol about phi^max_length times rarer than the commonest) that costs little compression.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.shape, dtype=np.int64)
    used = np.flatnonzero(counts > 0)
    if used.size == 1:
        lengths[used] = 1
    elif used.size > 1:
        if (1 << max_length) < used.size:
            raise HuffmanError(f"{used.size} symbols do not fit codes of at most {max_length} bits")
        weights = [int(c) for c in counts[used]]
        while True:
            tree = _tree_lengths(weights)
            if max(tree) <= max_length:
                break
            weights = [(w + 1) // 2 for w in weights]
        lengths[used] = tree
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (by length, then symbol); 0 where the length is 0."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.shape, dtype=np.int64)
    code, previous = 0, 0
    for symbol in np.lexsort((np.arange(lengths.size), lengths)):
        length = int(lengths[symbol])
        if length == 0:
            continue
        code <<= length - previous
        codes[symbol] = code
        code, previous = code + 1, length
    return codes


def _write_table(lengths: np.ndarray) -> bytes:
    out = bytearray()
    index = 0
    while index < lengths.size:
        if lengths[index]:
            out.append(int(lengths[index]))
            index += 1
            continue
        run = 1
        while run < 256 and index + run < lengths.size and lengths[index + run] == 0:
            run += 1
        out += bytes((0, run - 1))
        index += run
    return bytes(out)


def _read_table(table: bytes, alphabet: int) -> np.ndarray:
    lengths = np.zeros(alphabet, dtype=np.int64)
    index = position = 0
    while position < len(table):
        if index >= alphabet:
            raise HuffmanError("code-length table is longer than the alphabet")
        value = table[position]
        if value == 0:
            if position + 1 >= len(table):
                raise HuffmanError("code-length table ends inside a run")
            index += table[position + 1] + 1
            position += 2
        elif value > MAX_CODE_LENGTH:
            raise HuffmanError(f"code length {value} exceeds {MAX_CODE_LENGTH}")
        else:
            lengths[index] = value
            index += 1
            position += 1
    if index != alphabet:
        raise HuffmanError(f"code-length table describes {index} symbols, header says {alphabet}")
    return lengths


# -- encode / decode -----------------------------------------------------------------------------


def _as_symbols(symbols: np.ndarray) -> np.ndarray:
    array = np.asarray(symbols)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise HuffmanError(f"symbols must be integers, got dtype {array.dtype}")
    array = array.ravel().astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= MAX_ALPHABET):
        raise HuffmanError(f"symbols must be in [0, {MAX_ALPHABET}), got [{array.min()}, {array.max()}]")
    return array


def huffman_encode(symbols: np.ndarray) -> bytes:
    """Canonical-Huffman-code an integer array (flattened; values in [0, 2^16))."""
    array = _as_symbols(symbols)
    if array.size == 0:
        return _HEADER.pack(MAGIC, VERSION, 0, 0, 0)
    counts = np.bincount(array)
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    table = _write_table(lengths)
    bits = []
    for start in range(0, array.size, _SEGMENT):
        chunk = array[start : start + _SEGMENT]
        chunk_lengths = lengths[chunk]
        # Left-align each code in 32 bits, spread those to bytes of bits, keep each code's first bits.
        aligned = (codes[chunk] << (32 - chunk_lengths)).astype(">u4")
        spread = np.unpackbits(aligned.view(np.uint8)).reshape(-1, 32)
        bits.append(spread[np.arange(32) < chunk_lengths[:, None]])
    header = _HEADER.pack(MAGIC, VERSION, array.size, counts.size, len(table))
    return header + table + np.packbits(np.concatenate(bits)).tobytes()


def _decode_tables(lengths: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Window width L and, per L-bit window, the symbol whose code starts it and that code's
    length (0: no code starts so, i.e. corrupt data)."""
    width = int(lengths.max())
    codes = canonical_codes(lengths)
    symbols = np.zeros(1 << width, dtype=np.int64)
    sizes = np.zeros(1 << width, dtype=np.int64)
    for symbol in np.flatnonzero(lengths):
        shift = width - int(lengths[symbol])
        low, high = int(codes[symbol]) << shift, (int(codes[symbol]) + 1) << shift
        symbols[low:high] = symbol
        sizes[low:high] = lengths[symbol]
    return width, symbols, sizes


def huffman_decode(data: bytes) -> np.ndarray:
    """Decode :func:`huffman_encode`'s bytes into an int64 array. Raises :class:`HuffmanError`
    on anything that is not exactly such a stream."""
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise HuffmanError(f"Huffman stream of {len(data)} bytes is shorter than its {_HEADER.size}-byte header")
    magic, version, count, alphabet, table_size = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise HuffmanError(f"not a Huffman stream (magic {magic!r})")
    if version != VERSION:
        raise HuffmanError(f"unsupported Huffman stream version {version}")
    if alphabet > MAX_ALPHABET:
        raise HuffmanError(f"alphabet of {alphabet} symbols exceeds {MAX_ALPHABET}")
    if _HEADER.size + table_size > len(data):
        raise HuffmanError("code-length table runs past the end of the stream")
    table = data[_HEADER.size : _HEADER.size + table_size]
    payload = np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size + table_size)
    if count == 0:
        if alphabet or table_size or payload.size:
            raise HuffmanError("empty Huffman stream with a table or payload")
        return np.zeros(0, dtype=np.int64)
    lengths = _read_table(table, alphabet)
    used = np.flatnonzero(lengths)
    if used.size == 0:
        raise HuffmanError("code-length table has no symbol")
    kraft = sum(1 << (MAX_CODE_LENGTH - int(length)) for length in lengths[used])
    complete = kraft == 1 << MAX_CODE_LENGTH
    if not (complete or (used.size == 1 and lengths[used[0]] == 1)):
        raise HuffmanError("code lengths do not form a complete prefix code")
    total_bits = 8 * payload.size
    if count > total_bits // int(lengths[used].min()):
        raise HuffmanError(f"stream declares {count} symbols but holds only {total_bits} payload bits")

    width, window_symbols, window_sizes = _decode_tables(lengths)
    bits = np.concatenate([np.unpackbits(payload), np.zeros(width, dtype=np.uint8)])
    out = np.empty(count, dtype=np.int64)
    done = position = 0
    while done < count:
        if position >= total_bits:
            raise HuffmanError(f"Huffman payload ends after {done} of {count} symbols")
        base, end = position, min(position + _SEGMENT, total_bits)
        windows = np.zeros(end - base, dtype=np.int64)
        for bit in range(width):
            windows = (windows << 1) | bits[base + bit : end + bit]
        symbols = window_symbols[windows].tolist()
        sizes = window_sizes[windows].tolist()
        decoded: list[int] = []
        append = decoded.append  # the decoder's one Python-level loop: keep it lean
        local, limit, wanted = position - base, end - base, count - done
        if wanted > limit - local:  # this segment cannot hold the last symbol: no count check needed
            while local < limit:
                size = sizes[local]
                if not size:
                    raise HuffmanError(f"invalid Huffman code at bit {base + local}")
                append(symbols[local])
                local += size
        else:
            while local < limit and len(decoded) < wanted:
                size = sizes[local]
                if not size:
                    raise HuffmanError(f"invalid Huffman code at bit {base + local}")
                append(symbols[local])
                local += size
        out[done : done + len(decoded)] = decoded
        done += len(decoded)
        position = base + local
    if position > total_bits:
        raise HuffmanError("Huffman payload ends inside the last code")
    if (position + 7) // 8 != payload.size or bits[position:total_bits].any():
        raise HuffmanError("Huffman payload has data after the last code")
    return out
