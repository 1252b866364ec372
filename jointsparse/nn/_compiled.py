"""Compiled (numba) CPU kernels for the sparse runtime layers (SPEC section 11). Opt-in.

Three kernels, each a loop nest whose innermost loop runs along a contiguous row so that LLVM
vectorises it:

- ``winograd_products``: the sparse Winograd products and the output transform, fused per chunk
  of tiles (the input transform stays one dense PyTorch product).
- ``direct_conv``: direct sparse spatial convolution (SkimCaffe): per output channel, a list of
  (input channel, ky, kx, value); each non-zero adds a shifted input row into an output row.
- ``csr_rows_times``: a sparse fully connected layer, CSR rows times a dense [K, B] matrix.

They are OFF by default: measured on the 2-core AMD EPYC (AVX2) with torch 2.13.0, one thread,
they were 1.2-5x slower than the PyTorch path (FBGEMM ``embedding_bag`` / MKL CSR products) on
the AlexNet and ResNet-18 shapes (see experiments/results/bench_conv.md). The per-non-zero
overhead of an axpy over a short row (16-49 tiles at batch 1) dominates: LLVM re-checks aliasing
and handles a remainder on every pass, where FBGEMM's JIT keeps the accumulators in registers.
Turn them on with ``JOINTSPARSE_COMPILED=1`` or per layer with ``layer.compiled = True``;
``JOINTSPARSE_COMPILED=0`` forbids them. numba compiles at first call (seconds per kernel;
``cache=True`` keeps the machine code beside this module, or under ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is an optional extra (pip install 'jointsparse[compiled]')
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None

_SWITCH = os.environ.get("JOINTSPARSE_COMPILED", "").strip().lower()

#: Why the compiled kernels cannot run, or None when they can.
UNAVAILABLE_REASON: str | None = None
if numba is None:
    UNAVAILABLE_REASON = "numba is not installed (pip install 'jointsparse[compiled]')"
elif _SWITCH in ("0", "false", "no", "off"):
    UNAVAILABLE_REASON = "JOINTSPARSE_COMPILED=0 in the environment"

if numba is not None and "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's OpenMP pool beside torch's own OpenMP pool cost 1-10 ms per parallel call here
    # (two spinning pools on 2 cores); its plain work queue cost 0.2-0.5 ms. A user who sets
    # NUMBA_THREADING_LAYER keeps their choice.
    numba.config.THREADING_LAYER = "workqueue"


def available() -> bool:
    """True when the compiled kernels can run (numba importable, not forbidden by the environment)."""
    return UNAVAILABLE_REASON is None


def on_by_default() -> bool:
    """True when new layers use the compiled kernels (``JOINTSPARSE_COMPILED=1``)."""
    return available() and _SWITCH in ("1", "true", "yes", "on")


def set_threads(count: int) -> None:
    """Cap numba's thread pool at ``count`` (it cannot grow past the pool it started with)."""
    numba.set_num_threads(max(1, min(int(count), numba.config.NUMBA_NUM_THREADS)))


