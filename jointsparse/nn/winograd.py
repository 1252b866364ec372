"""Winograd-domain convolution F(m x m, r x r) with optional sparse Winograd weights (SPEC 2, 10)."""

from __future__ import annotations

import torch
from torch import nn

from ..transforms import DEFAULT_M, extract_tiles, filter_to_winograd, has_winograd_form, winograd_matrices
from . import _compiled
from ._kernel import WINOGRAD_SPARSE_THRESHOLD, BlockDiagonalKernel


def winograd_form_problem(module: nn.Module) -> str | None:
    """Why ``module`` has no Winograd form, or None if it has one (see ``has_winograd_form``)."""
    if has_winograd_form(module):
        return None
    if not isinstance(module, nn.Conv2d):
        return f"it is a {type(module).__name__}, not an nn.Conv2d"
    kh, kw = module.kernel_size
    if kh != kw:
        return f"its kernel {kh}x{kw} is not square"
    if kh == 1:
        return "it is a 1x1 convolution"
    if tuple(module.stride) != (1, 1):
        return f"its stride is {tuple(module.stride)}, not 1"
    if tuple(module.dilation) != (1, 1):
        return f"its dilation is {tuple(module.dilation)}, not 1"
    if module.padding_mode != "zeros":
        return f"its padding mode is {module.padding_mode!r}, not 'zeros'"
    return f"its padding {module.padding!r} is not one symmetric integer"


