"""The strided view im2col copies from, shared by the PyTorch path (``spatial.im2col``) and the
compiled kernels' small-map path (``_compiled.DirectConvKernel``)."""

from __future__ import annotations

import torch


def patches(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """View [C, kh, kw, N, Hout, Wout] of an already padded input [N, C, H, W]: element
    (c, ky, kx, n, y, x) is the input value tap (ky, kx) of output pixel (y, x) reads. No copy."""
    n, c, h, w = x.shape
    kh, kw = kernel_size
    out_h = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {h}x{w} (after padding) is smaller than the dilated {kh}x{kw} kernel")
    x = x.contiguous()
    sn, sc, sh, sw = x.stride()
    return x.as_strided(
        (c, kh, kw, n, out_h, out_w),
        (sc, sh * dilation[0], sw * dilation[1], sn, sh * stride[0], sw * stride[1]),
    )
