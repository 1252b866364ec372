"""Winograd-domain transforms of filters, input tiles and output tiles, and the tiling itself."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cook_toom import winograd_matrices


def _matrices_like(m: int, r: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(mat.to(dtype=like.dtype, device=like.device) for mat in winograd_matrices(m, r))  # type: ignore[return-value]


def filter_to_winograd(weight: torch.Tensor, m: int) -> torch.Tensor:
    """``G w G^T`` over the last two dims: [..., r, r] -> [..., t, t]. Differentiable."""
    r = weight.shape[-1]
    if weight.shape[-2] != r:
        raise ValueError(f"Winograd needs square filters, got {tuple(weight.shape[-2:])}")
    _, g, _ = _matrices_like(m, r, weight)
    return g @ weight @ g.transpose(0, 1)


def tile_count(out_size: int, m: int) -> int:
    """Tiles of m outputs needed to cover ``out_size`` outputs (the last one is cropped)."""
    return math.ceil(out_size / m)


def extract_tiles(x: torch.Tensor, m: int, r: int, padding: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Overlapping t x t input tiles with stride m: [N, C, H, W] -> [N, C, nH, nW, t, t].

    The input is zero-padded by ``padding`` on every side (as ``F.conv2d`` does) and then, on the
    bottom and right, up to what whole tiles need. Returns the tiles and the un-cropped output
    size ``(Hout, Wout)``. The tiles are a strided view of the padded input, not a copy.
    """
    n, c, h, w = x.shape
    t = m + r - 1
    out_h, out_w = h + 2 * padding - r + 1, w + 2 * padding - r + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {h}x{w} with padding {padding} is smaller than the {r}x{r} filter")
    tiles_h, tiles_w = tile_count(out_h, m), tile_count(out_w, m)
    need_h, need_w = tiles_h * m + r - 1, tiles_w * m + r - 1
    x = F.pad(x, (padding, need_w - w - padding, padding, need_h - h - padding)).contiguous()
    sn, sc, sh, sw = x.stride()
    tiles = x.as_strided((n, c, tiles_h, tiles_w, t, t), (sn, sc, sh * m, sw * m, sh, sw))
    return tiles, (out_h, out_w)


def input_to_winograd(tiles: torch.Tensor, m: int, r: int) -> torch.Tensor:
    """``B^T d B`` over the last two dims: [..., t, t] -> [..., t, t]."""
    _, _, bt = _matrices_like(m, r, tiles)
    return bt @ tiles @ bt.transpose(0, 1)


def output_from_winograd(products: torch.Tensor, m: int, r: int) -> torch.Tensor:
    """``A^T Y A`` over the last two dims: [..., t, t] -> [..., m, m]."""
    at, _, _ = _matrices_like(m, r, products)
    return at @ products @ at.transpose(0, 1)


def untile(tiles: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """[N, C, nH, nW, m, m] -> [N, C, Hout, Wout], cropping the padding of the last tiles."""
    n, c, th, tw, m, _ = tiles.shape
    full = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, th * m, tw * m)
    return full[:, :, : out_size[0], : out_size[1]]


def winograd_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, m: int, padding: int = 0) -> torch.Tensor:
    """Dense Winograd correlation, written for clarity (the runtime layer in ``jointsparse.nn`` is
    the fast path). Stride 1, dilation 1, groups 1; equals ``F.conv2d(x, weight, padding=padding)``.
    """
    r = weight.shape[-1]
    tiles, out_size = extract_tiles(x, m, r, padding)
    data = input_to_winograd(tiles, m, r)  # [N, Cin, nH, nW, t, t]
    filt = filter_to_winograd(weight, m)  # [Cout, Cin, t, t]
    products = torch.einsum("nchwij,ocij->nohwij", data, filt)
    return untile(output_from_winograd(products, m, r), out_size)


def has_winograd_form(module: torch.nn.Module) -> bool:
    """True for a square-kernel ``nn.Conv2d`` with stride 1, dilation 1 and r > 1 (SPEC section 2).

    Every other layer (strided or dilated convs, 1x1 convs, non-square kernels, linear layers)
    is spatial-only in every domain.
    """
    if not isinstance(module, torch.nn.Conv2d):
        return False
    kh, kw = module.kernel_size
    return (
        kh == kw
        and kh > 1
        and tuple(module.stride) == (1, 1)
        and tuple(module.dilation) == (1, 1)
        and isinstance(module.padding, tuple)
        and module.padding[0] == module.padding[1]
        and module.padding_mode == "zeros"
    )
