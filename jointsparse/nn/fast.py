"""Compiled stand-ins for the dense layers between the convolutions: max pooling and local response
normalisation.

Once the convolutions run sparse, these dominate what is left: measured on the 2-core AMD EPYC,
torch 2.13.0, one thread, batch 1, PyTorch's eager kernels spent 7.7 ms in ResNet-18's stem max
pool (64 x 112 x 112) and 14 ms in AlexNet's two LRNs, against 14 ms for all of AlexNet's
decoded sparse layers. The compiled kernels compute the same functions (to float rounding; the
tests compare them with PyTorch's) and run only in inference (no autograd) on contiguous float32
CPU tensors; anything else falls back to the PyTorch module they wrap.

:func:`swap_fast_layers` puts them into a model; ``jointsparse.nn.deploy`` does so for every
domain unless asked not to. Benchmarks that quote a speed-up over dense PyTorch also report the
dense model with these same layers swapped, so the share due to sparsity stays visible.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _compiled

__all__ = ["FastMaxPool2d", "FastLocalResponseNorm", "swap_fast_layers"]


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _applies(x: torch.Tensor) -> bool:
    return _compiled.available() and x.dim() == 4 and _compiled.accepts(x)


class FastMaxPool2d(nn.Module):
    """``nn.MaxPool2d`` (dilation 1, no indices) by the compiled kernel; the module it wraps otherwise."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        if not can_swap(pool):
            raise ValueError(f"{pool} has dilation or returns indices; the compiled max pool does neither")
        self.pool = pool
        self.kernel_size = _pair(pool.kernel_size)
        self.stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = _pair(pool.padding)
        self.ceil_mode = pool.ceil_mode

    def _out_size(self, size: int, k: int, s: int, p: int) -> int:
        # torch's rule, ceil mode included: the last window must start inside the padded input
        span = size + 2 * p - k
        out = (span + (s - 1 if self.ceil_mode else 0)) // s + 1
        if self.ceil_mode and (out - 1) * s >= size + p:
            out -= 1
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _applies(x):
            return self.pool(x)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h, out_w = self._out_size(h, kh, sh, ph), self._out_size(w, kw, sw, pw)
        if out_h < 1 or out_w < 1:
            return self.pool(x)  # let PyTorch raise its own error
        out = torch.empty(n, c, out_h, out_w, dtype=torch.float32)
        _compiled._csparse.max_pool2d(
            x.detach().contiguous().numpy(), out.numpy(), n * c, h, w, kh, kw, sh, sw, ph, pw, out_h, out_w, _compiled._threads()
        )
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}, compiled={_compiled.available()}"


class FastLocalResponseNorm(nn.Module):
    """``nn.LocalResponseNorm`` by the compiled kernel (4-D inputs); the module it wraps otherwise."""

    def __init__(self, norm: nn.LocalResponseNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _applies(x):
            return self.norm(x)
        n, c, h, w = x.shape
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        norm = self.norm
        _compiled._csparse.local_response_norm(
            x.detach().contiguous().numpy(), out.numpy(), n, c, h * w, norm.size, float(norm.alpha), float(norm.beta), float(norm.k), _compiled._threads()
        )
        return out

    def extra_repr(self) -> str:
        return f"{self.norm.extra_repr()}, compiled={_compiled.available()}"


def can_swap(module: nn.Module) -> bool:
    """True for the modules :func:`swap_fast_layers` replaces."""
    if isinstance(module, nn.MaxPool2d):
        return not module.return_indices and _pair(module.dilation) == (1, 1)
    return isinstance(module, nn.LocalResponseNorm) and module.size >= 1


def swap_fast_layers(model: nn.Module) -> list[str]:
    """Replace every eligible ``nn.MaxPool2d`` and ``nn.LocalResponseNorm`` in ``model`` (in place)
    by its compiled stand-in; returns their names. Nothing is swapped where the compiled kernels
    are unavailable."""
    if not _compiled.available():
        return []
    swapped = []
    for name, module in list(model.named_modules()):
        if not name or not can_swap(module):
            continue
        replacement = FastMaxPool2d(module) if isinstance(module, nn.MaxPool2d) else FastLocalResponseNorm(module)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
        swapped.append(name)
    return swapped
