"""Multiplication counts per layer in every deployment (SPEC section 6).

The counts are per image. Conv and linear layers are found by module type; their output sizes come
from one forward pass of a zero tensor, so any architecture works without a shape table.
:func:`layer_cost` computes one row from a weight and its output size alone, which is how a
``.jsz`` file's costs are counted without building its model (the file records the sizes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

from .transforms import DEFAULT_M, has_winograd_form, tile_count, winograd_kept_count, winograd_matrices


# How the figures are counted, in the words every report uses (tests tie them to the code below).
WINOGRAD_PRODUCTS_CONVENTION = "element-wise products in the Winograd domain only (the paper's convention, SPEC section 6)"
WINOGRAD_TRANSFORMS_CONVENTION = ("the products plus the input and output tile transforms, one operation per non-zero entry "
                                  "of B^T and A^T applied separably, as a fused kernel performs them")


@dataclass
class LayerCost:
    """One conv or linear layer's weight count and multiplications in each deployment.

    The Winograd fields are None for layers without a Winograd form. ``sparse_winograd_macs`` counts
    the element-wise products only (the paper's convention). The transform costs are kept apart and
    counted as a fused kernel performs them (:func:`transform_macs`): separable, one operation per
    non-zero entry of ``B^T`` and ``A^T``; ``total_macs(rows, "winograd_with_transforms")`` adds them.
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

    def as_dict(self) -> dict:
        return asdict(self)


def _output_sizes(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Output shape of every conv and linear layer, from one forward pass on PyTorch's meta
    device: shapes without computing or allocating anything, whatever the input size."""
    sizes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(out.shape))))
    was_training = model.training
    try:
        model.eval()
        tensors = {name: tensor.to("meta") for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
        with torch.no_grad():
            torch.func.functional_call(model, tensors, (torch.zeros((1, *input_size[1:]), device="meta"),))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes


def transform_macs(m: int, r: int) -> tuple[int, int]:
    """Operations per tile and channel of the input transform ``B^T d B`` and of the output transform
    ``A^T Y A``, each counted as one multiply-add per non-zero matrix entry applied (a +-1 entry is an
    addition, counted the same). Separable: ``B^T d`` then ``(.) B`` cost ``2 t nnz(B^T)``, and
    ``A^T Y`` then ``(.) A`` cost ``(t + m) nnz(A^T)``. For F(2,3) that is 64 and 36, against 128 and
    48 for dense matrix products."""
    at, _, bt = winograd_matrices(m, r)
    t = m + r - 1
    return 2 * t * int(torch.count_nonzero(bt)), (t + m) * int(torch.count_nonzero(at))


def layer_cost(
    name: str, weight: torch.Tensor, output_size: tuple[int, int] | None, *, groups: int = 1,
    winograd_m: int | None = None, winograd_threshold: float = 0.0,
) -> LayerCost:
    """One layer's costs from its weight, its output map size (None for a linear layer) and, for
    a layer run in the Winograd domain, its tile ``m`` and threshold on ``|G w G^T|``."""
    weight = weight.detach()
    params, nonzero = weight.numel(), int(torch.count_nonzero(weight))
    if output_size is None or weight.ndim == 2:
        return LayerCost(name, "linear", params, nonzero, (1, 1), params, nonzero)
    out_h, out_w = output_size
    pixels = out_h * out_w
    row = LayerCost(name, "conv", params, nonzero, (out_h, out_w), params * pixels, nonzero * pixels)
    if winograd_m is not None:
        m, r = winograd_m, weight.shape[-1]
        t = m + r - 1
        tiles = tile_count(out_h, m) * tile_count(out_w, m)
        row.winograd_tile = t
        row.tiles = tiles
        row.winograd_params = params // (r * r) * t * t
        row.winograd_nonzero = winograd_kept_count(weight, m, winograd_threshold)
        row.dense_winograd_macs = row.winograd_params * tiles
        row.sparse_winograd_macs = row.winograd_nonzero * tiles
        per_input_tile, per_output_tile = transform_macs(m, r)
        row.input_transform_macs = weight.shape[1] * groups * tiles * per_input_tile
        row.output_transform_macs = weight.shape[0] * tiles * per_output_tile
    return row


def layer_costs(
    model: nn.Module,
    input_size: tuple[int, ...],
    m: int | Mapping[str, int] = DEFAULT_M,
    winograd_thresholds: Mapping[str, float] | None = None,
) -> list[LayerCost]:
    """One :class:`LayerCost` per conv and linear layer that the forward pass reaches.

    ``input_size`` is (N, C, H, W); only C, H and W matter (the counts are per image).
    The Winograd non-zeros count ``|G w G^T| > threshold`` with the layer's threshold from
    ``winograd_thresholds`` (keyed by module name; 0 by default, i.e. every non-zero). ``m`` is
    the Winograd output tile, one for all layers or per module name (``DEFAULT_M`` for a name
    not given).
    """
    sizes = _output_sizes(model, input_size)
    thresholds = winograd_thresholds or {}
    rows: list[LayerCost] = []
    for name, module in model.named_modules():
        if name not in sizes:
            continue
        if isinstance(module, nn.Linear):
            rows.append(layer_cost(name, module.weight, None))
            continue
        tile = (m.get(name, DEFAULT_M) if isinstance(m, Mapping) else m) if has_winograd_form(module) else None
        rows.append(layer_cost(
            name, module.weight, tuple(sizes[name][-2:]), groups=module.groups,
            winograd_m=tile, winograd_threshold=thresholds.get(name, 0.0),
        ))
    return rows


def total_macs(rows: Iterable[LayerCost], deployment: str) -> int:
    """Whole-network multiplications for ``dense``, ``spatial`` (sparse), ``winograd`` (sparse,
    element-wise products only: the paper's convention), ``winograd_with_transforms`` (the same plus
    the input and output tile transforms, see :func:`transform_macs`) or ``dense_winograd``. Layers
    without a Winograd form count their spatial figure in the Winograd deployments (they run
    spatially there)."""
    total = 0
    for row in rows:
        if deployment == "winograd_with_transforms":
            if row.sparse_winograd_macs is None:
                total += row.sparse_spatial_macs
            else:
                total += row.sparse_winograd_macs + row.input_transform_macs + row.output_transform_macs
            continue
        if deployment == "dense":
            total += row.dense_macs
        elif deployment == "spatial":
            total += row.sparse_spatial_macs
        elif deployment == "winograd":
            total += row.sparse_winograd_macs if row.sparse_winograd_macs is not None else row.sparse_spatial_macs
        elif deployment == "dense_winograd":
            total += row.dense_winograd_macs if row.dense_winograd_macs is not None else row.dense_macs
        else:
            raise ValueError(f"unknown deployment {deployment!r}; use dense, spatial, winograd, winograd_with_transforms or dense_winograd")
    return total


def macs_reduction(rows: list[LayerCost], deployment: str) -> float:
    """Dense spatial MACs of the network divided by the MACs of ``deployment`` (SPEC section 6)."""
    used = total_macs(rows, deployment)
    return math.inf if used == 0 else total_macs(rows, "dense") / used
