"""Context-modelled coding of a layer's significance map: position coding ``"ctx"`` (format
version 2, docs/format.md section 4).

An order-0 coder pays for the structure of a trained, pruned network's mask: whole input
channels die, filters differ in density, most 3x3 kernels of a sparse conv layer are empty, and
the taps inside a surviving kernel are not independent. This coder models that structure with
*semi-static* binary contexts: every context's probability is its exact count of ones, sent in
the stream, so the decoder needs no adaptive state and each context's bits can be decoded in one
vectorised call (a per-bit adaptive model in Python would be 100x too slow for a 38M-weight
layer; constriction's per-symbol model families cost ~100 ns a bit).

The weight tensor is seen as ``M[R, G, T]``: ``R`` = output channels (rows), ``G`` = input
channels or features (columns), ``T`` = kernel taps (1 for linear layers and 1x1 convs).

1. Side information: a row bucket ``rb[r] < BR`` per row and a column bucket ``cb[g] < BG`` per
   column, each coded with a uniform model. The encoder picks them by clustering rows and columns
   on their density (KL k-means), so dead input channels and sparse filters get their own buckets.
2. The map ``X[R, G]`` (``M`` itself when ``T = 1``, else the kernel map "kernel (r, g) has a
   non-zero") is coded block by block: context = ``(rb[r], cb[g])``.
3. When ``T > 1``, the taps of the non-empty kernels are coded tap by tap (j = 0 .. T-1), all
   kernels at once per tap, with context ``(j, state, [cb[g]])``; the state comes from the taps
   already decoded (none; "a non-zero earlier in this kernel"; or ``min(ones so far, 2)`` with the
   previous tap). The last tap of a kernel with no non-zero yet is implied (it must be 1).

Each context codes its count of ones ``n1`` (uniform over ``0..n``, ``n`` being the number of
bits in the context, known to the decoder), then, if ``0 < n1 < n``, its bits packed 8 to a symbol
(least significant bit first, the last symbol padded with zeros) with the i.i.d. product model
``P(s) = p^popcount(s) (1-p)^(8-popcount(s))``, ``p = n1 / n``. Packing 8 bits per symbol makes the
ANS decoder 3x faster per bit than binary symbols and costs nothing: for i.i.d. bits the product
model is exact. The encoder picks ``BR``, ``BG`` (powers of two up to 16), the tap state and whether
taps use the column bucket by the estimated bytes, and the caller keeps whichever of this and the
order-0 codings is smaller.

The decoder checks every count against the context's size, every packed symbol's padding, the
total against ``nnz``, and that the coder is exactly exhausted; anything else is a
:class:`FormatError`. It allocates O(``N``) bytes for an ``N``-weight layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import constriction
import numpy as np
from threadpoolctl import threadpool_limits

from .errors import FormatError

__all__ = ["MAX_TAPS", "ContextConfig", "supports", "layer_geometry", "encode_context_positions", "decode_context_positions", "context_entropy_bytes"]

MAX_LOG2_BUCKETS = 4  # at most 16 row and 16 column buckets
#: Taps are decoded one step each, so their count bounds the decoder's Python loop; real kernels
#: have at most 121 (11x11), a 3-D 7x7x7 kernel 343.
MAX_TAPS = 1024
STATE_COUNTS = (1, 2, 6)  # tap-state kinds: none; any one earlier; min(ones so far, 2) x previous tap
_HEADER = 2  # bytes before the ANS payload
_SYMBOL_BITS = 8
_DIGIT = 1 << 16  # counts above this are coded in base-2^16 digits (constriction's Uniform is 24-bit)
_BIT_TABLE = ((np.arange(1 << _SYMBOL_BITS)[:, None] >> np.arange(_SYMBOL_BITS)) & 1).astype(bool)


@dataclass(frozen=True)
class ContextConfig:
    """The per-layer choice recorded in the stream's first two bytes."""

    log2_rows: int = 0
    log2_cols: int = 0
    state: int = 0  # tap-state kind, index into STATE_COUNTS (0 when T = 1)
    tap_columns: bool = False  # tap contexts also split by column bucket (False when T = 1)

    def header(self) -> bytes:
        return bytes([self.log2_rows | self.log2_cols << 4, self.state | int(self.tap_columns) << 2])

    @classmethod
    def parse(cls, data: bytes, taps: int) -> "ContextConfig":
        if len(data) < _HEADER:
            raise FormatError("ctx position stream is shorter than its 2-byte header")
        rows, cols, state, flags = data[0] & 0x0F, data[0] >> 4, data[1] & 0x03, data[1] >> 2
        if rows > MAX_LOG2_BUCKETS or cols > MAX_LOG2_BUCKETS or state >= len(STATE_COUNTS) or flags > 1:
            raise FormatError(f"ctx position stream has an invalid header {data[:2].hex()}")
        if taps == 1 and (state or flags):
            raise FormatError("ctx position stream of a layer without kernel taps declares tap contexts")
        return cls(rows, cols, state, bool(flags))


