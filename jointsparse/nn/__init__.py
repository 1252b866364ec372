"""Runtime layers for compressed models: sparse Winograd and sparse spatial convolution, sparse FC,
and :func:`deploy`, which swaps them into a model.

All of them are inference modules (weights are buffers) that pick a dense or a CSR product by
weight density; pass ``sparse=True``/``False`` to override. See ``_kernel`` for the thresholds.
"""

from ._kernel import (
    EMBEDDING_BAG_MIN_COLUMNS,
    LINEAR_SPARSE_THRESHOLD,
    SPATIAL_SPARSE_THRESHOLD,
    WINOGRAD_SPARSE_THRESHOLD,
    BlockDiagonalKernel,
    block_diagonal_csr,
    csr_matmul,
    density,
)
from .deploy import DOMAINS, WinogradSetting, deploy, winograd_prune
from .spatial import SparseConv2d, SparseLinear, im2col
from .winograd import WinogradConv2d, winograd_form_problem

__all__ = [
    "DOMAINS",
    "WinogradSetting",
    "deploy",
    "winograd_prune",
    "EMBEDDING_BAG_MIN_COLUMNS",
    "csr_matmul",
    "LINEAR_SPARSE_THRESHOLD",
    "SPATIAL_SPARSE_THRESHOLD",
    "WINOGRAD_SPARSE_THRESHOLD",
    "BlockDiagonalKernel",
    "block_diagonal_csr",
    "density",
    "SparseConv2d",
    "SparseLinear",
    "im2col",
    "WinogradConv2d",
    "winograd_form_problem",
]