class WinogradConv2d(BlockDiagonalKernel):
    """Stride-1 2-D correlation computed as ``A^T [(G w G^T) * (B^T d B)] A`` per tile.

    Buffers (no parameters; this is an inference module): ``winograd_weight`` [t*t, Cout, Cin/g],
    position-major so that each tile position's [Cout, Cin/g] matrix is one contiguous block, and
    ``bias`` [Cout] or None. Exact zeros in ``winograd_weight`` are pruned weights.

    The forward pass: input tiles come from a strided view of the padded input; ``B^T d B`` and
    ``A^T Y A`` are single dense products with ``kron(B^T, B^T)`` and ``kron(A^T, A^T)`` on
    flattened tiles; the channel mixing is one product with the block-diagonal matrix
    [t*t*Cout, t*t*Cin] (one block per tile position and group), dense (bmm) or CSR. ``sparse=None``
    picks CSR when the Winograd density is <= ``WINOGRAD_SPARSE_THRESHOLD``.

    Works in eval mode and under ``torch.no_grad()``; it does not train (weights are buffers, and
    the sparse product is not meant for autograd).
    """

    sparse_threshold = WINOGRAD_SPARSE_THRESHOLD

    def __init__(
        self,
        winograd_weight: torch.Tensor,
        bias: torch.Tensor | None,
        m: int,
        r: int,
        padding: int = 0,
        groups: int = 1,
        sparse: bool | None = None,
    ) -> None:
        """Prefer :meth:`from_conv` or :meth:`from_winograd_weights`; arguments as there."""
        super().__init__()
        if not (isinstance(m, int) and m >= 1 and isinstance(r, int) and r >= 2):
            raise ValueError(f"F(m, r) needs integers m >= 1 and r >= 2, got m={m!r}, r={r!r}")
        if not (isinstance(padding, int) and padding >= 0):
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        if not (isinstance(groups, int) and groups >= 1):
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        t = m + r - 1
        if winograd_weight.dim() != 4 or tuple(winograd_weight.shape[2:]) != (t, t):
            raise ValueError(f"winograd_weight must be [Cout, Cin/groups, {t}, {t}] for F({m}, {r}), got {tuple(winograd_weight.shape)}")
        if not winograd_weight.is_floating_point():
            raise TypeError(f"winograd_weight must be floating point, got {winograd_weight.dtype}")
        out_channels, in_per_group = winograd_weight.shape[:2]
        if out_channels % groups:
            raise ValueError(f"out_channels {out_channels} is not divisible by groups {groups}")
        if bias is not None and tuple(bias.shape) != (out_channels,):
            raise ValueError(f"bias must have shape ({out_channels},), got {tuple(bias.shape)}")
        self.m, self.r, self.t = m, r, t
        self.padding, self.groups = padding, groups
        self.in_channels, self.out_channels = in_per_group * groups, out_channels
        weight = winograd_weight.detach().permute(2, 3, 0, 1).reshape(t * t, out_channels, in_per_group)
        self.register_buffer("winograd_weight", weight.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(weight.dtype).clone())
        at, _, bt = winograd_matrices(m, r)
        # Transforms in float64 first so the only rounding is the final cast.
        self.register_buffer("input_kron", torch.kron(bt, bt).to(weight), persistent=False)
        self.register_buffer("output_kron", torch.kron(at, at).to(weight), persistent=False)
        self._init_kernel(sparse)

    @classmethod
    def from_winograd_weights(
        cls,
        winograd_weight: torch.Tensor,
        bias: torch.Tensor | None,
        m: int,
        r: int,
        padding: int = 0,
        groups: int = 1,
        sparse: bool | None = None,
    ) -> "WinogradConv2d":
        """Layer from Winograd-domain weights [Cout, Cin/groups, t, t] (t = m + r - 1), as a
        decoder produces them: ``G w G^T``, already pruned (zeros are skipped by the sparse path).
        """
        return cls(winograd_weight, bias, m, r, padding, groups, sparse)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        m: int = DEFAULT_M,
        winograd_mask: torch.Tensor | None = None,
        sparse: bool | None = None,
    ) -> "WinogradConv2d":
        """Winograd layer equal to ``conv`` (up to rounding), optionally pruned in the Winograd domain.

        ``winograd_mask``: bool [Cout, Cin/groups, t, t], True where a Winograd weight is kept;
        the others become exactly zero. ``sparse=None`` still picks the product by the resulting
        density, so a mask that keeps most weights runs dense (faster there); ``sparse=True``
        forces the CSR product. Raises ``ValueError`` if ``conv`` has no Winograd form.
        """
        problem = winograd_form_problem(conv)
        if problem is not None:
            raise ValueError(f"{conv} has no Winograd form: {problem}")
        weight = conv.weight.detach()
        r = weight.shape[-1]
        winograd = filter_to_winograd(weight.double(), m).to(weight.dtype)
        if winograd_mask is not None:
            if winograd_mask.dtype != torch.bool:
                raise TypeError(f"winograd_mask must be a bool tensor, got {winograd_mask.dtype}")
            if winograd_mask.shape != winograd.shape:
                raise ValueError(f"winograd_mask must have shape {tuple(winograd.shape)}, got {tuple(winograd_mask.shape)}")
            winograd = winograd * winograd_mask.to(winograd.device)
        bias = None if conv.bias is None else conv.bias.detach()
        return cls(winograd, bias, m, r, conv.padding[0], conv.groups, sparse)

    def build_compiled(self):
        at, _, bt = winograd_matrices(self.m, self.r)
        return _compiled.WinogradKernel(self.winograd_weight, self.bias, self.m, self.r, self.padding, self.groups, bt, at)

    def weight_blocks(self) -> torch.Tensor:
        tt, out_channels, in_per_group = self.winograd_weight.shape
        g = self.groups
        # [t*t, Cout, Cin/g] -> [t*t*g, Cout/g, Cin/g]: a free view, block (position, group).
        return self.winograd_weight.view(tt * g, out_channels // g, in_per_group)

    @property
    def winograd_filters(self) -> torch.Tensor:
        """The Winograd weights as [Cout, Cin/groups, t, t] (a view of the buffer)."""
        return self.winograd_weight.view(self.t, self.t, self.out_channels, -1).permute(2, 3, 0, 1)

    @property
    def winograd_density(self) -> float:
        """Fraction of non-zero Winograd weights."""
        return self._density

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        self._check_input_dtype(x, self.winograd_weight)
        if self._compiled_applies(x):
            return self._compiled_kernel(x)
        m, t = self.m, self.t
        tiles, (out_h, out_w) = extract_tiles(x, m, self.r, self.padding)
        n, c, tiles_h, tiles_w = tiles.shape[:4]
        positions = n * tiles_h * tiles_w
        # One copy puts every tile's t*t values in rows, (channel, image, tile) in columns, so that
        # the transform and the channel mixing are plain 2-D products with no further reshuffle.
        columns = tiles.permute(4, 5, 1, 0, 2, 3).reshape(t * t, c * positions)
        transformed = (self.input_kron @ columns).view(t * t * c, positions)
        mixed = self.block_matmul(transformed)  # [t*t*Cout, N*nH*nW]
        out = (self.output_kron @ mixed.view(t * t, -1)).view(m, m, self.out_channels, n, tiles_h, tiles_w)
        out = out.permute(3, 2, 4, 0, 5, 1).reshape(n, self.out_channels, tiles_h * m, tiles_w * m)
        out = out[:, :, :out_h, :out_w]
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.contiguous()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, F({self.m}x{self.m}, {self.r}x{self.r}), padding={self.padding}, "
            f"groups={self.groups}, bias={self.bias is not None}, winograd_density={self.winograd_density:.4f}, "
            f"sparse={self.uses_sparse}"
        )