def layer_geometry(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(R, G, T)``: rows (dim 0), columns (dim 1) and taps (the product of the rest)."""
    rows = shape[0] if len(shape) >= 1 else 1
    cols = shape[1] if len(shape) >= 2 else 1
    return rows, cols, math.prod(shape[2:])


def supports(shape: Sequence[int]) -> bool:
    """Whether a layer of ``shape`` can be ctx-coded: non-empty, at most ``MAX_TAPS`` taps."""
    return math.prod(shape) > 0 and layer_geometry(shape)[2] <= MAX_TAPS


# -- models ---------------------------------------------------------------------------------
def _product_model(n1: int, n: int):
    """The 256-letter model of 8 i.i.d. bits with P(1) = n1 / n. Built by sequential float64
    products (each IEEE-rounded), so encoder and decoder on any machine get the same floats."""
    p = n1 / n
    probs = np.ones(1 << _SYMBOL_BITS)
    for bit in range(_SYMBOL_BITS):
        probs = probs * np.where(_BIT_TABLE[:, bit], p, 1.0 - p)
    return constriction.stream.model.Categorical(probs, perfect=False)


def _count_digits(n: int) -> list[int]:
    """The uniform model sizes that code a count in ``0..n``, most significant digit first."""
    sizes = []
    while n >= _DIGIT:
        sizes.append(_DIGIT)
        n >>= 16
    return [n + 1] + sizes


def _count_cost(n: np.ndarray) -> float:
    n = np.asarray(n, dtype=np.float64)
    return float(np.log2(n[n > 0] + 1).sum())


def _bits_cost(n1: np.ndarray, n: np.ndarray) -> float:
    """``sum n H(n1/n)`` in bits: what the contexts' bits cost under their exact counts."""
    n1, n = np.asarray(n1, dtype=np.float64).ravel(), np.asarray(n, dtype=np.float64).ravel()
    keep = (n1 > 0) & (n1 < n)
    n1, n = n1[keep], n[keep]
    return float(-(n1 * np.log2(n1 / n) + (n - n1) * np.log2(1 - n1 / n)).sum())


class _Segments:
    """Encoder side: (symbols, model) pieces in decoding order, pushed onto one ANS coder in
    reverse at the end (ANS is a stack)."""

    def __init__(self) -> None:
        self.pieces: list[tuple[np.ndarray, object]] = []

    def uniform(self, value: int, size: int) -> None:
        self.pieces.append((np.array([value], dtype=np.int32), constriction.stream.model.Uniform(size)))

    def count(self, n1: int, n: int) -> None:
        sizes = _count_digits(n)
        for position, size in enumerate(sizes):
            shift = 16 * (len(sizes) - 1 - position)
            self.uniform((n1 >> shift) & (_DIGIT - 1) if position else n1 >> shift, size)

    def bits(self, bits: np.ndarray) -> None:
        """A context's bits: its count of ones, then (unless all equal) the packed bits."""
        n, n1 = int(bits.size), int(np.count_nonzero(bits))
        if n == 0:
            return
        self.count(n1, n)
        if 0 < n1 < n:
            packed = np.packbits(bits.astype(np.uint8, copy=False), bitorder="little")
            self.pieces.append((packed.astype(np.int32), _product_model(n1, n)))

    def payload(self) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        for symbols, model in reversed(self.pieces):
            coder.encode_reverse(symbols, model)
        return coder.get_compressed().astype("<u4").tobytes()


class _Reader:
    """Decoder side: the same pieces, in order, with every check."""

    def __init__(self, payload: bytes) -> None:
        if len(payload) % 4:
            raise FormatError(f"ctx position payload length {len(payload)} is not a multiple of 4")
        self.coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))

    def _decode(self, model, count: int) -> np.ndarray:
        try:
            return self.coder.decode(model, count)
        except Exception as error:  # constriction reports corrupt data as ValueError/RuntimeError
            raise FormatError(f"corrupt ctx position stream: {error}") from None

    def uniform(self, size: int, count: int = 1) -> np.ndarray:
        if size == 1:
            return np.zeros(count, dtype=np.int32)
        return self._decode(constriction.stream.model.Uniform(size), count)

    def count(self, n: int) -> int:
        value = 0
        for size in _count_digits(n):
            value = (value << 16) | int(self.uniform(size)[0])
        if value > n:
            raise FormatError(f"ctx position stream: a context of {n} bits claims {value} ones")
        return value

    def bits(self, n: int) -> np.ndarray:
        """``n`` bits of one context, as uint8 0/1."""
        if n == 0:
            return np.zeros(0, dtype=np.uint8)
        n1 = self.count(n)
        if n1 in (0, n):
            return np.full(n, 1 if n1 else 0, dtype=np.uint8)
        symbols = self._decode(_product_model(n1, n), -(-n // _SYMBOL_BITS))
        bits = np.unpackbits(symbols.astype(np.uint8), bitorder="little")
        if bits[n:].any():
            raise FormatError("ctx position stream: padding bits are not zero")
        bits = bits[:n]
        if int(np.count_nonzero(bits)) != n1:
            raise FormatError(f"ctx position stream: a context decodes {int(np.count_nonzero(bits))} ones, its count says {n1}")
        return bits

    def finish(self) -> None:
        if not self.coder.is_empty():
            raise FormatError("ctx position stream has data left after its last context")


# -- buckets (encoder only: the decoder reads them) -----------------------------------------
def _kl_buckets(ones: np.ndarray, size: np.ndarray, buckets: int, iterations: int = 10) -> np.ndarray:
    """Cluster items, each with counts ``ones[i, k]`` of ``size[i, k]`` over ``k`` strata, into
    ``buckets`` groups minimising the bits of coding them with one probability per (group, stratum)."""
    items = ones.shape[0]
    if buckets == 1 or items == 0:
        return np.zeros(items, dtype=np.int64)
    density = ones.sum(1) / np.maximum(size.sum(1), 1)
    centres = np.quantile(density, (np.arange(buckets) + 0.5) / buckets)
    labels = np.abs(density[:, None] - centres[None, :]).argmin(1)
    for _ in range(iterations):
        onehot = np.eye(buckets)[labels].T  # [buckets, items]
        p = (onehot @ ones + 0.5) / (onehot @ size + 1.0)
        cost = -(ones @ np.log2(p).T + (size - ones) @ np.log2(1.0 - p).T)
        new = cost.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _bucket_sums(x: np.ndarray, labels: list[np.ndarray], chunk: int = 512) -> list[np.ndarray]:
    """For each row labelling, the column sums of ``x`` per label: ``[G, buckets]`` each. One
    pass over ``x`` in row chunks, as float64 products (exact for any count below 2^53)."""
    sizes = [int(label.max()) + 1 if label.size else 1 for label in labels]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = np.zeros((int(offsets[-1]), x.shape[1]))
    for start in range(0, x.shape[0], chunk):
        onehot = np.zeros((int(offsets[-1]), min(chunk, x.shape[0] - start)))
        for label, offset in zip(labels, offsets[:-1]):
            onehot[offset + label[start : start + chunk], np.arange(onehot.shape[1])] = 1.0
        total += onehot @ x[start : start + chunk].astype(np.float64)
    return [total[a:b].T for a, b in zip(offsets[:-1], offsets[1:])]


def _plan_map(x: np.ndarray) -> tuple[float, int, int, np.ndarray, np.ndarray]:
    """Best ``(bits, log2 BR, log2 BG, rb, cb)`` for the map ``x[R, G]`` by estimated cost: row
    buckets from the row densities, then column buckets from the columns' counts per row bucket."""
    rows, cols = x.shape
    row_ones = np.count_nonzero(x, axis=1).astype(np.float64)
    row_levels = [b for b in range(MAX_LOG2_BUCKETS + 1) if b == 0 or (1 << b) <= rows // 2]
    col_levels = [b for b in range(MAX_LOG2_BUCKETS + 1) if b == 0 or (1 << b) <= cols // 2]
    row_labels = [_kl_buckets(row_ones[:, None], np.full((rows, 1), float(cols)), 1 << b) for b in row_levels]
    best = None
    for log2_rows, rb, col_ones in zip(row_levels, row_labels, _bucket_sums(x, row_labels)):
        per_bucket = np.bincount(rb, minlength=col_ones.shape[1]).astype(np.float64)
        col_size = np.broadcast_to(per_bucket, col_ones.shape)
        for log2_cols in col_levels:
            cb = _kl_buckets(col_ones, col_size, 1 << log2_cols)
            onehot = np.eye(1 << log2_cols)[cb].T
            block_ones, block_size = onehot @ col_ones, onehot @ col_size
            bits = _bits_cost(block_ones, block_size) + _count_cost(block_size) + rows * log2_rows + cols * log2_cols
            if best is None or bits < best[0]:
                best = (bits, log2_rows, log2_cols, rb, cb)
    assert best is not None
    return best


# -- the two passes, shared by the estimate, the encoder and the decoder ---------------------
def _block_layout(rb: np.ndarray, cb: np.ndarray, log2_rows: int, log2_cols: int):
    """Rows and columns of each bucket, ascending, in decoding order of the blocks."""
    rows = [np.flatnonzero(rb == a) for a in range(1 << log2_rows)]
    cols = [np.flatnonzero(cb == b) for b in range(1 << log2_cols)]
    return rows, cols


def _tap_contexts(count: np.ndarray, previous: np.ndarray, columns: np.ndarray | None, state: int, buckets: int, last: bool) -> tuple[np.ndarray, int]:
    """Context id of every active kernel at one tap; the id ``contexts`` marks an implied bit."""
    if state == 0:
        ids = np.zeros(count.size, dtype=np.int64)
    elif state == 1:
        ids = np.minimum(count, 1).astype(np.int64)
    else:
        ids = np.minimum(count, 2).astype(np.int64) * 2 + previous
    contexts = STATE_COUNTS[state]
    if columns is not None:
        ids = ids * buckets + columns
        contexts *= buckets
    if last:
        ids[count == 0] = contexts  # the kernel is non-empty: its last tap must be the one
    return ids, contexts


def _tap_cost(taps: np.ndarray, columns: np.ndarray | None, state: int, buckets: int) -> float:
    active, tap_count = taps.shape
    count = np.zeros(active, dtype=np.int64)
    previous = np.zeros(active, dtype=np.int64)
    bits = 0.0
    for j in range(tap_count):
        ids, contexts = _tap_contexts(count, previous, columns, state, buckets, j == tap_count - 1)
        column = taps[:, j]
        n = np.bincount(ids, minlength=contexts + 1)[:contexts]
        n1 = np.bincount(ids, weights=column, minlength=contexts + 1)[:contexts]
        bits += _bits_cost(n1, n) + _count_cost(n)
        count += column
        previous = column.astype(np.int64)
    return bits


def _split_by_context(ids: np.ndarray, contexts: int) -> list[np.ndarray]:
    order = np.argsort(ids, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=contexts + 1))])
    return [order[bounds[c] : bounds[c + 1]] for c in range(contexts)]


# -- public API -----------------------------------------------------------------------------
def _as_bits(positions: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    rows, cols, taps = layer_geometry(shape)
    bits = np.zeros(rows * cols * taps, dtype=np.uint8)
    bits[np.asarray(positions, dtype=np.int64)] = 1
    return bits.reshape(rows, cols, taps)


def encode_context_positions(positions: np.ndarray, shape: Sequence[int]) -> tuple[bytes, ContextConfig, float]:
    """Code the ascending flat ``positions`` of a layer of ``shape``; returns the stream, the
    configuration chosen and the conditional empirical entropy of the map under the chosen
    contexts, in bytes (without side information and counts: the "context bound")."""
    # The bucket planning's products are small ([<= 17 x 512] @ [512 x cols]): a multi-threaded
    # BLAS only adds spinning threads, which cost 1.6x the CPU time on a busy 2-core machine
    # (14x in one run beside a training job). One thread for them, whatever the process uses.
    with threadpool_limits(limits=1, user_api="blas"):
        return _encode_context_positions(positions, shape)


def _encode_context_positions(positions: np.ndarray, shape: Sequence[int]) -> tuple[bytes, ContextConfig, float]:
    if not supports(shape):
        raise ValueError(f"ctx coding needs a non-empty layer with at most {MAX_TAPS} taps, got shape {list(shape)}")
    bits = _as_bits(positions, shape)
    rows, cols, taps = bits.shape
    kernel_map = bits[:, :, 0] if taps == 1 else bits.any(axis=2).astype(np.uint8)
    _, log2_rows, log2_cols, rb, cb = _plan_map(kernel_map)
    config = ContextConfig(log2_rows, log2_cols)
    active = np.flatnonzero(kernel_map.ravel()) if taps > 1 else np.zeros(0, dtype=np.int64)
    tap_bits = bits.reshape(rows * cols, taps)[active]
    if taps > 1:
        columns = cb[active % cols]
        options = [(s, False) for s in range(len(STATE_COUNTS))]
        options += [(s, True) for s in range(len(STATE_COUNTS)) if log2_cols]
        costs = {option: _tap_cost(tap_bits, columns if option[1] else None, option[0], 1 << log2_cols) for option in options}
        state, tap_columns = min(costs, key=costs.get)
        config = ContextConfig(log2_rows, log2_cols, state, tap_columns)
    segments = _Segments()
    bound = 0.0
    for value in rb.tolist() if log2_rows else []:
        segments.uniform(value, 1 << log2_rows)
    for value in cb.tolist() if log2_cols else []:
        segments.uniform(value, 1 << log2_cols)
    block_rows, block_cols = _block_layout(rb, cb, log2_rows, log2_cols)
    for row_ids in block_rows:
        sub = kernel_map[row_ids]
        for col_ids in block_cols:
            block = sub[:, col_ids].ravel()
            segments.bits(block)
            bound += _bits_cost([np.count_nonzero(block)], [block.size])
    if taps > 1:
        columns = cb[active % cols] if config.tap_columns else None
        count = np.zeros(active.size, dtype=np.int64)
        previous = np.zeros(active.size, dtype=np.int64)
        for j in range(taps):
            ids, contexts = _tap_contexts(count, previous, columns, config.state, 1 << log2_cols, j == taps - 1)
            column = tap_bits[:, j]
            for members in _split_by_context(ids, contexts):
                segments.bits(column[members])
                bound += _bits_cost([np.count_nonzero(column[members])], [members.size])
            count += column
            previous = column.astype(np.int64)
    return config.header() + segments.payload(), config, bound / 8


def decode_context_positions(data: bytes, shape: Sequence[int], nnz: int) -> np.ndarray:
    """Inverse of :func:`encode_context_positions`: the ascending int64 flat positions."""
    numel = math.prod(shape)
    if numel == 0:
        raise FormatError("ctx position coding of an empty layer")
    rows, cols, taps = layer_geometry(shape)
    if taps > MAX_TAPS:
        raise FormatError(f"ctx position coding of a layer with {taps} taps (at most {MAX_TAPS})")
    config = ContextConfig.parse(bytes(data[:_HEADER]), taps)
    reader = _Reader(bytes(data[_HEADER:]))
    rb = reader.uniform(1 << config.log2_rows, rows).astype(np.int64)
    cb = reader.uniform(1 << config.log2_cols, cols).astype(np.int64)
    if rb.size and int(rb.max()) >= 1 << config.log2_rows or cb.size and int(cb.max()) >= 1 << config.log2_cols:
        raise FormatError("ctx position stream: bucket outside its range")
    block_rows, block_cols = _block_layout(rb, cb, config.log2_rows, config.log2_cols)
    found = []
    for row_ids in block_rows:
        for col_ids in block_cols:
            block = reader.bits(row_ids.size * col_ids.size)
            ones = np.flatnonzero(block)
            if ones.size:
                found.append(row_ids[ones // col_ids.size] * cols + col_ids[ones % col_ids.size])
    marked = np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    if taps == 1:
        positions = marked
    else:
        if marked.size > nnz:  # each non-empty kernel holds at least one non-zero
            raise FormatError(f"ctx position stream marks {marked.size} non-empty kernels for {nnz} non-zeros")
        columns = cb[marked % cols] if config.tap_columns else None
        tap_bits = np.zeros((marked.size, taps), dtype=np.uint8)
        count = np.zeros(marked.size, dtype=np.int64)
        previous = np.zeros(marked.size, dtype=np.int64)
        for j in range(taps):
            ids, contexts = _tap_contexts(count, previous, columns, config.state, 1 << config.log2_cols, j == taps - 1)
            groups = _split_by_context(ids, contexts)
            for members in groups:
                tap_bits[members, j] = reader.bits(members.size)
            if j == taps - 1:
                tap_bits[count == 0, j] = 1
            count += tap_bits[:, j]
            previous = tap_bits[:, j].astype(np.int64)
            if int(count.sum()) > nnz:
                raise FormatError(f"ctx position stream codes more than the layer's {nnz} non-zeros")
        kernel, tap = np.nonzero(tap_bits)
        positions = marked[kernel] * taps + tap
    reader.finish()
    if positions.size != nnz:
        raise FormatError(f"ctx position stream codes {positions.size} non-zeros, manifest says {nnz}")
    return positions.astype(np.int64, copy=False)


def context_entropy_bytes(positions: np.ndarray, shape: Sequence[int]) -> float:
    """The context bound of :func:`encode_context_positions` (statistics; encodes once)."""
    return encode_context_positions(positions, shape)[2]