if numba is not None:

    @njit(cache=True, fastmath=True, inline="always")
    def _sparse_rows_sum(acc, rows, cols, vals, start, stop, offset, width):  # pragma: no cover - compiled
        """``acc[:width] = sum_nz vals[nz] * rows[cols[nz], offset:offset+width]``, nz in [start, stop).

        Four non-zeros per pass over ``acc``: one accumulator update per four products, so the
        loop is bound by loads and FMAs rather than the store-to-load latency of ``acc``
        (measured 1.3-1.7x faster than one non-zero per pass for 16-128 wide rows).
        """
        for j in range(width):
            acc[j] = 0.0
        nz = start
        while nz + 4 <= stop:
            w0, w1, w2, w3 = vals[nz], vals[nz + 1], vals[nz + 2], vals[nz + 3]
            s0 = rows[cols[nz], offset:offset + width]
            s1 = rows[cols[nz + 1], offset:offset + width]
            s2 = rows[cols[nz + 2], offset:offset + width]
            s3 = rows[cols[nz + 3], offset:offset + width]
            for j in range(width):
                acc[j] += w0 * s0[j] + w1 * s1[j] + w2 * s2[j] + w3 * s3[j]
            nz += 4
        while nz < stop:
            w0 = vals[nz]
            s0 = rows[cols[nz], offset:offset + width]
            for j in range(width):
                acc[j] += w0 * s0[j]
            nz += 1


    @njit(cache=True, fastmath=True)
    def _winograd_job(job, tid, v, at, indptr, cols, vals, bias, out, n_h, n_w, chunk_tiles, cout_chunks, acc_buf, half_buf):  # pragma: no cover - compiled
        """One job of ``winograd_products``: one chunk of tiles, one chunk of output channels."""
        tt, _, tiles_total = v.shape
        m, t = at.shape
        cout, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
        co_chunk = (cout + cout_chunks - 1) // cout_chunks
        j0 = (job // cout_chunks) * chunk_tiles
        part = job % cout_chunks
        tiles = min(tiles_total, j0 + chunk_tiles) - j0
        acc = acc_buf[tid]
        half = half_buf[tid]
        per_image = n_h * n_w
        for co in range(part * co_chunk, min(cout, (part + 1) * co_chunk)):
            for p in range(tt):
                row = co * tt + p
                _sparse_rows_sum(acc[p], v[p], cols, vals, indptr[row], indptr[row + 1], j0, tiles)
            # A^T M A: first along a (vectorised over the tiles), then along b per tile.
            for i in range(m):
                for b in range(t):
                    hb = half[i, b]
                    for j in range(tiles):
                        hb[j] = 0.0
                    for a in range(t):
                        coef = at[i, a]
                        if coef != 0.0:
                            src = acc[a * t + b]
                            for j in range(tiles):
                                hb[j] += coef * src[j]
            bco = bias[co]
            for j in range(tiles):
                tile = j0 + j
                img = tile // per_image
                ty = (tile % per_image) // n_w
                tx = tile % n_w
                for i in range(m):
                    y = ty * m + i
                    if y < out_h:
                        for jj in range(m):
                            x = tx * m + jj
                            if x < out_w:
                                total = bco
                                for b in range(t):
                                    total += at[jj, b] * half[i, b, j]
                                out[img, co, y, x] = total

    @njit(cache=True, fastmath=True)
    def winograd_products_serial(jobs, v, at, indptr, cols, vals, bias, out, n_h, n_w, chunk_tiles, cout_chunks, acc_buf, half_buf):  # pragma: no cover - compiled
        """``winograd_products`` on the calling thread (no parallel launch)."""
        for job in range(jobs):
            _winograd_job(job, 0, v, at, indptr, cols, vals, bias, out, n_h, n_w, chunk_tiles, cout_chunks, acc_buf, half_buf)

    @njit(cache=True, fastmath=True, parallel=True)
    def winograd_products_parallel(jobs, v, at, indptr, cols, vals, bias, out, n_h, n_w, chunk_tiles, cout_chunks, acc_buf, half_buf):  # pragma: no cover - compiled
        """Sparse Winograd products and output transform, fused: ``out[n, co] = A^T (sum_c W[p, co, c]
        V[p, c]) A`` per tile, written straight into the output.

        v [t*t, Cin, tiles] (tiles = N*nH*nW, row-major per image) holds the transformed input;
        at [m, t] = A^T; CSR over rows ``co*t*t + p`` with global input channels; bias [Cout];
        out [N, Cout, Hout, Wout], overwritten. Jobs = tile chunks x output-channel chunks; the
        ``*_buf`` arrays are per-thread scratch (first axis = numba thread id), passed in because
        allocating them per call cost more than the convolution here (page faults in a VM).
        """
        for job in prange(jobs):
            _winograd_job(job, numba.get_thread_id(), v, at, indptr, cols, vals, bias, out, n_h, n_w, chunk_tiles, cout_chunks, acc_buf, half_buf)

    @njit(cache=True, fastmath=True)
    def _direct_job(job, xpad, indptr, cin_of, dy_of, dx_of, vals, bias, out, stride_h, stride_w):  # pragma: no cover - compiled
        """Direct sparse convolution of one (image, output channel): every non-zero (input
        channel, dy, dx, value) in ``indptr[co]:indptr[co+1]`` adds value x the input rows shifted
        by (dy, dx) into the output rows. dy/dx include the dilation; channels are global."""
        cout, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
        img = job // cout
        co = job % cout
        plane = out[img, co]
        bco = bias[co]
        for y in range(out_h):
            for x in range(out_w):
                plane[y, x] = bco
        for nz in range(indptr[co], indptr[co + 1]):
            w = vals[nz]
            src = xpad[img, cin_of[nz]]
            dy = dy_of[nz]
            dx = dx_of[nz]
            if stride_w == 1:
                for y in range(out_h):
                    srow = src[y * stride_h + dy]
                    orow = plane[y]
                    for x in range(out_w):
                        orow[x] += w * srow[dx + x]
            else:
                for y in range(out_h):
                    srow = src[y * stride_h + dy]
                    orow = plane[y]
                    for x in range(out_w):
                        orow[x] += w * srow[dx + x * stride_w]

    @njit(cache=True, fastmath=True)
    def direct_conv_serial(xpad, indptr, cin_of, dy_of, dx_of, vals, bias, out, stride_h, stride_w):  # pragma: no cover - compiled
        for job in range(out.shape[0] * out.shape[1]):
            _direct_job(job, xpad, indptr, cin_of, dy_of, dx_of, vals, bias, out, stride_h, stride_w)

    @njit(cache=True, fastmath=True, parallel=True)
    def direct_conv_parallel(xpad, indptr, cin_of, dy_of, dx_of, vals, bias, out, stride_h, stride_w):  # pragma: no cover - compiled
        for job in prange(out.shape[0] * out.shape[1]):
            _direct_job(job, xpad, indptr, cin_of, dy_of, dx_of, vals, bias, out, stride_h, stride_w)

    @njit(cache=True, fastmath=True)
    def _csr_row(row, indptr, cols, vals, xt, bias, out):  # pragma: no cover - compiled
        """``out[row, :] = bias[row] + sum_nz vals[nz] * xt[cols[nz], :]`` (CSR times dense [K, B])."""
        batch = out.shape[1]
        if batch == 1:
            s = np.float32(0.0)
            for nz in range(indptr[row], indptr[row + 1]):
                s += vals[nz] * xt[cols[nz], 0]
            out[row, 0] = bias[row] + s
        else:
            _sparse_rows_sum(out[row], xt, cols, vals, indptr[row], indptr[row + 1], 0, batch)
            for b in range(batch):
                out[row, b] += bias[row]

    @njit(cache=True, fastmath=True)
    def csr_rows_times_serial(indptr, cols, vals, xt, bias, out):  # pragma: no cover - compiled
        for row in range(out.shape[0]):
            _csr_row(row, indptr, cols, vals, xt, bias, out)

    @njit(cache=True, fastmath=True, parallel=True)
    def csr_rows_times_parallel(indptr, cols, vals, xt, bias, out):  # pragma: no cover - compiled
        for row in prange(out.shape[0]):
            _csr_row(row, indptr, cols, vals, xt, bias, out)


# ---- torch-facing wrappers: build the index arrays once per layer, then run per call ----

import math  # noqa: E402
import threading  # noqa: E402

import torch  # noqa: E402

from ..transforms import extract_tiles  # noqa: E402

#: Bytes of transformed input a Winograd tile block may hold (L2 is 512 KiB per core here).
WINOGRAD_BLOCK_BYTES = 384 * 1024


def _threads() -> int:
    threads = torch.get_num_threads()
    set_threads(threads)
    return max(1, min(threads, numba.config.NUMBA_NUM_THREADS))


def _bias_array(bias: torch.Tensor | None, count: int) -> np.ndarray:
    if bias is None:
        return np.zeros(count, np.float32)
    return bias.detach().to(torch.float32).contiguous().numpy()


def _csr_arrays(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, row_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indptr = torch.zeros(row_count + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(rows, minlength=row_count).cumsum(0)
    return indptr.numpy(), cols.to(torch.int32).numpy(), vals.detach().to(torch.float32).contiguous().numpy()


class WinogradKernel:
    """Compiled sparse Winograd convolution for weights [t*t, Cout, Cin/groups] (position-major).

    The input transform runs in PyTorch as one dense product with kron(B^T, B^T) (oneDNN/MKL,
    tens of GFLOP/s): written as numba loops over 4x4 tiles it measured 2-3x slower than the
    whole sparse product. The sparse products and the output transform are one compiled loop
    nest per chunk of tiles, so the products never go through memory.
    """

    def __init__(self, winograd_weight: torch.Tensor, bias: torch.Tensor | None, m: int, r: int, padding: int, groups: int, bt: torch.Tensor, at: torch.Tensor) -> None:
        tt, cout, cin_pg = winograd_weight.shape
        self.m, self.r, self.t, self.padding = m, r, int(round(math.sqrt(tt))), padding
        self.cout, self.cin = cout, cin_pg * groups
        per_co = winograd_weight.detach().permute(1, 0, 2)  # [Cout, t*t, Cin/g]
        co, p, c = per_co.nonzero(as_tuple=True)
        global_c = (co // (cout // groups)) * cin_pg + c
        self.indptr, self.cols, self.vals = _csr_arrays(co * tt + p, global_c, per_co[co, p, c], cout * tt)
        self.bias = _bias_array(bias, cout)
        self.input_kron = torch.kron(bt, bt).to(torch.float32)
        self.at = at.to(torch.float32).contiguous().numpy()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m, r, t = self.m, self.r, self.t
        tiles, (out_h, out_w) = extract_tiles(x.detach(), m, r, self.padding)
        n, c, n_h, n_w = tiles.shape[:4]
        count = n * n_h * n_w
        columns = tiles.permute(4, 5, 1, 0, 2, 3).reshape(t * t, c * count)
        v = (self.input_kron @ columns).view(t * t, c, count)
        # Tile chunks sized so one chunk of V (t*t x Cin x chunk) stays in L2.
        chunk = max(8, min(count, WINOGRAD_BLOCK_BYTES // (t * t * c * 4)))
        jobs = -(-count // chunk)
        threads = _threads()
        cout_chunks = 1 if jobs >= threads else min(self.cout, -(-threads // jobs))
        jobs *= cout_chunks
        slots = numba.config.NUMBA_NUM_THREADS
        acc_buf = _scratch.array("wa", (slots, t * t, chunk))
        half_buf = _scratch.array("wh", (slots, m, t, chunk))
        out = torch.empty(n, self.cout, out_h, out_w, dtype=torch.float32)
        kernel = winograd_products_serial if threads == 1 else winograd_products_parallel
        kernel(jobs, v.numpy(), self.at, self.indptr, self.cols, self.vals, self.bias, out.numpy(), n_h, n_w, chunk, cout_chunks, acc_buf, half_buf)
        return out


class _Scratch(threading.local):
    """Per-thread reusable buffers. A fresh multi-megabyte array per call cost more than the
    convolution itself here (page faults, measured 4-5 ms per call in this VM), so buffers grow
    once and are reused; one set per calling thread keeps concurrent callers apart."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        flat = self.arrays.get(key)
        if flat is None or flat.size < size:
            flat = self.arrays[key] = np.empty(size, np.float32)
        return flat[:size].reshape(shape)

    def padded(self, x: torch.Tensor, before: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """``x`` [N, C, H, W] copied into a zero buffer [N, C, *size] at offset ``before``."""
        n, c, h, w = x.shape
        shape = (n, c, *size)
        buf = self.array("pad", shape)
        top, left = before
        # Zero only the border: the interior is overwritten by the copy.
        buf[:, :, :top] = 0.0
        buf[:, :, top + h:] = 0.0
        buf[:, :, top:top + h, :left] = 0.0
        buf[:, :, top:top + h, left + w:] = 0.0
        buf[:, :, top:top + h, left:left + w] = x.detach().numpy()
        return buf


_scratch = _Scratch()


class DirectConvKernel:
    """Compiled direct sparse convolution for an ``nn.Conv2d`` weight [Cout, Cin/g, kh, kw]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], dilation: tuple[int, int], groups: int) -> None:
        cout, cin_pg, kh, kw = weight.shape
        self.cout, self.kernel_size, self.stride, self.dilation = cout, (kh, kw), stride, dilation
        co, c, ky, kx = weight.detach().nonzero(as_tuple=True)
        global_c = (co // (cout // groups)) * cin_pg + c
        self.indptr, self.cin_of, self.vals = _csr_arrays(co, global_c, weight.detach()[co, c, ky, kx], cout)
        self.dy = (ky * dilation[0]).to(torch.int32).numpy()
        self.dx = (kx * dilation[1]).to(torch.int32).numpy()
        self.bias = _bias_array(bias, cout)

    def __call__(self, x: torch.Tensor, pad: tuple[int, int, int, int] = (0, 0, 0, 0)) -> torch.Tensor:
        """Convolution of ``x`` [N, Cin, H, W] zero-padded by ``pad`` = (left, right, top, bottom)."""
        left, right, top, bottom = pad
        h, w = x.shape[2] + top + bottom, x.shape[3] + left + right
        n = x.shape[0]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        out_h = (h - dh * (kh - 1) - 1) // sh + 1
        out_w = (w - dw * (kw - 1) - 1) // sw + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"input {h}x{w} (after padding) is smaller than the dilated {kh}x{kw} kernel")
        out = torch.empty(n, self.cout, out_h, out_w, dtype=torch.float32)
        kernel = direct_conv_serial if _threads() == 1 else direct_conv_parallel
        xpad = _scratch.padded(x, (top, left), (h, w)) if any(pad) else x.detach().contiguous().numpy()
        kernel(xpad, self.indptr, self.cin_of, self.dy, self.dx, self.vals, self.bias, out.numpy(), sh, sw)
        return out


class LinearKernel:
    """Compiled CSR fully connected product for a weight [out, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features = weight.shape[0]
        rows, cols = weight.detach().nonzero(as_tuple=True)
        self.indptr, self.cols, self.vals = _csr_arrays(rows, cols, weight.detach()[rows, cols], self.out_features)
        self.bias = _bias_array(bias, self.out_features)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` [B, in] -> [B, out]."""
        xt = rows.t().contiguous()
        out = torch.empty(self.out_features, rows.shape[0], dtype=torch.float32)
        kernel = csr_rows_times_serial if _threads() == 1 else csr_rows_times_parallel
        kernel(self.indptr, self.cols, self.vals, xt.numpy(), self.bias, out.numpy())
        return out.t()
