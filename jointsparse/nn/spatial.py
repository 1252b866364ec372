"""Sparse spatial layers: any ``nn.Conv2d`` via im2col, and ``nn.Linear``, with CSR weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _compiled
from ._patches import patches
from ._kernel import LINEAR_SPARSE_THRESHOLD, SPATIAL_SPARSE_THRESHOLD, BlockDiagonalKernel


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) as ``F.pad`` takes it, for int, tuple, 'valid' and 'same'."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        # torch puts the odd extra pixel of 'same' on the right/bottom.
        pads = []
        for dilation, size in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = dilation * (size - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    pad_h, pad_w = conv.padding
    return (pad_w, pad_w, pad_h, pad_h)


def im2col(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """Columns [C*kh*kw, N*Hout*Wout] of an already padded input [N, C, H, W].

    Rows are ordered (channel, ky, kx) like a flattened Conv2d weight, columns (image, y, x). One
    copy from a strided view, instead of ``F.unfold`` followed by a transpose (two copies).
    """
    view = patches(x, kernel_size, stride, dilation)
    c, kh, kw = view.shape[:3]
    return view.reshape(c * kh * kw, -1)


class SparseConv2d(BlockDiagonalKernel):
    """Any ``nn.Conv2d`` (stride, dilation, groups, padding modes) with a CSR weight matrix.

    Buffers: ``weight`` [Cout, Cin/g, kh, kw] and ``bias``. Sparse path: the block-diagonal CSR
    matrix [Cout, Cin*kh*kw] (one block per group) times im2col columns. Dense path: ``F.conv2d``,
    which beats dense im2col by 1.5-2.6x (SPEC section 10). ``sparse=None`` picks CSR when the
    density is <= ``SPATIAL_SPARSE_THRESHOLD``. Inference only, as ``WinogradConv2d``.
    """

    sparse_threshold = SPATIAL_SPARSE_THRESHOLD

    def __init__(self, conv: nn.Conv2d, sparse: bool | None = None) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SparseConv2d needs an nn.Conv2d, got {type(conv).__name__}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.dilation = tuple(conv.stride), tuple(conv.dilation)
        self.groups, self.padding_mode = conv.groups, conv.padding_mode
        self.pad = _explicit_padding(conv)
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self._init_kernel(sparse)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, sparse: bool | None = None) -> "SparseConv2d":
        """Sparse copy of ``conv``; its zero weights are skipped on the sparse path."""
        return cls(conv, sparse)

    def build_compiled(self):
        return _compiled.DirectConvKernel(self.weight, self.bias, self.stride, self.dilation, self.groups)

    def weight_blocks(self) -> torch.Tensor:
        return self.weight.view(self.groups, self.out_channels // self.groups, -1)

    @property
    def density(self) -> float:
        """Fraction of non-zero weights."""
        return self._density

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        self._check_input_dtype(x, self.weight)
        left, right, top, bottom = self.pad
        if not self.uses_sparse and self.padding_mode == "zeros" and (left, top) == (right, bottom):
            # conv2d pads internally; an explicit F.pad would cost one more copy of the input.
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        if self._compiled_applies(x):
            try:
                if self.padding_mode == "zeros":
                    return self._compiled_kernel(x, self.pad)
                return self._compiled_kernel(F.pad(x, self.pad, mode=self.padding_mode))
            except _compiled.Unsupported:
                pass  # an input too large for the kernel's 32-bit offsets: the PyTorch path below
        if any(self.pad):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self.pad, mode=mode)
        if not self.uses_sparse:
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        n = x.shape[0]
        columns = im2col(x, self.kernel_size, self.stride, self.dilation)
        out = self.block_matmul(columns)  # [Cout, N*Hout*Wout]
        out_h = (x.shape[2] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        out = out.view(self.out_channels, n, out_h, -1).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.contiguous()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, "
            f"density={self.density:.4f}, sparse={self.uses_sparse}"
        )


class SparseLinear(BlockDiagonalKernel):
    """``nn.Linear`` with a CSR weight matrix; ``F.linear`` when dense (density above
    ``LINEAR_SPARSE_THRESHOLD`` or ``sparse=False``). Buffers ``weight`` and ``bias``; inference only.
    """

    sparse_threshold = LINEAR_SPARSE_THRESHOLD

    def __init__(self, linear: nn.Linear, sparse: bool | None = None) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear needs an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self._init_kernel(sparse)

    @classmethod
    def from_linear(cls, linear: nn.Linear, sparse: bool | None = None) -> "SparseLinear":
        """Sparse copy of ``linear``; its zero weights are skipped on the sparse path."""
        return cls(linear, sparse)

    def build_compiled(self):
        return _compiled.LinearKernel(self.weight, self.bias)

    def weight_blocks(self) -> torch.Tensor:
        return self.weight.unsqueeze(0)

    @property
    def density(self) -> float:
        """Fraction of non-zero weights."""
        return self._density

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected input [..., {self.in_features}], got {tuple(x.shape)}")
        self._check_input_dtype(x, self.weight)
        if not self.uses_sparse:
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        if self._compiled_applies(x):
            return self._compiled_kernel(rows).reshape(*x.shape[:-1], self.out_features)
        out = self.block_matmul(rows.t()).t()  # [N, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"density={self.density:.4f}, sparse={self.uses_sparse}"
        )
