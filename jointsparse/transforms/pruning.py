"""The Winograd pruning rule (SPEC section 1), in one place.

A Winograd-form layer deploys as ``G w G^T`` with every entry whose magnitude is at or under the
layer's threshold set to zero. The threshold of a target sparsity is the exact quantile of
``|G w G^T|``. Both are computed in float64, so the encoder, the decoder, the report and the cost
model agree on every entry.
"""

from __future__ import annotations

import math

import torch

from .tiling import filter_to_winograd

__all__ = [
    "DEFAULT_M",
    "pruned_count",
    "winograd_kept_count",
    "winograd_magnitudes",
    "winograd_mask",
    "winograd_pruned",
    "winograd_pruned_weight",
    "winograd_threshold",
]

#: The Winograd output tile when none is given: F(2x2, 3x3), the paper's setting.
DEFAULT_M = 2


def pruned_count(fraction: float, numel: int) -> int:
    """How many of ``numel`` weights a target sparsity removes, rounded to the nearest count
    (``ceil`` would turn 0.07 * 100 = 7.000000000000001 into 8)."""
    return min(numel, max(0, round(fraction * numel)))


def winograd_pruned(weight: torch.Tensor, m: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G w G^T, keep)`` in float64: the Winograd-domain weight and the mask ``|G w G^T| > threshold``."""
    big = filter_to_winograd(weight.detach().to(torch.float64), m)
    return big, big.abs() > threshold


#: Winograd-domain entries transformed per step by the bounded functions below: their float64
#: working set (``G w G^T``, its magnitudes, the mask) stays near 1.5 MiB whatever the layer's size,
#: so a decoder's peak memory is the float32 result it returns, not 8 bytes per entry and more.
CHUNK_ENTRIES = 1 << 16


def _filter_grid(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [Cout, Cin, r, r] (or one [r, r] filter) as a [rows, cols, r, r] grid of filters."""
    r = weight.shape[-1]
    rows, cols = (1, 1) if weight.dim() == 2 else (weight.shape[0], math.prod(weight.shape[1:-2]))
    return weight.detach().reshape(rows, cols, r, r)  # explicit sizes: a layer may have no weights


def _winograd_blocks(grid: torch.Tensor, m: int):
    """``(rows, cols, G w G^T in float64)`` over blocks of the filter grid of at most
    ``CHUNK_ENTRIES`` Winograd entries each (at least one filter)."""
    rows, cols, r, _ = grid.shape
    per_filter = (m + r - 1) ** 2
    col_step = max(1, min(cols, CHUNK_ENTRIES // per_filter))
    row_step = max(1, CHUNK_ENTRIES // (per_filter * col_step))
    for r0 in range(0, rows, row_step):
        for c0 in range(0, cols, col_step):
            block = (slice(r0, min(rows, r0 + row_step)), slice(c0, min(cols, c0 + col_step)))
            yield block, filter_to_winograd(grid[block].to(torch.float64), m)


def winograd_pruned_weight(weight: torch.Tensor, m: int, threshold: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``G w G^T`` with every entry of magnitude ``<= threshold`` set to zero, as float32
    [..., t, t]: the decoder's Winograd weights. Computed in float64 in bounded chunks, so it
    allocates nothing beyond its result. ``out``: a float32 [Cout, Cin, t, t] tensor (or view,
    e.g. of a position-major buffer) to fill instead of allocating one."""
    grid = _filter_grid(weight)
    t = m + weight.shape[-1] - 1
    if out is None:
        out = torch.empty((*weight.shape[:-2], t, t), dtype=torch.float32)
    target = out.view(grid.shape[0], grid.shape[1], t, t) if out.dim() != 4 else out
    for block, big in _winograd_blocks(grid, m):
        target[block] = big.masked_fill_(big.abs() <= threshold, 0.0)
    return out


def winograd_kept_count(weight: torch.Tensor, m: int, threshold: float) -> int:
    """How many entries ``|G w G^T| > threshold`` keeps, in bounded float64 chunks."""
    return sum(int((big.abs() > threshold).sum()) for _, big in _winograd_blocks(_filter_grid(weight), m))


def winograd_mask(weight: torch.Tensor, m: int, threshold: float) -> torch.Tensor:
    """``|G w G^T| > threshold``: True where the Winograd-domain weight is kept."""
    return winograd_pruned(weight, m, threshold)[1]


def winograd_magnitudes(weight: torch.Tensor, m: int) -> torch.Tensor:
    """``|G w G^T|`` in float64."""
    return filter_to_winograd(weight.detach().to(torch.float64), m).abs()


def winograd_threshold(weight: torch.Tensor, sparsity: float, m: int) -> float:
    """The threshold that prunes the ``sparsity`` fraction of ``|G w G^T|``: its exact quantile
    (0 for a target of 0, so that every non-zero is kept)."""
    if not 0.0 <= sparsity < 1.0 or math.isnan(sparsity):
        raise ValueError(f"Winograd sparsity must be in [0, 1), got {sparsity}")
    magnitudes = winograd_magnitudes(weight, m).flatten()
    k = pruned_count(sparsity, magnitudes.numel())
    return float(magnitudes.kthvalue(k).values) if k > 0 else 0.0
