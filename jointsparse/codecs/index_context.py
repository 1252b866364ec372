"""Context-coded codebook indices: index coding ``"ctx"`` (format version 5, docs/format.md
section 4.2).

An order-0 coder codes every index of a layer with one distribution. The kept weights of a row
(an output channel or neuron) are not independent: neighbours share sign and magnitude, most of
all where a layer's inputs are copies of each other (fc6 of the AlexNet proxy sees each pool5
value 36 times, SPEC section 10). experiments/mask_structure.py measures it: coding each index
given the one before it in its row would take 0.90x the order-0 bound on that fc6.

The context of an index is 0 if it is the first non-zero of its row, else ``1 + b``, ``b`` the
bucket of the index before it: ``b = index * K // A`` (``A`` codebook entries, ``K`` buckets of
consecutive entries). Codebooks are sorted when quantized, so neighbouring entries are neighbouring
values. ``K`` (1 .. A; ``K = A`` is the previous index itself) is the encoder's choice by
estimated bytes: many contexts pay for themselves only on large layers.

Stream: varint ``K``; varint counts of contexts 1 .. K (context 0 holds one index per non-empty
row, which the decoder knows from the positions); then one ANS payload (little-endian u32 words):
each context's indices in layer order under the adaptive model of format version 3
(:func:`.entropy.adaptive_pieces`), context 0 first. No model table.

The decoder decodes each context's run at once (vectorised), then puts them back in layer order:
each step needs the index before it, so that one step is sequential, done by the C helper
``_interleave`` when it is built (a few ms a million indices), else in Python (~0.5 s a million).
"""

from __future__ import annotations

import math
from typing import Sequence

import constriction
import numpy as np
import torch

from .entropy import adaptive_pieces, ans_encode_pieces, decode_adaptive, order0_entropy_bits
from .errors import FormatError
from .varint import get_varint, put_varint, varint_bytes

try:
    from . import _interleave
except ImportError:  # pragma: no cover - exercised only where the extension was not built
    _interleave = None

__all__ = ["MAX_ALPHABET", "supports", "first_in_row", "encode_context_indices", "decode_context_indices"]

#: Symbols and contexts are bytes in the interleaving step: codebooks of at most 255 entries (the
#: most 8 bits give: 2^8 - 1 non-zero codes), contexts 0 .. 255.
MAX_ALPHABET = 255
#: The bucket counts the encoder weighs (those up to A, and A itself).
_BUCKET_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192)


def supports(alphabet: int, nnz: int) -> bool:
    """Whether a layer's indices can be ctx-coded: at least one non-zero, 2..255 codebook entries."""
    return nnz > 0 and 2 <= alphabet <= MAX_ALPHABET


