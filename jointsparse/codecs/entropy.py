"""Lossless coding of symbol streams: positions (bitmap, gap/run-length, or the context-modelled
map of :mod:`.context`) and codebook indices.

Two coders of symbol streams, both order-0 (context-free):

- ``"ans"``: rANS from ``constriction`` (``AnsCoder``, 32-bit words, 64-bit state) with one of
  three models, whichever gives the smallest stream: an explicit categorical model stored in
  front of the payload (the exact integer symbol counts), no table at all (a uniform model), or
  (format version 3, alphabets above 2) no table and an adaptive model that codes each block of
  symbols with the counts of the symbols before it. Encoder and decoder turn the same integers into the same
  model, so they agree bit for bit.
- ``"zstd"``: zstandard (level 19 by default) on the raw symbol array: bits packed 8 per byte for a
  binary alphabet, one byte per symbol up to 256 symbols, little-endian uint16 above.

``"ans"`` is the default: on 90%-sparse 5-bit tensors it lands within a fraction of a percent of
the order-0 entropy, zstd 20-30% above it (experiments/results/bench_codec.md).

Decoders raise :class:`FormatError` for anything malformed. They allocate ``count`` symbols, so
the caller must bound ``count`` first (``load`` does: by the layer shapes, which it bounds by the
file size); zstd streams are also checked against their frame header before decompression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np

from . import bounded_zstd
from .context import decode_context_positions, encode_context_positions, supports
from .errors import FormatError
from .varint import get_varint, put_varint

__all__ = [
    "CODERS",
    "adaptive_blocks",
    "adaptive_pieces",
    "ans_encode_pieces",
    "decode_adaptive",
    "DEFAULT_CODER",
    "POSITION_CODINGS",
    "CONTEXT_CODING",
    "bitmap_entropy_bytes",
    "GAP_ESCAPE",
    "EncodedStream",
    "order0_entropy_bits",
    "encode_symbols",
    "decode_symbols",
    "positions_to_symbols",
    "symbols_to_positions",
    "encode_positions",
    "decode_positions",
    "position_symbol_count",
]

CODERS = ("ans", "zstd")
DEFAULT_CODER = "ans"
#: "ctx" (format version 2, ANS only): the context-modelled significance map of context.py.
POSITION_CODINGS = ("bitmap", "gaps", "ctx")
CONTEXT_CODING = "ctx"
ZSTD_LEVEL = 19
#: Gap symbol 255 means "255 zeros, the run goes on"; 0..254 mean "that many zeros, then a non-zero".
GAP_ESCAPE = 255
GAP_ALPHABET = 256
MAX_ALPHABET = 1 << 16

_MODEL_UNIFORM = 0
_MODEL_COUNTS = 1
#: Format version 3: no table; each block of symbols is coded with the counts of the symbols
#: before it (plus 1/2 each, the Krichevsky-Trofimov estimate). It learns the distribution for
#: about (A - 1)/2 log2(count) bits, where the exact count table costs one to three bytes a
#: letter: on the demo's vgg_small it saves 133 of the 249 bytes its index count tables took.
_MODEL_ADAPTIVE = 2
#: Adaptive blocks: the first holds 8 symbols, each later one half as many as came before it, so
#: a stream of n symbols has about log_1.5(n / 8) blocks (one model each, decoded vectorised).
_ADAPTIVE_FIRST_BLOCK = 8
_DECODE_CHUNK = 1 << 20


@dataclass(frozen=True)
class EncodedStream:
    """One coded stream: ``data`` as stored, ``count`` symbols over ``alphabet`` letters.

    ``model_bytes``: the part of ``data`` that is the stored model (ANS count table; 0 for zstd).
    ``entropy_bytes``: the order-0 empirical entropy bound of the symbols, ``count * H / 8``.
    """

    data: bytes
    coder: str
    count: int
    alphabet: int
    model_bytes: int
    entropy_bytes: float

    @property
    def nbytes(self) -> int:
        return len(self.data)


def order0_entropy_bits(counts: np.ndarray) -> float:
    """``n * H`` in bits for a histogram of symbol counts: the bound no order-0 coder can beat."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    used = counts[counts > 0]
    return float(-(used * np.log2(used / total)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def _check_coder(coder: str) -> None:
    if coder not in CODERS:
        raise ValueError(f"unknown coder {coder!r}; use one of {CODERS}")


def _check_alphabet(alphabet: int) -> None:
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise FormatError(f"alphabet size {alphabet} outside 1..{MAX_ALPHABET}")


# -- ANS ------------------------------------------------------------------------------------
def _categorical(counts: np.ndarray):
    return constriction.stream.model.Categorical(counts.astype(np.float64) / counts.sum(), perfect=False)


def _ans_payload(symbols: np.ndarray, model) -> bytes:
    return ans_encode_pieces([(symbols, model)])


def adaptive_blocks(count: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` blocks of an adaptive (kind 2) ANS stream of ``count`` symbols."""
    blocks, start = [], 0
    while start < count:
        stop = min(count, start + max(_ADAPTIVE_FIRST_BLOCK, start >> 1))
        blocks.append((start, stop))
        start = stop
    return blocks


def _adaptive_model(seen: np.ndarray):
    """The model of the next block: ``(seen + 1/2) / (n + A/2)`` in float64. Half-integers sum
    exactly in any order, so every decoder builds the same floats, as for kind 1."""
    weights = seen.astype(np.float64) + 0.5
    return constriction.stream.model.Categorical(weights / weights.sum(), perfect=False)


def adaptive_pieces(symbols: np.ndarray, alphabet: int) -> list[tuple[np.ndarray, object]]:
    """The (block, model) pieces that code ``symbols`` under the adaptive model, in decoding order."""
    pieces, seen = [], np.zeros(alphabet, dtype=np.int64)
    for start, stop in adaptive_blocks(symbols.size):
        pieces.append((symbols[start:stop], _adaptive_model(seen)))
        seen += np.bincount(symbols[start:stop], minlength=alphabet)
    return pieces


def ans_encode_pieces(pieces: list[tuple[np.ndarray, object]]) -> bytes:
    """One ANS payload (little-endian u32 words) coding ``pieces`` so that they decode in order."""
    coder = constriction.stream.stack.AnsCoder()
    for block, model in reversed(pieces):  # a stack: the last piece first, so the first decodes first
        coder.encode_reverse(block.astype(np.int32, copy=False), model)
    return coder.get_compressed().astype("<u4").tobytes()


def decode_adaptive(decoder, count: int, alphabet: int, out: np.ndarray) -> None:
    """Decode ``count`` symbols of the adaptive model from ``decoder`` into ``out`` (the caller
    turns constriction's errors into :class:`FormatError`)."""
    seen = np.zeros(alphabet, dtype=np.int64)
    for block_start, block_stop in adaptive_blocks(count):
        _decode_chunks(decoder, _adaptive_model(seen), out, block_start, block_stop)
        seen += np.bincount(out[block_start:block_stop], minlength=alphabet)


def _decode_chunks(decoder, model, out: np.ndarray, start: int, stop: int) -> None:
    # in chunks, so a long block never needs more than one chunk of int32 at a time
    for chunk in range(start, stop, _DECODE_CHUNK):
        end = min(stop, chunk + _DECODE_CHUNK)
        out[chunk:end] = decoder.decode(model, end - chunk)


def _encode_adaptive(symbols: np.ndarray, alphabet: int) -> bytes:
    return bytes([_MODEL_ADAPTIVE]) + ans_encode_pieces(adaptive_pieces(symbols, alphabet))


def _encode_ans(symbols: np.ndarray, alphabet: int, counts: np.ndarray, adaptive: bool = True) -> tuple[bytes, int]:
    """The smallest of: the exact count table and its static model, the uniform model (no table),
    and (``adaptive``, format version 3, alphabets above 2) the adaptive model (no table). Returns
    the stream and the bytes of it that are the stored model."""
    # Count table: how many entries follow (the highest used symbol + 1; the rest are zero), then
    # the counts themselves.
    stored = int(np.flatnonzero(counts)[-1]) + 1
    table = bytearray([_MODEL_COUNTS])
    put_varint(table, stored)
    for count in counts[:stored].tolist():
        put_varint(table, count)
    single = np.count_nonzero(counts) == 1
    best = (bytes(table) + (b"" if single else _ans_payload(symbols, _categorical(counts))), len(table))
    if alphabet > 1:
        uniform = bytes([_MODEL_UNIFORM]) + _ans_payload(symbols, constriction.stream.model.Uniform(alphabet))
        if len(uniform) < len(best[0]):
            best = (uniform, 1)
        # Not for bitmaps: a two-letter count table costs a few bytes, about what learning costs,
        # so the gain is a byte or two, and it tipped layers from the ctx coding (8 bits a coded
        # symbol) to a binary bitmap that decodes 3x slower per bit (AlexNet fc6: 1.0 -> 2.4 s).
        if adaptive and not single and alphabet > 2:
            learned = _encode_adaptive(symbols, alphabet)
            if len(learned) < len(best[0]):
                best = (learned, 1)
    return best


def _read_counts(data: bytes, count: int, alphabet: int) -> tuple[np.ndarray, int]:
    """A kind-1 count table (after the kind byte): its counts over the whole alphabet and the
    offset after it. The counts must sum to ``count``."""
    stored, offset = get_varint(data, 1, "ANS model table")
    if not 1 <= stored <= alphabet:
        raise FormatError(f"ANS count table has {stored} entries for an alphabet of {alphabet}")
    counts = []
    for _ in range(stored):
        value, offset = get_varint(data, offset, "ANS model table")
        counts.append(value)
    if sum(counts) != count:
        raise FormatError(f"ANS model counts sum to {sum(counts)}, stream declares {count} symbols")
    return np.asarray(counts + [0] * (alphabet - stored), dtype=np.float64), offset


def _decode_ans(data: bytes, count: int, alphabet: int, dtype: np.dtype, adaptive: bool = True) -> tuple[np.ndarray, int]:
    kind = data[0]
    offset, single_symbol, model = 1, None, None
    if kind == _MODEL_UNIFORM or (kind == _MODEL_ADAPTIVE and adaptive):
        if alphabet == 1:
            single_symbol = 0
        elif kind == _MODEL_UNIFORM:
            model = constriction.stream.model.Uniform(alphabet)
    elif kind == _MODEL_COUNTS:
        counts, offset = _read_counts(data, count, alphabet)
        used = np.flatnonzero(counts)
        if used.size == 1:
            single_symbol = int(used[0])
        else:
            model = _categorical(counts)
    else:
        raise FormatError(f"unknown ANS model kind {kind}" + (" (adaptive models are format version 3)" if kind == _MODEL_ADAPTIVE else ""))
    payload = data[offset:]
    if single_symbol is not None:
        if payload:
            raise FormatError("ANS stream of a single repeated symbol must have no payload")
        return np.full(count, single_symbol, dtype=dtype), offset
    # No information bound on ``count`` is possible here: constriction's coder starts from an
    # empty state, from which runs of symbol 0 cost nothing. The caller bounds ``count`` by the
    # layer size, and load() bounds the layer sizes by the file size.
    if len(payload) % 4:
        raise FormatError(f"ANS payload length {len(payload)} is not a multiple of 4")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    out = np.empty(count, dtype=dtype)
    try:
        decoder = constriction.stream.stack.AnsCoder(words)
        if model is not None:
            _decode_chunks(decoder, model, out, 0, count)
        else:
            decode_adaptive(decoder, count, alphabet, out)
        exhausted = decoder.is_empty()
    except FormatError:
        raise
    except Exception as error:  # constriction reports corrupt data as ValueError/RuntimeError
        raise FormatError(f"corrupt ANS stream: {error}") from None
    if not exhausted:
        raise FormatError("ANS stream has data left after its declared symbols")
    return out, offset


# -- zstd -----------------------------------------------------------------------------------
def _zstd_raw_length(count: int, alphabet: int) -> int:
    if alphabet <= 2:
        return (count + 7) // 8
    return count * (1 if alphabet <= 256 else 2)


def _encode_zstd(symbols: np.ndarray, alphabet: int, level: int) -> bytes:
    if alphabet <= 2:
        raw = np.packbits(symbols.astype(np.uint8), bitorder="little").tobytes()
    elif alphabet <= 256:
        raw = symbols.astype(np.uint8).tobytes()
    else:
        raw = symbols.astype("<u2").tobytes()
    return bounded_zstd.compress(raw, level)


def _decode_zstd(data: bytes, count: int, alphabet: int, dtype: np.dtype) -> np.ndarray:
    raw = bounded_zstd.decompress(data, "zstd frame", size=_zstd_raw_length(count, alphabet))
    if alphabet <= 2:
        packed = np.frombuffer(raw, dtype=np.uint8)
        if count % 8 and packed[-1] >> (count % 8):
            raise FormatError("bitmap has set bits past its end")
        return np.unpackbits(packed, count=count, bitorder="little").astype(dtype, copy=False)
    return np.frombuffer(raw, dtype=np.uint8 if alphabet <= 256 else "<u2").astype(dtype)


# -- generic symbol streams -----------------------------------------------------------------
def _symbol_dtype(alphabet: int) -> np.dtype:
    return np.dtype(np.uint8) if alphabet <= 256 else np.dtype(np.uint16)


def encode_symbols(
    symbols: np.ndarray, alphabet: int, coder: str = DEFAULT_CODER, *, zstd_level: int = ZSTD_LEVEL, adaptive: bool = True
) -> EncodedStream:
    """Code integer ``symbols`` in ``[0, alphabet)``; an empty stream is stored as zero bytes.
    ``adaptive=False`` leaves out the adaptive ANS model (a stream a version-2 reader can read)."""
    _check_coder(coder)
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet size {alphabet} outside 1..{MAX_ALPHABET}")
    symbols = np.asarray(symbols).ravel()
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols outside [0, {alphabet})")
    counts = np.bincount(symbols.astype(np.int64), minlength=alphabet) if symbols.size else np.zeros(alphabet, dtype=np.int64)
    entropy_bytes = order0_entropy_bits(counts) / 8
    if symbols.size == 0:
        return EncodedStream(b"", coder, 0, alphabet, 0, 0.0)
    if coder == "ans":
        data, model_bytes = _encode_ans(symbols, alphabet, counts, adaptive)
    else:
        data, model_bytes = _encode_zstd(symbols, alphabet, zstd_level), 0
    return EncodedStream(data, coder, int(symbols.size), alphabet, model_bytes, entropy_bytes)


def decode_symbols(data: bytes, count: int, alphabet: int, coder: str, *, adaptive: bool = True) -> tuple[np.ndarray, int]:
    """Inverse of :func:`encode_symbols`: ``count`` symbols (uint8, or uint16 above 256 letters)
    and the number of bytes of ``data`` that were the stored model.

    The caller bounds ``count`` (by the layer size). A zstd frame must declare exactly the raw
    length (decompression is capped at it); an ANS count table must sum to ``count``; an ANS
    coder must be exactly exhausted after ``count`` symbols. ``adaptive=False`` (files of format
    versions 1 and 2) refuses the adaptive ANS model.
    """
    if coder not in CODERS:
        raise FormatError(f"unknown coder {coder!r}")
    _check_alphabet(alphabet)
    if count < 0:
        raise FormatError(f"negative symbol count {count}")
    dtype = _symbol_dtype(alphabet)
    if count == 0:
        if data:
            raise FormatError(f"empty stream has {len(data)} bytes of data")
        return np.zeros(0, dtype=dtype), 0
    if not data:
        raise FormatError(f"stream of {count} symbols has no data")
    if coder == "ans":
        symbols, model_bytes = _decode_ans(bytes(data), count, alphabet, dtype, adaptive)
    else:
        symbols, model_bytes = _decode_zstd(bytes(data), count, alphabet, dtype), 0
    if symbols.size and int(symbols.max()) >= alphabet:
        raise FormatError(f"decoded symbol {int(symbols.max())} outside alphabet of {alphabet}")
    return symbols, model_bytes


# -- positions ------------------------------------------------------------------------------
def positions_to_symbols(positions: np.ndarray, numel: int, coding: str) -> tuple[np.ndarray, int]:
    """Position symbols and their alphabet: a 0/1 bitmap of ``numel`` symbols, or gap symbols.

    Gap coding writes, per non-zero, the number ``g`` of zeros since the previous one as
    ``g // 255`` escape symbols (255) followed by ``g % 255``. Zeros after the last non-zero are
    implied by ``numel``.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if coding == "bitmap":
        bitmap = np.zeros(numel, dtype=np.uint8)
        bitmap[positions] = 1
        return bitmap, 2
    if coding != "gaps":
        raise ValueError(f"unknown position coding {coding!r}; use one of {POSITION_CODINGS}")
    gaps = np.diff(positions, prepend=-1) - 1
    escapes = gaps // GAP_ESCAPE
    terminal_at = np.cumsum(escapes + 1) - 1
    symbols = np.full(int(terminal_at[-1]) + 1 if positions.size else 0, GAP_ESCAPE, dtype=np.uint8)
    symbols[terminal_at] = gaps % GAP_ESCAPE
    return symbols, GAP_ALPHABET


def _gap_symbol_bound(nnz: int, numel: int) -> int:
    # At most numel - nnz zeros precede the last non-zero, each 255 of them one escape.
    return nnz + (numel - nnz) // GAP_ESCAPE


def symbols_to_positions(symbols: np.ndarray, numel: int, nnz: int, coding: str) -> np.ndarray:
    """Inverse of :func:`positions_to_symbols`, with every consistency check; int64 positions."""
    if coding == "bitmap":
        if symbols.size != numel:
            raise FormatError(f"bitmap has {symbols.size} bits for {numel} weights")
        positions = np.flatnonzero(symbols).astype(np.int64)
        if positions.size != nnz:
            raise FormatError(f"bitmap marks {positions.size} non-zeros, manifest says {nnz}")
        return positions
    if coding != "gaps":
        raise FormatError(f"unknown position coding {coding!r}")
    terminal = symbols != GAP_ESCAPE
    if int(terminal.sum()) != nnz:
        raise FormatError(f"gap stream codes {int(terminal.sum())} non-zeros, manifest says {nnz}")
    if symbols.size and not terminal[-1]:
        raise FormatError("gap stream ends in an escape")
    steps = np.where(terminal, symbols.astype(np.int64) + 1, GAP_ESCAPE)
    positions = (np.cumsum(steps) - 1)[terminal]
    if positions.size and positions[-1] >= numel:
        raise FormatError(f"gap stream reaches position {int(positions[-1])} of a {numel}-weight layer")
    return positions


def position_symbol_count(coding: str, numel: int, nnz: int, declared: int) -> int:
    """Validate a declared position-symbol count against the layer size; returns it."""
    if coding in ("bitmap", CONTEXT_CODING):  # ctx: one (modelled) bit per weight
        if declared != numel:
            raise FormatError(f"bitmap stream declares {declared} symbols for {numel} weights")
    elif coding == "gaps":
        if not nnz <= declared <= _gap_symbol_bound(nnz, numel):
            raise FormatError(f"gap stream declares {declared} symbols for {nnz} non-zeros in {numel} weights")
    else:
        raise FormatError(f"unknown position coding {coding!r}")
    return declared


def bitmap_entropy_bytes(numel: int, nnz: int) -> float:
    """The order-0 bound of a layer's significance map: ``numel * H(nnz / numel) / 8``."""
    return order0_entropy_bits(np.array([numel - nnz, nnz])) / 8


def encode_positions(
    positions: np.ndarray, numel: int, coder: str = DEFAULT_CODER, coding: str | None = None, shape: tuple[int, ...] | None = None
) -> tuple[str, EncodedStream]:
    """Code the ascending flat ``positions`` of the non-zeros; ``coding=None`` keeps the smallest
    of bitmap, gaps and (with the ANS coder, given the layer's ``shape``) ctx; ties go to the
    earlier of the three."""
    if coding is None:
        choices = POSITION_CODINGS if coder == "ans" and shape is not None and supports(shape) else POSITION_CODINGS[:2]
    else:
        choices = (coding,)
    best: tuple[str, EncodedStream] | None = None
    for choice in choices:
        if choice == CONTEXT_CODING:
            if coder != "ans" or shape is None or math.prod(shape) != numel or not supports(shape):
                raise ValueError("ctx position coding needs the ans coder and a non-empty layer's shape (at most MAX_TAPS taps)")
            data = encode_context_positions(positions, shape)[0]
            stream = EncodedStream(data, coder, numel, 2, 2, bitmap_entropy_bytes(numel, len(positions)))
        else:
            symbols, alphabet = positions_to_symbols(positions, numel, choice)
            stream = encode_symbols(symbols, alphabet, coder)
        if best is None or stream.nbytes < best[1].nbytes:
            best = (choice, stream)
    assert best is not None
    return best


def decode_positions(
    data: bytes, coding: str, count: int, numel: int, nnz: int, coder: str, shape: tuple[int, ...] | None = None, *, adaptive: bool = True
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Decode a position stream; returns ``(positions, symbols, model_bytes)`` (the last two for
    statistics; ctx streams have no symbol array, ``None``). ``adaptive`` as for :func:`decode_symbols`."""
    if not 0 <= nnz <= numel:
        raise FormatError(f"{nnz} non-zeros in a {numel}-weight layer")
    position_symbol_count(coding, numel, nnz, count)
    if coding == CONTEXT_CODING:
        if coder != "ans" or shape is None or math.prod(shape) != numel:
            raise FormatError("ctx position coding needs the ans coder and the layer's shape")
        return decode_context_positions(data, shape, nnz), None, 2
    alphabet = 2 if coding == "bitmap" else GAP_ALPHABET
    symbols, model_bytes = decode_symbols(data, count, alphabet, coder, adaptive=adaptive)
    return symbols_to_positions(symbols, numel, nnz, coding), symbols, model_bytes
