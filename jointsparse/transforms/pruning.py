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

__all__ = ["DEFAULT_M", "pruned_count", "winograd_magnitudes", "winograd_mask", "winograd_pruned", "winograd_threshold"]

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
