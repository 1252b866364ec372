"""Multiplication counts per layer in every deployment (SPEC section 6).

The counts are per image. Conv and linear layers are found by module type; their output sizes come
from one forward pass of a zero tensor, so any architecture works without a shape table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Iterable, Mapping

import torch
from torch import nn

from .transforms import filter_to_winograd, has_winograd_form, tile_count
from .transforms.cook_toom import cook_toom


@dataclass(frozen=True)
class TransformOps:
    """Arithmetic of one tile's transforms for one channel, as a sparse-Winograd runtime performs
    them: each 2-D transform applied separably (``B^T d B``: ``B^T`` on the t columns, then on
    the t rows; ``A^T Y A``: ``A^T`` on the t columns, then on the m rows), every 1-D application
    a matrix-vector product that skips zero entries. Multiplications are by entries other than
    0 and +-1 (powers of two count: in floating point they are multiplications); additions are
    ``non-zeros - 1`` per output element. No common subexpressions are shared between rows, so
    hand-scheduled kernels can do somewhat better; this is the plain, reproducible convention."""

    input_mults: int
    input_adds: int
    output_mults: int
    output_adds: int


def _matvec_ops(matrix: list) -> tuple[int, int]:
    mults = sum(1 for row in matrix for v in row if v not in (0, 1, -1))
    adds = sum(max(sum(1 for v in row if v != 0) - 1, 0) for row in matrix)
    return mults, adds


@lru_cache(maxsize=None)
def transform_ops(m: int, r: int) -> TransformOps:
    """Per tile and channel: the input transform's and the output transform's multiplications
    and additions for F(m x m, r x r) (see :class:`TransformOps` for the convention)."""
    at, _, bt = cook_toom(m, r)
    t = m + r - 1
    in_mults, in_adds = _matvec_ops(bt)
    out_mults, out_adds = _matvec_ops(at)
    return TransformOps(2 * t * in_mults, 2 * t * in_adds, (t + m) * out_mults, (t + m) * out_adds)


@dataclass
class LayerCost:
    """One conv or linear layer's weight count and multiplications in each deployment.

    The Winograd fields are None for layers without a Winograd form. The transform costs are kept
    apart from the headline MAC figures, as the paper does. ``input_transform_macs`` and
    ``output_transform_macs`` count ``B^T d B`` and ``A^T Y A`` as dense matrix products (an upper
    bound). ``transform_mults`` / ``transform_adds`` count them as a sparse-Winograd runtime
    performs them (:class:`TransformOps`: input transform once per input channel and tile,
    output transform once per output channel and tile); ``total_macs(rows,
    "winograd_with_transforms")`` adds ``transform_mults`` to the element-wise products.
    """

    name: str
    kind: str
    params: int
    nonzero: int
    output_size: tuple[int, int]
    dense_macs: int
    sparse_spatial_macs: int
    winograd_tile: int | None = None
    tiles: int | None = None
    winograd_params: int | None = None
    winograd_nonzero: int | None = None
    dense_winograd_macs: int | None = None
    sparse_winograd_macs: int | None = None
    input_transform_macs: int | None = None
    output_transform_macs: int | None = None
    transform_mults: int | None = None
    transform_adds: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _output_sizes(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    sizes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(out.shape))))
    was_training = model.training
    try:
        model.eval()
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *input_size[1:]), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes


def layer_costs(
    model: nn.Module,
    input_size: tuple[int, ...],
    m: int = 2,
    winograd_thresholds: Mapping[str, float] | None = None,
) -> list[LayerCost]:
    """One :class:`LayerCost` per conv and linear layer that the forward pass reaches.

    ``input_size`` is (N, C, H, W); only C, H and W matter (the counts are per image).
    The Winograd non-zeros count ``|G w G^T| > threshold`` with the layer's threshold from
    ``winograd_thresholds`` (keyed by module name; 0 by default, i.e. every non-zero).
    """
    sizes = _output_sizes(model, input_size)
    thresholds = winograd_thresholds or {}
    rows: list[LayerCost] = []
    for name, module in model.named_modules():
        if name not in sizes:
            continue
        weight = module.weight.detach()
        params, nonzero = weight.numel(), int(torch.count_nonzero(weight))
        if isinstance(module, nn.Linear):
            rows.append(LayerCost(name, "linear", params, nonzero, (1, 1), params, nonzero))
            continue
        out_h, out_w = sizes[name][-2:]
        pixels = out_h * out_w
        row = LayerCost(name, "conv", params, nonzero, (out_h, out_w), params * pixels, nonzero * pixels)
        if has_winograd_form(module):
            r = module.kernel_size[0]
            t = m + r - 1
            tiles = tile_count(out_h, m) * tile_count(out_w, m)
            winograd = filter_to_winograd(weight.double(), m)
            row.winograd_tile = t
            row.tiles = tiles
            row.winograd_params = winograd.numel()
            row.winograd_nonzero = int((winograd.abs() > thresholds.get(name, 0.0)).sum())
            row.dense_winograd_macs = winograd.numel() * tiles
            row.sparse_winograd_macs = row.winograd_nonzero * tiles
            row.input_transform_macs = module.in_channels * tiles * 2 * t**3
            row.output_transform_macs = module.out_channels * tiles * (m * t * t + m * m * t)
            ops = transform_ops(m, r)
            row.transform_mults = tiles * (module.in_channels * ops.input_mults + module.out_channels * ops.output_mults)
            row.transform_adds = tiles * (module.in_channels * ops.input_adds + module.out_channels * ops.output_adds)
        rows.append(row)
    return rows


def total_macs(rows: Iterable[LayerCost], deployment: str) -> int:
    """Whole-network multiplications for ``dense``, ``spatial`` (sparse), ``winograd`` (sparse),
    ``winograd_with_transforms`` (sparse, plus the transforms' multiplications) or
    ``dense_winograd``. Layers without a Winograd form count their spatial figure in the
    Winograd deployments (they run spatially there)."""
    total = 0
    for row in rows:
        if deployment == "dense":
            total += row.dense_macs
        elif deployment == "spatial":
            total += row.sparse_spatial_macs
        elif deployment == "winograd":
            total += row.sparse_winograd_macs if row.sparse_winograd_macs is not None else row.sparse_spatial_macs
        elif deployment == "winograd_with_transforms":
            total += row.sparse_winograd_macs + row.transform_mults if row.sparse_winograd_macs is not None else row.sparse_spatial_macs
        elif deployment == "dense_winograd":
            total += row.dense_winograd_macs if row.dense_winograd_macs is not None else row.dense_macs
        else:
            raise ValueError(f"unknown deployment {deployment!r}; use dense, spatial, winograd, winograd_with_transforms or dense_winograd")
    return total


def macs_reduction(rows: list[LayerCost], deployment: str) -> float:
    """Dense spatial MACs of the network divided by the MACs of ``deployment`` (SPEC section 6)."""
    used = total_macs(rows, deployment)
    return math.inf if used == 0 else total_macs(rows, "dense") / used
