"""How much structure a file's significance maps hold that a position coder could exploit (issue 15).

For each pruned layer of a ``.jsz`` file: its positions' coded bytes, their order-0 bound
``N H(nnz/N) / 8`` (issue 15's yardstick), and two *oracle* bounds that no real coder reaches,
since they pay nothing for their side information:

- ``row x col``: each bit coded with ``P = clip(d_row * d_col / d)`` (``d_row``, ``d_col`` the exact
  densities of its row and column, ``d`` the layer's): what any coder of per-row and per-column
  densities could at best achieve (the ctx coder's buckets are a coarse version of it);
- ``neighbours``: each bit coded given the bit before it in its row and the bit above it (same
  column, previous row), four contexts with their exact empirical frequencies: what the map's
  local correlations (runs along a row, filters that prune alike) could at best save;
- ``group``: for a layer whose columns come in groups of ``g`` (``--group fc6.weight=36``: fc6 sees
  each pool5 value 36 times at the AlexNet proxy's 67 px, SPEC section 10), the count of ones per
  (row, group) coded with its exact empirical distribution, then which of the ``g`` bits, uniform.
  For conv layers the group is the kernel (its taps).

A layer whose oracles sit near 1.0x has a near-i.i.d. map: no context model of these kinds can
code it much below its order-0 bound.

A second table does the same for the codebook indices: their order-0 bound against the oracle that
codes each index with the empirical distribution of the indices that follow the same previous
non-zero index of its row (the first of a row: its own context). Filters whose kept weights share
a sign or a magnitude show it there.

    python experiments/mask_structure.py experiments/results/alexnet_tables.jsz --group fc6.weight=36
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from jointsparse.codecs import FormatError
from jointsparse.codecs.container import load
from jointsparse.codecs.entropy import order0_entropy_bits
from jointsparse.codecs.model_codec import decode_state
from jointsparse.info import info_payload


def _entropy_bits(ones: np.ndarray, probability: np.ndarray) -> float:
    p = np.clip(probability, 1e-12, 1 - 1e-12)
    return float(-(ones * np.log2(p) + (1 - ones) * np.log2(1 - p)).sum())


def order0_bits(mask: np.ndarray) -> float:
    return _entropy_bits(mask, np.full(mask.shape, mask.mean()))


def row_col_oracle_bits(matrix: np.ndarray) -> float:
    """Bits under the per-row x per-column density product model (side information free)."""
    rows, cols = matrix.mean(1, keepdims=True), matrix.mean(0, keepdims=True)
    return _entropy_bits(matrix, rows * cols / max(matrix.mean(), 1e-12))


def neighbour_oracle_bits(matrix: np.ndarray) -> float:
    """Bits of coding each bit given (the bit before it in its row, the bit above it), the first
    column and the first row taking 0 for what they lack, with each context's exact frequency."""
    bits = matrix.astype(np.int64)
    left = np.zeros_like(bits)
    left[:, 1:] = bits[:, :-1]
    above = np.zeros_like(bits)
    above[1:] = bits[:-1]
    joint = np.bincount(((left * 2 + above) * 2 + bits).ravel(), minlength=8).reshape(4, 2)
    return sum(order0_entropy_bits(row) for row in joint)


def group_oracle_bits(matrix: np.ndarray, group: int) -> float:
    """Bits of coding each (row, group of ``group`` columns)'s count of ones by its empirical
    distribution, then the ones' places uniformly among the ``C(group, count)`` choices."""
    counts = matrix.reshape(matrix.shape[0], -1, group).sum(2).astype(np.int64).ravel()
    frequency = np.bincount(counts, minlength=group + 1) / counts.size
    count_bits = -np.log2(frequency[counts]).sum()
    place_bits = np.array([math.log2(math.comb(group, k)) for k in range(group + 1)])[counts].sum()
    return float(count_bits + place_bits)


def previous_index_oracle_bits(indices: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """(order-0 bits, oracle bits given the previous non-zero index of the same row) of a layer's
    codebook ``indices`` in coding order, ``rows`` each one's row (non-decreasing)."""
    indices = indices.astype(np.int64)
    if indices.size == 0:
        return 0.0, 0.0
    size = int(indices.max()) + 1
    previous = np.empty_like(indices)
    previous[0], previous[1:] = size, indices[:-1]
    previous[np.r_[True, rows[1:] != rows[:-1]]] = size  # the first of its row
    joint = np.bincount(previous * size + indices, minlength=(size + 1) * size).reshape(size + 1, size)
    return order0_entropy_bits(np.bincount(indices, minlength=size)), sum(order0_entropy_bits(row) for row in joint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--group", action="append", default=[], help="NAME=G: the layer's columns come in groups of G (repeatable)")
    args = parser.parse_args(argv)
    try:
        groups = {name: int(size) for name, size in (item.split("=", 1) for item in args.group)}
        _, state, _ = decode_state(args.file)
        layers = info_payload(str(args.file), None)["report"]["layers"]
        stored = load(args.file).layers
    except (ValueError, OSError, FormatError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    rows, totals = [], np.zeros(2)
    for layer in layers:
        if layer.get("position_bytes") is None or layer["name"] not in state:
            continue
        weight = state[layer["name"]].numpy()
        matrix = (weight != 0).reshape(weight.shape[0], -1).astype(np.float64)
        group = groups.get(layer["name"], math.prod(weight.shape[2:]) if weight.ndim > 2 else 1)
        if matrix.shape[1] % group:
            print(f"error: {layer['name']} has {matrix.shape[1]} columns, not a multiple of --group {group}", file=sys.stderr)
            return 2
        order0 = order0_bits(matrix) / 8
        grouped = "-" if group == 1 else f"{group_oracle_bits(matrix, group) / 8 / order0:.4f}"
        totals += (layer["position_bytes"], order0)
        rows.append(f"| {layer['name']} | {'x'.join(map(str, weight.shape))} | {matrix.mean():.3f} | {layer['position_bytes']:,} | {order0:,.0f} | "
                    f"{layer['position_bytes'] / order0:.4f} | {row_col_oracle_bits(matrix) / 8 / order0:.4f} | "
                    f"{neighbour_oracle_bits(matrix) / 8 / order0:.4f} | {group} | {grouped} |")
    print(f"Significance-map structure of `{args.file}` (bytes; oracles are lower bounds without side information)\n")
    print("| layer | shape | density | coded pos B | order-0 B | coded / order-0 | row x col oracle / order-0 | neighbours oracle / order-0 | group | group oracle / order-0 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(f"| total | | | {totals[0]:,.0f} | {totals[1]:,.0f} | {totals[0] / totals[1]:.4f} | | | | |")
    print(f"\nCodebook indices of `{args.file}` (bytes; the oracle is a lower bound without side information)\n")
    print("| layer | non-zeros | coded idx B | order-0 B | given the previous index in the row / order-0 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    index_totals = np.zeros(3)
    for layer in layers:
        if layer["name"] not in stored:
            continue
        quantized = stored[layer["name"]].quantized
        per_row = math.prod(quantized.shape[1:])
        order0, given = (bits / 8 for bits in previous_index_oracle_bits(np.asarray(quantized.indices), np.asarray(quantized.positions) // per_row))
        index_totals += (layer["index_bytes"], order0, given)
        print(f"| {layer['name']} | {quantized.nnz:,} | {layer['index_bytes']:,} | {order0:,.0f} | {given / order0 if order0 else 1.0:.4f} |")
    print(f"| total | | {index_totals[0]:,.0f} | {index_totals[1]:,.0f} | {index_totals[2] / max(index_totals[1], 1e-12):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
