"""The one matrix product every runtime layer is built on: ``blockdiag(blocks) @ x``.

A grouped convolution, a Winograd layer (one block per tile position and group) and a linear
layer (one block) all multiply a block-diagonal weight matrix by a dense matrix of columns. Dense
blocks go through ``torch.bmm``; sparse ones through ONE CSR matrix holding every block, built
once, because a single sparse product beat one product per block (SPEC section 10). The CSR
matrix is multiplied by ``F.embedding_bag`` (FBGEMM) or torch's CSR matmul, see ``csr_matmul``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import _compiled

#: Default switch points: a layer runs its sparse product when its weight density is at or below
#: the threshold. Two sets, for the two implementations of the sparse products. Compiled C kernels
#: (``_compiled``), measured on the 2-core AMD EPYC (AVX, FMA), torch 2.13.0, one thread, random
#: masks, against F.conv2d / F.linear at batch 1 and 8 (AlexNet conv1-3 and fc7, ResNet-18 64@56,
#: 128@28, 256@14 and a 1x1 shortcut): sparse Winograd won up to density 0.5 (1.3-2.6x there,
#: 0.65-2.2x at 0.6), sparse spatial up to about 0.25-0.3, sparse FC up to 0.3. The PyTorch path
#: (FBGEMM embedding_bag / MKL CSR): sparse Winograd beat our dense Winograd from 0.3-0.45 down;
#: sparse spatial beat conv2d from 0.3 down at batch 1 on small maps but only from about 0.1 down
#: at batch 8 on 27x27 and larger maps; sparse FC beat F.linear from about 0.2 down.
if _compiled.available():
    WINOGRAD_SPARSE_THRESHOLD = 0.5
    SPATIAL_SPARSE_THRESHOLD = 0.25
    LINEAR_SPARSE_THRESHOLD = 0.3
else:
    WINOGRAD_SPARSE_THRESHOLD = 0.3
    SPATIAL_SPARSE_THRESHOLD = 0.1
    LINEAR_SPARSE_THRESHOLD = 0.2
#: Fewest dense columns for which ``csr_matmul`` uses ``F.embedding_bag`` instead of CSR matmul.
EMBEDDING_BAG_MIN_COLUMNS = 12

_INT32_MAX = 2**31 - 1


def density(tensor: torch.Tensor) -> float:
    """Fraction of non-zero entries (1.0 for an empty tensor, which has nothing to skip)."""
    return float(torch.count_nonzero(tensor)) / tensor.numel() if tensor.numel() else 1.0


def block_diagonal_csr(blocks: torch.Tensor) -> torch.Tensor:
    """CSR matrix ``blockdiag(blocks[0], ..., blocks[B-1])`` of shape [B*R, B*C], zeros dropped.

    Indices are int32 when they fit: torch otherwise converts int64 indices to MKL's int32 on
    every product, which cost about a fifth of the product's time in measurements.
    """
    count, rows, cols = blocks.shape
    block, row, col = blocks.nonzero(as_tuple=True)
    # nonzero() enumerates in row-major order, so (block*R + row) is already sorted: CSR order.
    row_index = block * rows + row
    col_index = block * cols + col
    shape = (count * rows, count * cols)
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=blocks.device)
    crow[1:] = torch.bincount(row_index, minlength=shape[0]).cumsum(0)
    index_dtype = torch.int32 if max(shape[1], row_index.numel()) <= _INT32_MAX else torch.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            crow.to(index_dtype),
            col_index.to(index_dtype),
            blocks[block, row, col],
            shape,
            check_invariants=True,
        )


def csr_matmul(csr: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``csr @ columns`` for a CSR matrix [R, K] and a dense [K, P], by the faster of two kernels.

    With P >= ``EMBEDDING_BAG_MIN_COLUMNS`` each output row is a weighted sum of rows of
    ``columns``, which is exactly ``F.embedding_bag`` (mode 'sum', per-sample weights = the CSR
    values, offsets = the row pointers). Its FBGEMM kernel measured about 2x faster than torch's
    CSR matmul for P of 16 to 800 here. For fewer columns (an FC layer at batch 1) its per-index
    overhead dominates and the CSR matmul wins.
    """
    if columns.shape[1] < EMBEDDING_BAG_MIN_COLUMNS:
        return csr @ columns
    return F.embedding_bag(
        csr.col_indices(),
        columns.contiguous(),
        csr.crow_indices(),
        mode="sum",
        per_sample_weights=csr.values(),
        include_last_offset=True,
    )


