"""Weight quantization of the surviving (non-zero) weights: k-means and universal (dithered uniform).

Every compressed tensor becomes a :class:`QuantizedLayer`: the flat positions of its non-zeros, one
codebook index per non-zero, and a float32 codebook. Pruned weights are not in the codebook; they
are the implicit, exact zero (SPEC section 4), so they stay zero through fine-tuning and decoding.

k-means runs an exact 1-D Lloyd iteration on the sorted values: cluster boundaries are midpoints
between neighbouring centroids, so each cluster is a contiguous run of the sorted array and its
mean comes from two prefix-sum look-ups. One iteration costs O(K log n), not O(n K).

Universal quantization draws a dither ``u_i ~ U[-D/2, D/2)`` from a seeded generator whose bit
stream is fixed by its algorithm (numpy's ``PCG64`` raw output, see docs/format.md), so the decoder
regenerates exactly the same ``u`` on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from ..layers import prunable_layers, resolve_per_layer

__all__ = [
    "QUANTIZERS",
    "DEFAULT_CONV_BITS",
    "DEFAULT_LINEAR_BITS",
    "MAX_BITS",
    "QuantizedLayer",
    "dither",
    "kmeans_1d",
    "quantize_weight",
    "quantize_model",
    "compressible_layers",
    "layer_bits",
    "index_dtype",
]

QUANTIZERS = ("kmeans", "universal")
DEFAULT_CONV_BITS = 6
DEFAULT_LINEAR_BITS = 5
MAX_BITS = 16
_KMEANS_MAX_ITER = 300
_KMEANSPP_SAMPLE = 20_000
_UNIT_24 = np.float32(2.0**-24)


def index_dtype(bits: int) -> np.dtype:
    """Storage type of codebook indices: uint8 up to 8 bits, uint16 above."""
    return np.dtype(np.uint8) if bits <= 8 else np.dtype(np.uint16)


@dataclass
class QuantizedLayer:
    """One quantized weight tensor.

    ``positions``: ascending flat (row-major) indices of the non-zero weights, int64.
    ``indices``: codebook index of each non-zero, uint8 (bits <= 8) or uint16.
    ``codebook``: float32 values of the non-zero codes (at most ``2**bits - 1`` entries).
    For ``quantizer == "universal"`` a non-zero weight is ``codebook[index] - u`` with the dither
    ``u`` regenerated from ``dither_seed`` and ``dither_step``; for k-means it is ``codebook[index]``.
    """

    shape: tuple[int, ...]
    positions: np.ndarray
    indices: np.ndarray
    codebook: np.ndarray
    quantizer: str
    bits: int
    kind: str = "conv"
    dither_seed: Optional[int] = None
    dither_step: Optional[float] = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nnz(self) -> int:
        return int(self.positions.size)

    def dither(self) -> np.ndarray:
        """The per-non-zero dither ``u`` (float32); zeros for k-means."""
        if self.quantizer != "universal":
            return np.zeros(self.nnz, dtype=np.float32)
        assert self.dither_seed is not None and self.dither_step is not None
        return dither(self.dither_seed, self.nnz, self.dither_step)

    def values(self) -> np.ndarray:
        """The decoded non-zero values (float32), in position order."""
        shared = self.codebook.astype(np.float32, copy=False)[self.indices.astype(np.intp)]
        if self.quantizer == "universal":
            return shared - self.dither()
        return shared

    def dequantize(self) -> torch.Tensor:
        """The dense float32 weight tensor: decoded values at ``positions``, exact zeros elsewhere."""
        dense = np.zeros(self.numel, dtype=np.float32)
        dense[self.positions] = self.values()
        return torch.from_numpy(dense.reshape(self.shape))


def dither(seed: int, count: int, step: float) -> np.ndarray:
    """``count`` dither values ``(U - 1/2) * step`` in float32, with ``U`` in [0, 1) on a 2^-24 grid.

    ``U_i = (raw_i >> 40) * 2^-24`` where ``raw_i`` is the i-th 64-bit output of numpy's
    ``PCG64(seed)`` (seeded through ``SeedSequence(seed)``). Raw bit-generator output is part of
    numpy's stability guarantee, unlike ``Generator.random``, so decoding is bit-exact everywhere.
    """
    if count == 0:
        return np.zeros(0, dtype=np.float32)
    raw = np.random.PCG64(int(seed)).random_raw(int(count))
    unit = (raw >> np.uint64(40)).astype(np.float32) * _UNIT_24
    return (unit - np.float32(0.5)) * np.float32(step)


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", seed: int = 0, max_iter: int = _KMEANS_MAX_ITER) -> np.ndarray:
    """Exact 1-D Lloyd k-means; returns the sorted centroids of the non-empty clusters (float64).

    ``init="linear"`` spaces the initial centroids evenly over [min, max] (Han et al.);
    ``init="kmeans++"`` seeds them by D^2 sampling on a subsample of at most 20,000 values.
    With at most ``k`` distinct values the distinct values themselves are returned (zero error).
    """
    if k < 1:
        raise ValueError(f"k-means needs k >= 1, got {k}")
    if init not in ("linear", "kmeans++"):
        raise ValueError(f"unknown k-means init {init!r}; use 'linear' or 'kmeans++'")
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        return x
    if not np.isfinite(x[0]) or not np.isfinite(x[-1]):
        raise ValueError("cannot quantize non-finite weights (NaN or inf)")
    distinct = np.concatenate(([True], x[1:] != x[:-1]))
    if int(distinct.sum()) <= k:
        return x[distinct]
    if init == "linear":
        centroids = np.linspace(x[0], x[-1], k)
    else:
        centroids = _kmeanspp_init(x, k, seed)
    prefix = np.concatenate(([0.0], np.cumsum(x)))
    previous_cuts = None
    counts = np.zeros(k, dtype=np.int64)
    for _ in range(max_iter):
        # Each cluster is the run of sorted values between two neighbouring midpoints.
        cuts = np.searchsorted(x, (centroids[:-1] + centroids[1:]) / 2, side="right")
        edges = np.concatenate(([0], cuts, [x.size]))
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        # An empty cluster keeps its centroid; in 1-D that cannot break the ordering.
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if previous_cuts is not None and np.array_equal(cuts, previous_cuts):
            break
        previous_cuts = cuts
    return centroids[counts > 0]


def _kmeanspp_init(x_sorted: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    sample = x_sorted if x_sorted.size <= _KMEANSPP_SAMPLE else rng.choice(x_sorted, _KMEANSPP_SAMPLE, replace=False)
    chosen = [sample[rng.integers(sample.size)]]
    nearest = (sample - chosen[0]) ** 2
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:  # fewer distinct sample values than k: fill the rest linearly
            break
        pick = sample[rng.choice(sample.size, p=nearest / total)]
        chosen.append(pick)
        nearest = np.minimum(nearest, (sample - pick) ** 2)
    if len(chosen) < k:
        chosen.extend(np.linspace(x_sorted[0], x_sorted[-1], k - len(chosen)))
    return np.sort(np.asarray(chosen, dtype=np.float64))


def _assign_nearest(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of a sorted codebook for every value (midpoint boundaries)."""
    bounds = (codebook[:-1].astype(np.float64) + codebook[1:].astype(np.float64)) / 2
    return np.searchsorted(bounds, values.astype(np.float64), side="left")


