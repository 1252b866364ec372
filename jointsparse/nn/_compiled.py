"""Compiled CPU kernels for the sparse runtime layers (SPEC section 11): the C extension ``_csparse``.

Three kernels, all built on one register-blocked micro-kernel (a row of the output is the sum of
weighted rows of a dense matrix, 32 columns in AVX registers at a time, two non-zeros per pass):

- ``WinogradKernel``: sparse Winograd convolution, fused per block of tile rows: input transform,
  the sparse products of each Winograd position for a chunk of output channels, output transform
  and bias. F(2x2, 3x3) has hand-vectorised transforms; other F(m, r) with t = m + r - 1 <= 16 use
  generic separable loops.
- ``DirectConvKernel``: direct sparse convolution (SkimCaffe's idea: each non-zero adds a shifted
  input row into an output row) with stride, dilation, groups and zero padding.
- ``LinearKernel``: a sparse fully connected layer, CSR rows times the batch.

Why C and not numba or PyTorch: measured on the 2-core AMD EPYC (AVX, FMA), torch 2.13.0, one
thread, batch 1, Winograd density 0.1 (experiments/results/bench_conv.md has the current figures):
the earlier numba kernels ran at 0.33-0.89x of ``F.conv2d`` and PyTorch's own sparse products
(FBGEMM ``embedding_bag``, MKL CSR) at 0.8-3x; both re-read and re-write the accumulator row for
every non-zero, and run the tile transforms as separate passes through memory. The C kernels keep
the accumulators in registers and the transforms in cache.

They are ON by default when the extension was built (``pip install`` builds it with the machine's C
compiler; ``setup.py`` says how). ``JOINTSPARSE_COMPILED=0`` forbids them, and a layer's
``compiled = False`` turns them off for that layer; then the PyTorch path runs, which gives the same
outputs to float tolerance (tests/test_nn_compiled.py). Threads: ``torch.get_num_threads()``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from ._patches import patches

try:
    from . import _csparse
except ImportError as error:  # pragma: no cover - exercised only where the extension was not built
    _csparse = None
    _IMPORT_ERROR = str(error)

_SWITCH = os.environ.get("JOINTSPARSE_COMPILED", "").strip().lower()

#: A spatial convolution whose output has at most this many columns (batch x height x width) runs
#: as im2col times CSR instead of the direct kernel. Measured (1 thread, batch 1 and 8, ResNet-18
#: and AlexNet shapes): im2col won only on 7x7 maps at batch 1 (2.6 vs 5.6 ms on 512 channels);
#: from 13x13, or at batch 8, the direct kernel won by 1.2-12x.
IM2COL_MAX_COLUMNS = 64

#: Largest stride the direct convolution takes (its table of stride phases is fixed-size).
MAX_STRIDE = 64

#: Largest Winograd tile side t = m + r - 1 the compiled kernel handles (its stack buffers).
MAX_TILE = 16

#: Why the compiled kernels cannot run, or None when they can.
UNAVAILABLE_REASON: str | None = None
if _csparse is None:
    UNAVAILABLE_REASON = f"the C extension jointsparse.nn._csparse is not built ({_IMPORT_ERROR}); reinstall with a C compiler (pip install -e .)"
elif _SWITCH in ("0", "false", "no", "off"):
    UNAVAILABLE_REASON = "JOINTSPARSE_COMPILED=0 in the environment"


class Unsupported(ValueError):
    """A layer or input the compiled kernels do not take (the PyTorch path runs it instead)."""


def accepts(x: torch.Tensor) -> bool:
    """True for an input the compiled kernels run on: a float32 CPU tensor outside autograd (they
    compute no gradient). Whether they are available is :func:`available`."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad)


def available() -> bool:
    """True when the compiled kernels can run (extension built, not forbidden by the environment)."""
    return UNAVAILABLE_REASON is None


def on_by_default() -> bool:
    """True when new sparse layers use the compiled kernels: whenever they are available."""
    return available()


def features() -> dict:
    """The extension's build: SIMD level ('avx+fma' or 'portable') and OpenMP, or {} if not built."""
    return dict(_csparse.features()) if _csparse is not None else {}


#: Bumped whenever the kernels change speed, so that timing caches (nn.choice) keyed on it start anew.
KERNEL_VERSION = "c1"