def first_in_row(positions: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """True where a non-zero (ascending flat ``positions``) is the first of its row (dim 0)."""
    rows = np.asarray(positions, dtype=np.int64) // max(1, math.prod(shape[1:]))
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return first


def _context_of(alphabet: int, buckets: int) -> np.ndarray:
    """The context (1 .. buckets) of an index that follows each symbol in its row."""
    return (1 + np.arange(alphabet) * buckets // alphabet).astype(np.uint8)


def _contexts(indices: np.ndarray, first: np.ndarray, alphabet: int, buckets: int) -> np.ndarray:
    contexts = np.zeros(indices.size, dtype=np.int64)
    contexts[1:] = _context_of(alphabet, buckets)[indices[:-1]]
    contexts[first] = 0
    return contexts


def _context_counts(joint: np.ndarray, buckets: int) -> np.ndarray:
    """``[buckets + 1, A]`` symbol counts per context, from the joint counts ``joint[previous + 1,
    index]`` (row 0: first in its row)."""
    alphabet = joint.shape[1]
    merged = np.zeros((buckets + 1, alphabet), dtype=np.int64)
    merged[0] = joint[0]
    np.add.at(merged, _context_of(alphabet, buckets).astype(np.int64), joint[1:])
    return merged


def _estimated_bits(joint: np.ndarray, buckets: int) -> float:
    """Bits of coding with ``buckets``: each context's code length under the Krichevsky-Trofimov
    estimator (which the adaptive model's blocks approach), plus the header (``K`` and the counts
    of contexts 1 .. K)."""
    counts = torch.from_numpy(_context_counts(joint, buckets)).double()
    totals = counts.sum(1)
    half_alphabet = joint.shape[1] / 2
    nats = torch.lgamma(totals + half_alphabet) - math.lgamma(half_alphabet) - (torch.lgamma(counts + 0.5) - math.lgamma(0.5)).sum(1)
    header = 8 * sum(len(varint_bytes(int(n))) for n in [buckets] + totals[1:].tolist())
    return float(nats[totals > 0].sum()) / math.log(2) + header


def encode_context_indices(indices: np.ndarray, positions: np.ndarray, shape: Sequence[int], alphabet: int) -> tuple[bytes, int, float]:
    """Code a layer's ``indices`` (in the order of its ascending flat ``positions``); returns the
    stream, how many of its bytes are header (``K`` and the context counts) and the indices'
    conditional empirical entropy under the chosen contexts, in bytes (the "context bound":
    without the header and what the adaptive models pay to learn)."""
    indices = np.asarray(indices).astype(np.int64).ravel()
    if not supports(alphabet, indices.size):
        raise ValueError(f"ctx index coding needs 2..{MAX_ALPHABET} codebook entries and a non-zero, got {alphabet} and {indices.size}")
    first = first_in_row(positions, shape)
    previous = np.zeros(indices.size, dtype=np.int64)
    previous[1:] = indices[:-1] + 1
    previous[first] = 0
    joint = np.bincount(previous * alphabet + indices, minlength=(alphabet + 1) * alphabet).reshape(alphabet + 1, alphabet)
    choices = sorted({k for k in _BUCKET_CHOICES if k <= alphabet} | {alphabet})
    buckets = min(choices, key=lambda k: _estimated_bits(joint, k))
    contexts = _contexts(indices, first, alphabet, buckets)
    order = np.argsort(contexts, kind="stable")
    counts = np.bincount(contexts, minlength=buckets + 1)
    header = bytearray()
    put_varint(header, buckets)
    for count in counts[1:].tolist():
        put_varint(header, count)
    pieces = []
    for run in np.split(indices[order], np.cumsum(counts)[:-1]):
        pieces += adaptive_pieces(run, alphabet)
    bound = sum(order0_entropy_bits(row) for row in _context_counts(joint, buckets)) / 8
    return bytes(header) + ans_encode_pieces(pieces), len(header), bound


def decode_context_indices(data: bytes, positions: np.ndarray, shape: Sequence[int], nnz: int, alphabet: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`encode_context_indices`: ``nnz`` uint8 indices and the header's bytes.
    The caller has checked ``positions`` (``nnz`` ascending flat positions in the layer)."""
    if not supports(alphabet, nnz):
        raise FormatError(f"ctx index coding of a layer with {alphabet} codebook entries and {nnz} non-zeros")
    buckets, offset = get_varint(data, 0, "ctx index header")
    if not 1 <= buckets <= alphabet:
        raise FormatError(f"ctx index stream has {buckets} buckets for {alphabet} codebook entries")
    first = first_in_row(positions, shape)
    counts = [int(np.count_nonzero(first))]
    for _ in range(buckets):
        count, offset = get_varint(data, offset, "ctx index header")
        counts.append(count)
        if sum(counts) > nnz:  # checked as it goes: a hostile header cannot make a huge sum
            raise FormatError(f"ctx index stream's contexts hold more than the layer's {nnz} non-zeros")
    if sum(counts) != nnz:
        raise FormatError(f"ctx index stream's contexts hold {sum(counts)} indices, the layer {nnz}")
    payload = bytes(data[offset:])
    if len(payload) % 4:
        raise FormatError(f"ctx index payload length {len(payload)} is not a multiple of 4")
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    by_context = np.empty(nnz, dtype=np.uint8)
    try:
        decoder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        for start, stop in zip(starts[:-1].tolist(), starts[1:].tolist()):
            decode_adaptive(decoder, stop - start, alphabet, by_context[start:stop])
        exhausted = decoder.is_empty()
    except Exception as error:  # constriction reports corrupt data as ValueError/RuntimeError
        raise FormatError(f"corrupt ctx index stream: {error}") from None
    if not exhausted:
        raise FormatError("ctx index stream has data left after its last context")
    out = np.empty(nnz, dtype=np.uint8)
    try:
        _interleaved(by_context, starts, first, _context_of(alphabet, buckets), out)
    except ValueError as error:
        raise FormatError(f"ctx index stream: {error}") from None
    return out, offset


def _interleaved(by_context: np.ndarray, starts: np.ndarray, first: np.ndarray, context_of: np.ndarray, out: np.ndarray) -> None:
    first = first.astype(np.uint8)
    if _interleave is not None:
        _interleave.interleave(by_context, starts, first, context_of, out)
        return
    # bytes in, a bytearray out: ~3 bytes an index, where lists of Python ints took ~29
    next_symbol = starts[:-1].tolist()
    stops, symbols, follows = starts[1:].tolist(), by_context.tobytes(), context_of.tobytes()
    written, context = bytearray(out.size), 0
    for index, starts_row in enumerate(first.tobytes()):
        if starts_row:
            context = 0
        if next_symbol[context] >= stops[context]:
            raise ValueError(f"context {context} runs out of symbols at index {index}")
        symbol = symbols[next_symbol[context]]
        next_symbol[context] += 1
        written[index] = symbol
        context = follows[symbol]  # symbols are below the alphabet: the decoder checked them
    out[:] = np.frombuffer(written, dtype=np.uint8)