def _check_bits(bits: int, quantizer: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
    if quantizer == "universal" and bits < 2:
        raise ValueError("universal quantization needs bits >= 2 (1 bit leaves a single level)")


def quantize_weight(
    weight: torch.Tensor,
    quantizer: str = "kmeans",
    bits: int = DEFAULT_CONV_BITS,
    *,
    kind: str = "conv",
    seed: int = 0,
    init: str = "linear",
) -> QuantizedLayer:
    """Quantize one weight tensor; its exact zeros are the pruned weights and stay zero.

    k-means: ``2**bits - 1`` non-zero centroids. Universal: ``L = 2**bits - 1`` symmetric levels
    ``q * D`` for ``q`` in ``[-(L-1)/2, (L-1)/2]`` with ``D = 2 max|w| / (L - 1)``, which is the
    smallest step for which ``(w + u) / D`` never rounds outside the levels.
    """
    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {quantizer!r}; use one of {QUANTIZERS}")
    _check_bits(bits, quantizer)
    flat = weight.detach().to(device="cpu", dtype=torch.float32).contiguous().reshape(-1).numpy()
    if not np.isfinite(flat).all():
        raise ValueError("cannot quantize non-finite weights (NaN or inf)")
    positions = np.flatnonzero(flat).astype(np.int64)
    nonzero = flat[positions]
    levels = (1 << bits) - 1
    shape = tuple(int(s) for s in weight.shape)
    if quantizer == "kmeans":
        centroids = np.unique(kmeans_1d(nonzero, levels, init=init, seed=seed).astype(np.float32))
        indices = _assign_nearest(nonzero, centroids) if nonzero.size else np.zeros(0, dtype=np.int64)
        return QuantizedLayer(shape, positions, indices.astype(index_dtype(bits)), centroids, "kmeans", int(bits), kind)
    half = (levels - 1) // 2
    peak = float(np.abs(nonzero).max()) if nonzero.size else 0.0
    step = float(np.float32(2.0 * peak / (levels - 1))) if peak > 0 else 1.0
    if step == 0.0 or not np.isfinite(step):  # a peak below float32's range: any positive step works
        step = float(np.finfo(np.float32).tiny)
    u = dither(seed, nonzero.size, step)
    q = np.rint((nonzero.astype(np.float64) + u) / step)
    # Clipping only bites on exact .5 ties at the ends (and float32 rounding of the step).
    indices = (np.clip(q, -half, half) + half).astype(index_dtype(bits))
    codebook = ((np.arange(levels, dtype=np.float64) - half) * np.float64(np.float32(step))).astype(np.float32)
    return QuantizedLayer(shape, positions, indices, codebook, "universal", int(bits), kind, int(seed), step)


def compressible_layers(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{"<module>.weight": (module, "conv"|"linear")}`` for every prunable layer, in model order."""
    return {
        f"{name}.weight" if name else "weight": (module, "conv" if isinstance(module, nn.Conv2d) else "linear")
        for name, module in prunable_layers(model).items()
        if isinstance(getattr(module, "weight", None), torch.Tensor)
    }


#: Bits for every layer (an int), or per layer by module name or glob (see :mod:`jointsparse.layers`).
BitsSpec = Union[None, int, Mapping[str, int]]


def layer_bits(model: nn.Module, bits: BitsSpec = None, *, conv_bits: int = DEFAULT_CONV_BITS, linear_bits: int = DEFAULT_LINEAR_BITS) -> dict[str, int]:
    """Bits per compressed layer (keyed by module name): ``bits`` where it names the layer, else
    ``conv_bits`` or ``linear_bits`` by the layer's kind."""
    layers = {name.removesuffix(".weight"): kind for name, (_, kind) in compressible_layers(model).items()}
    chosen = dict.fromkeys(layers) if bits is None else resolve_per_layer(bits, layers, "bits", default=None)
    return {name: (conv_bits if kind == "conv" else linear_bits) if chosen[name] is None else chosen[name] for name, kind in layers.items()}


def quantize_model(
    model: nn.Module,
    quantizer: str = "kmeans",
    bits: BitsSpec = None,
    seed: int = 0,
    *,
    conv_bits: int = DEFAULT_CONV_BITS,
    linear_bits: int = DEFAULT_LINEAR_BITS,
    init: str = "linear",
) -> dict[str, QuantizedLayer]:
    """Quantize every Conv2d and Linear ``.weight`` of ``model`` (keys are fully qualified names).

    ``bits``: None (``conv_bits`` for convs, ``linear_bits`` for linear layers), one int for all,
    or a dict keyed by module name or glob (``"fc"``, ``"conv*"``; see :func:`layer_bits`);
    layers no key matches get the default for their kind. Layer ``i`` uses seed ``seed + i`` (dither and
    k-means++ sampling). The model is not modified.
    """
    layers = compressible_layers(model)
    chosen = layer_bits(model, bits, conv_bits=conv_bits, linear_bits=linear_bits)
    quantized = {}
    for index, (name, (module, kind)) in enumerate(layers.items()):
        quantized[name] = quantize_weight(module.weight, quantizer, chosen[name.removesuffix(".weight")], kind=kind, seed=seed + index, init=init)
    return quantized