def describe() -> str:
    """One line naming the sparse kernels in use: 'compiled c1 (avx+fma, openmp)' or 'pytorch (why)'."""
    if not available():
        return f"pytorch ({UNAVAILABLE_REASON})"
    build = features()
    return f"compiled {KERNEL_VERSION} ({build['simd']}{', openmp' if build['openmp'] else ''})"


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, row_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int32 row pointers, int32 columns and float32 values; ``rows`` sorted (nonzero() order)."""
    indptr = torch.zeros(row_count + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(rows, minlength=row_count).cumsum(0)
    if int(indptr[-1]) > 2**31 - 1:
        raise Unsupported("too many non-zeros for the compiled kernels' 32-bit indices")
    return indptr.to(torch.int32).numpy(), cols.to(torch.int32).numpy(), vals.detach().to(torch.float32).contiguous().numpy()


def _bias(bias: torch.Tensor | None) -> np.ndarray | None:
    return None if bias is None else bias.detach().to(torch.float32).contiguous().numpy()


def _input(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


class WinogradKernel:
    """Compiled sparse Winograd convolution for weights [t*t, Cout, Cin/groups] (position-major)."""

    def __init__(self, winograd_weight: torch.Tensor, bias: torch.Tensor | None, m: int, r: int, padding: int, groups: int, bt: torch.Tensor, at: torch.Tensor) -> None:
        tt, cout, cin_pg = winograd_weight.shape
        t = m + r - 1
        if t > MAX_TILE:
            raise Unsupported(f"F({m}, {r}) has tiles of side {t}; the compiled kernel takes at most {MAX_TILE}")
        self.m, self.r, self.padding = m, r, padding
        self.cout, self.cin = cout, cin_pg * groups
        weight = winograd_weight.detach()
        p, k, c = weight.nonzero(as_tuple=True)  # rows (position, out channel) in CSR order
        global_c = (k // (cout // groups)) * cin_pg + c
        self.indptr, self.cols, self.vals = _csr(p * cout + k, global_c, weight[p, k, c], tt * cout)
        self.bias = _bias(bias)
        self.bt = bt.to(torch.float32).contiguous().numpy()
        self.at = at.to(torch.float32).contiguous().numpy()
        # The hand-vectorised F(2,3) transforms hard-code Lavin's matrices; use them only if these are.
        lavin_bt = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float32)
        lavin_at = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float32)
        self.lavin23 = (m, r) == (2, 3) and torch.equal(torch.from_numpy(self.bt), lavin_bt) and torch.equal(torch.from_numpy(self.at), lavin_at)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out_h = h + 2 * self.padding - self.r + 1
        out_w = w + 2 * self.padding - self.r + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"input {h}x{w} with padding {self.padding} is smaller than the {self.r}x{self.r} kernel")
        out = torch.empty(n, self.cout, out_h, out_w, dtype=torch.float32)
        _csparse.winograd_conv(
            _input(x), out.numpy(), self.bt, self.at, self.indptr, self.cols, self.vals, self.bias,
            n, self.cin, h, w, self.cout, out_h, out_w, self.m, self.r, self.padding, _threads(), int(self.lavin23),
        )
        return out


class DirectConvKernel:
    """Compiled direct sparse convolution for an ``nn.Conv2d`` weight [Cout, Cin/g, kh, kw]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], dilation: tuple[int, int], groups: int) -> None:
        cout, cin_pg, kh, kw = weight.shape
        if max(stride) > MAX_STRIDE:
            raise Unsupported(f"stride {stride}: the compiled kernel takes strides up to {MAX_STRIDE}")
        self.cout, self.cin, self.kernel_size, self.stride, self.dilation = cout, cin_pg * groups, (kh, kw), stride, dilation
        weight = weight.detach()
        co, c, ky, kx = weight.nonzero(as_tuple=True)
        global_c = (co // (cout // groups)) * cin_pg + c
        self.indptr, self.cin_of, self.vals = _csr(co, global_c, weight[co, c, ky, kx], cout)
        self.ky = ky.to(torch.int32).numpy()
        self.kx = kx.to(torch.int32).numpy()
        # the non-zeros' im2col rows (c, ky, kx), for small maps
        self.rows_of = ((global_c * kh + ky) * kw + kx).to(torch.int32).numpy()
        self.bias = _bias(bias)

    def __call__(self, x: torch.Tensor, pad: tuple[int, int, int, int] = (0, 0, 0, 0)) -> torch.Tensor:
        """Convolution of ``x`` [N, Cin, H, W] zero-padded by ``pad`` = (left, right, top, bottom)."""
        left, right, top, bottom = pad
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        out_h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
        out_w = (w + left + right - dw * (kw - 1) - 1) // sw + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"input {h + top + bottom}x{w + left + right} (after padding) is smaller than the dilated {kh}x{kw} kernel")
        if self.use_im2col(n, out_h, out_w):
            return self._im2col_conv(x, pad, out_h, out_w)
        # The kernel addresses its phase-split copy of one image with 32-bit offsets.
        reach_h, reach_w = dh * (kh - 1) // sh, dw * (kw - 1) // sw
        if self.cin * sh * sw * (out_h + reach_h + 1) * (out_w + 8 + reach_w) >= 2**31 - 1:
            raise Unsupported("input too large for the compiled kernel's 32-bit offsets")
        out = torch.empty(n, self.cout, out_h, out_w, dtype=torch.float32)
        _csparse.direct_conv(
            _input(x), out.numpy(), self.indptr, self.cin_of, self.ky, self.kx, self.vals, self.bias,
            n, self.cin, h, w, self.cout, out_h, out_w, sh, sw, dh, dw, top, left, _threads(),
        )
        return out

    @staticmethod
    def use_im2col(batch: int, out_h: int, out_w: int) -> bool:
        return batch * out_h * out_w <= IM2COL_MAX_COLUMNS

    def _im2col_conv(self, x: torch.Tensor, pad: tuple[int, int, int, int], out_h: int, out_w: int) -> torch.Tensor:
        """Small maps: im2col rows [(c, ky, kx)][(image, y, x)] padded to a multiple of 8 columns,
        times the CSR weights, so each non-zero sweeps the whole map in one contiguous run."""
        n = x.shape[0]
        if any(pad):
            x = F.pad(x, pad)
        view = patches(x.detach(), self.kernel_size, self.stride, self.dilation)
        columns = n * out_h * out_w
        ld = -(-columns // 8) * 8
        buffer = torch.empty(view.shape[0] * view.shape[1] * view.shape[2], ld, dtype=torch.float32)
        buffer[:, :columns].view(view.shape).copy_(view)
        buffer[:, columns:] = 0.0
        out = torch.empty(self.cout, ld, dtype=torch.float32)
        _csparse.csr_matmul(self.indptr, self.rows_of, self.vals, buffer.numpy(), out.numpy(), self.bias, self.cout, ld, ld, _threads())
        return out[:, :columns].view(self.cout, n, out_h, out_w).transpose(0, 1).contiguous()


class LinearKernel:
    """Compiled CSR fully connected product for a weight [out, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features = weight.shape[0]
        weight = weight.detach()
        rows, cols = weight.nonzero(as_tuple=True)
        self.indptr, self.cols, self.vals = _csr(rows, cols, weight[rows, cols], self.out_features)
        self.bias = _bias(bias)
        # Batch 1 is bound by the bytes per non-zero; a quantized layer (at most 256 distinct
        # values, as every decoded file has) with at most 65,536 inputs runs on 3 bytes per
        # non-zero: a 16-bit column and an 8-bit index into its values.
        self.shared = None
        table, codes = torch.unique(torch.from_numpy(self.vals), return_inverse=True)
        if table.numel() <= 256 and weight.shape[1] <= 65536:
            self.shared = (self.cols.astype(np.uint16), codes.to(torch.uint8).numpy(), table.contiguous().numpy())

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` [B, in] -> [B, out]."""
        batch = rows.shape[0]
        if batch == 1:
            xt = rows.detach().reshape(-1).contiguous()
            out = torch.empty(self.out_features, 1, dtype=torch.float32)
            if self.shared is not None:
                cols16, codes, table = self.shared
                _csparse.spmv_shared(self.indptr, cols16, codes, table, xt.numpy(), out.numpy(), self.bias, self.out_features, _threads())
                return out.t()
            _csparse.csr_matmul(self.indptr, self.cols, self.vals, xt.numpy(), out.numpy(), self.bias, self.out_features, 1, 1, _threads())
            return out.t()
        xt = rows.detach().t().contiguous()  # [in, B]: each non-zero scales one contiguous row
        out = torch.empty(self.out_features, batch, dtype=torch.float32)
        _csparse.csr_matmul(self.indptr, self.cols, self.vals, xt.numpy(), out.numpy(), self.bias, self.out_features, batch, batch, _threads())
        return out.t()
