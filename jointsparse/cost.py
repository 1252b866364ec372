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

from .transforms import filter_to_winograd, has_winograd_form, tile_count


@dataclass
class LayerCost:
    """One conv or linear layer's weight count and multiplications in each deployment.

    The Winograd fields are None for layers without a Winograd form. The transform costs count the
    input tile transform ``B^T d B`` and the output transform ``A^T Y A`` as dense matrix products
    (an upper bound: real kernels exploit the 0/+-1 entries); they are kept apart from the
    headline MAC figures, as the paper does.
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
        winograd = filter_to_winograd(weight.double(), m)
        row.winograd_tile = t
        row.tiles = tiles
        row.winograd_params = winograd.numel()
        row.winograd_nonzero = int((winograd.abs() > winograd_threshold).sum())
        row.dense_winograd_macs = winograd.numel() * tiles
        row.sparse_winograd_macs = row.winograd_nonzero * tiles
        row.input_transform_macs = weight.shape[1] * groups * tiles * 2 * t**3
        row.output_transform_macs = weight.shape[0] * tiles * (m * t * t + m * m * t)
    return row


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
        if isinstance(module, nn.Linear):
            rows.append(layer_cost(name, module.weight, None))
            continue
        rows.append(layer_cost(
            name, module.weight, tuple(sizes[name][-2:]), groups=module.groups,
            winograd_m=m if has_winograd_form(module) else None, winograd_threshold=thresholds.get(name, 0.0),
        ))
    return rows


def total_macs(rows: Iterable[LayerCost], deployment: str) -> int:
    """Whole-network multiplications for ``dense``, ``spatial`` (sparse), ``winograd`` (sparse)
    or ``dense_winograd``. Layers without a Winograd form count their spatial figure in the
    Winograd deployments (they run spatially there)."""
    total = 0
    for row in rows:
        if deployment == "dense":
            total += row.dense_macs
        elif deployment == "spatial":
            total += row.sparse_spatial_macs
        elif deployment == "winograd":
            total += row.sparse_winograd_macs if row.sparse_winograd_macs is not None else row.sparse_spatial_macs
        elif deployment == "dense_winograd":
            total += row.dense_winograd_macs if row.dense_winograd_macs is not None else row.dense_macs
        else:
            raise ValueError(f"unknown deployment {deployment!r}; use dense, spatial, winograd or dense_winograd")
    return total


def macs_reduction(rows: list[LayerCost], deployment: str) -> float:
    """Dense spatial MACs of the network divided by the MACs of ``deployment`` (SPEC section 6)."""
    used = total_macs(rows, deployment)
    return math.inf if used == 0 else total_macs(rows, "dense") / used