def resolve_sparse(sparse: bool | None, weight_density: float, threshold: float) -> bool:
    """The explicit choice if given, else sparse exactly when density <= threshold."""
    if sparse is None:
        return weight_density <= threshold
    if not isinstance(sparse, bool):
        raise TypeError(f"sparse must be True, False or None, got {sparse!r}")
    return sparse


class BlockDiagonalKernel(nn.Module):
    """Base for the runtime layers: holds block-diagonal weights and multiplies by them.

    Subclasses keep the dense weight as a persistent buffer and say, via :meth:`weight_blocks`,
    how it splits into diagonal blocks [B, R, C]. The CSR copy is a non-persistent buffer derived
    from it: rebuilt after ``load_state_dict`` and moved along by ``.to()``; after editing the
    weight buffer in place, call :meth:`refresh`.
    """

    sparse_threshold: float = WINOGRAD_SPARSE_THRESHOLD

    def _init_kernel(self, sparse: bool | None) -> None:
        self.sparse_requested = sparse
        resolve_sparse(sparse, 1.0, self.sparse_threshold)  # validate the argument early
        self._compiled_allowed = _compiled.on_by_default()
        self._compiled_kernel = None
        self.register_buffer("_csr", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh())
        self.refresh()

    def weight_blocks(self) -> torch.Tensor:
        raise NotImplementedError

    def refresh(self) -> None:
        """Re-derive density, the dense/sparse choice and the CSR matrix from the weights."""
        blocks = self.weight_blocks()
        self._density = density(blocks)
        self.uses_sparse = resolve_sparse(self.sparse_requested, self._density, self.sparse_threshold)
        self._csr = block_diagonal_csr(blocks.detach()) if self.uses_sparse else None
        self._compiled_kernel = None
        if self.uses_sparse and self._compiled_allowed and _compiled.available() and blocks.dtype == torch.float32 and blocks.device.type == "cpu":
            try:
                self._compiled_kernel = self.build_compiled()
            except _compiled.Unsupported:
                self._compiled_kernel = None  # e.g. more non-zeros than 32-bit indices: PyTorch runs it

    def build_compiled(self):
        """The layer's compiled kernel (``_compiled``): a callable built from the current weights,
        or None where the compiled kernel does not apply."""
        raise NotImplementedError

    @property
    def compiled(self) -> bool:
        """True when the sparse product runs in the compiled C kernel (the default where the
        extension is built, see ``jointsparse.nn._compiled``), False when it runs in PyTorch.
        Setting True needs the extension and a sparse layer; it raises ``RuntimeError`` when the
        kernels cannot run."""
        return self._compiled_kernel is not None

    @compiled.setter
    def compiled(self, enabled: bool) -> None:
        if enabled and not _compiled.available():
            raise RuntimeError(f"compiled kernels unavailable: {_compiled.UNAVAILABLE_REASON}")
        self._compiled_allowed = bool(enabled)
        self.refresh()

    def _compiled_applies(self, x: torch.Tensor) -> bool:
        # float32 only: the kernel holds float32 copies of the weights made when it was built, so
        # after .double() (or on a float64 input) the PyTorch path runs on the converted weights.
        return self._compiled_kernel is not None and self.weight_blocks().dtype == torch.float32 and _compiled.accepts(x)

    def block_matmul(self, columns: torch.Tensor) -> torch.Tensor:
        """``blockdiag(blocks) @ columns``: [B*C, P] -> [B*R, P]."""
        if self._csr is not None:
            return csr_matmul(self._csr, columns)
        blocks = self.weight_blocks()
        count, rows, cols = blocks.shape
        if count == 1:
            return blocks[0] @ columns
        return torch.bmm(blocks, columns.reshape(count, cols, -1)).reshape(count * rows, -1)

    def _check_input_dtype(self, x: torch.Tensor, weight: torch.Tensor) -> None:
        if x.dtype != weight.dtype:
            raise TypeError(f"{type(self).__name__} holds {weight.dtype} weights but got a {x.dtype} input")
