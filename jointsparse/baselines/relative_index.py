"""Relative indices with filler zeros (Han et al., Deep Compression, section 3) and the
per-layer stream that pairs them with Huffman coding. Byte-oriented, numpy only.

The positions of a layer's non-zero weights are stored as gaps: entry ``i`` stores
``position_i - position_{i-1} - 1`` (the first gap counts from -1) in ``width`` bits, so a gap
can be 1 .. 2^width. A longer gap is bridged by *filler* entries, each a gap of exactly 2^width,
whose weight is stored as a zero code (Han et al.'s "filler zero"). Han et al. use 8 bits for
conv layers and 5 for fully connected ones.
"""

from __future__ import annotations

import struct

import numpy as np

from .huffman import HuffmanError, huffman_decode, huffman_encode

MAX_INDEX_WIDTH = 30
_LAYER_MAGIC = b"JSRI"
_LAYER_VERSION = 1
_LAYER_HEADER = struct.Struct("<4sBBQQ")  # magic, version, width, size, bytes of the gap stream


class RelativeIndexError(ValueError):
    """Positions or a width that relative indices cannot represent, or a corrupt layer stream."""


def _check_width(width: int) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width <= MAX_INDEX_WIDTH:
        raise RelativeIndexError(f"index width must be an int in [1, {MAX_INDEX_WIDTH}], got {width!r}")
    return int(width)


def relative_index_encode(positions: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative indices of strictly increasing non-negative ``positions``.

    Returns ``(gaps, filler)``: ``gaps`` (int64, each in [0, 2^width)) stores ``gap - 1`` per
    entry, and the bool array ``filler`` marks the filler entries inserted before gaps longer
    than 2^width.
    """
    width = _check_width(width)
    positions = np.asarray(positions)
    if positions.ndim != 1 or (positions.size and not np.issubdtype(positions.dtype, np.integer)):
        raise RelativeIndexError("positions must be a 1-D integer array")
    positions = positions.astype(np.int64)
    if positions.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    gaps = np.diff(positions, prepend=-1)
    if gaps.min() < 1:
        raise RelativeIndexError("positions must be non-negative and strictly increasing")
    span = 1 << width
    fillers = (gaps - 1) // span
    ends = np.cumsum(fillers + 1) - 1  # each real entry comes after its fillers
    stored = np.full(int(ends[-1]) + 1, span - 1, dtype=np.int64)
    stored[ends] = gaps - fillers * span - 1
    filler = np.ones(stored.size, dtype=bool)
    filler[ends] = False
    return stored, filler


def relative_index_decode(gaps: np.ndarray, width: int, filler: np.ndarray | None = None) -> np.ndarray:
    """Positions of every entry of ``gaps`` (:func:`relative_index_encode`'s first output), or of
    the real entries only when the ``filler`` mask is given."""
    width = _check_width(width)
    gaps = np.asarray(gaps)
    if gaps.ndim != 1 or (gaps.size and not np.issubdtype(gaps.dtype, np.integer)):
        raise RelativeIndexError("gaps must be a 1-D integer array")
    gaps = gaps.astype(np.int64)
    if gaps.size and (gaps.min() < 0 or gaps.max() >= 1 << width):
        raise RelativeIndexError(f"gaps must be in [0, {1 << width}) for width {width}")
    positions = np.cumsum(gaps + 1) - 1
    if filler is None:
        return positions
    filler = np.asarray(filler, dtype=bool)
    if filler.shape != gaps.shape:
        raise RelativeIndexError(f"filler mask has shape {filler.shape}, gaps {gaps.shape}")
    return positions[~filler]


def relative_index_layer_encode(codes: np.ndarray, width: int) -> bytes:
    """Deep Compression's stream for one layer: Huffman-coded relative indices of the non-zero
    ``codes`` (codebook indices, 0 = pruned), and the Huffman-coded codes of those entries
    (0 for fillers).

    Beyond Han et al., fillers also bridge the trailing zeros up to the layer's end, so that
    the stored layer size is bounded by the stream (a hostile header cannot ask the decoder
    for a huge array); that costs at most ``size / 2^width`` extra entries and usually none.
    """
    width = _check_width(width)
    codes = np.asarray(codes)
    if codes.dtype == np.bool_ or not np.issubdtype(codes.dtype, np.integer):
        raise RelativeIndexError(f"codes must be integers, got dtype {codes.dtype}")
    codes = codes.ravel()
    # A sentinel one past the end makes the encoder add the trailing fillers; it is not stored.
    gaps, _ = relative_index_encode(np.append(np.flatnonzero(codes), codes.size), width)
    gaps = gaps[:-1]
    entry_codes = codes[relative_index_decode(gaps, width)]
    gap_stream = huffman_encode(gaps)
    header = _LAYER_HEADER.pack(_LAYER_MAGIC, _LAYER_VERSION, width, codes.size, len(gap_stream))
    return header + gap_stream + huffman_encode(entry_codes)


def relative_index_layer_decode(data: bytes) -> np.ndarray:
    """Inverse of :func:`relative_index_layer_encode`: the flat int64 code array.

    Raises :class:`RelativeIndexError` (or :class:`~.huffman.HuffmanError`, also a ValueError)
    on corrupt data.
    """
    data = bytes(data)
    if len(data) < _LAYER_HEADER.size:
        raise RelativeIndexError(f"layer stream of {len(data)} bytes is shorter than its header")
    magic, version, width, size, gap_bytes = _LAYER_HEADER.unpack_from(data)
    if magic != _LAYER_MAGIC or version != _LAYER_VERSION:
        raise RelativeIndexError(f"not a relative-index layer stream (magic {magic!r}, version {version})")
    width = _check_width(width)
    if _LAYER_HEADER.size + gap_bytes > len(data):
        raise RelativeIndexError("gap stream runs past the end of the layer stream")
    gaps = huffman_decode(data[_LAYER_HEADER.size : _LAYER_HEADER.size + gap_bytes])
    entry_codes = huffman_decode(data[_LAYER_HEADER.size + gap_bytes :])
    if gaps.size != entry_codes.size:
        raise RelativeIndexError(f"{gaps.size} relative indices but {entry_codes.size} codes")
    positions = relative_index_decode(gaps, width)
    last = int(positions[-1]) if positions.size else -1
    if last >= size or size - last - 1 >= 1 << width:
        raise RelativeIndexError(f"layer size {size} does not fit the stream's last position {last}")
    out = np.zeros(size, dtype=np.int64)
    out[positions] = entry_codes
    return out


__all__ = [
    "HuffmanError",
    "RelativeIndexError",
    "relative_index_decode",
    "relative_index_encode",
    "relative_index_layer_decode",
    "relative_index_layer_encode",
]
