"""Deployment: a model's conv and linear layers swapped for the sparse runtime layers.

Every input is plain per-layer data: which layers to swap and, for Winograd-form convs, the tile
``m`` and the threshold of the Winograd pruning rule (:func:`jointsparse.transforms.winograd_pruned_weight`).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..transforms import has_winograd_form, winograd_pruned_weight
from .choice import TimingCache, choose, layer_inputs
from .fast import swap_fast_layers
from .spatial import SparseConv2d, SparseLinear
from .winograd import WinogradConv2d

__all__ = ["DOMAINS", "WinogradSetting", "deploy", "winograd_prune"]

DOMAINS = ("spatial", "winograd", "auto")

#: ``(m, threshold)``: the Winograd tile and the pruning threshold of one layer.
WinogradSetting = tuple[int, float]


def _winograd_layer(conv: nn.Module, name: str, setting: WinogradSetting, sparse: Optional[bool] = None) -> WinogradConv2d:
    if not has_winograd_form(conv):
        raise ValueError(f"layer {name!r} ({conv}) has no Winograd form")
    m, threshold = setting
    out_channels, in_per_group, r, _ = conv.weight.shape
    t = m + r - 1
    # Filled in place, position-major ([t, t, Cout, Cin/g], the layer's own buffer layout), in
    # bounded float64 chunks: the layer's weights are its only Winograd-sized allocation.
    buffer = torch.empty((t, t, out_channels, in_per_group), dtype=conv.weight.dtype, device=conv.weight.device)
    weights = winograd_pruned_weight(conv.weight, m, threshold, out=buffer.permute(2, 3, 0, 1))
    bias = None if conv.bias is None else conv.bias.detach()
    return WinogradConv2d.from_winograd_weights(weights, bias, m, r, conv.padding[0], conv.groups, sparse)


def _replace(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    if not child:
        raise ValueError("the model itself is a compressed layer; wrap it in a container module")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def _runtime_forms(module: nn.Module, name: str, setting: Optional[WinogradSetting]) -> dict[str, nn.Module]:
    """Every runtime form of one layer: ``dense`` (the module itself), ``spatial`` (CSR, forced
    sparse) and ``winograd`` (sparse Winograd, where a setting is given)."""
    forms: dict[str, nn.Module] = {"dense": module}
    if isinstance(module, nn.Conv2d):
        forms["spatial"] = SparseConv2d.from_conv(module, sparse=True)
    elif isinstance(module, nn.Linear):
        forms["spatial"] = SparseLinear.from_linear(module, sparse=True)
    else:
        raise ValueError(f"layer {name!r} is a {type(module).__name__}, not a Conv2d or Linear")
    if setting is not None:
        forms["winograd"] = _winograd_layer(module, name, setting, sparse=True)
    return forms


def deploy(
    model: nn.Module,
    layers: Mapping[str, Optional[WinogradSetting]],
    domain: str,
    *,
    sample: Optional[torch.Tensor] = None,
    threads: Optional[int] = None,
    force: Optional[Mapping[str, str]] = None,
    timing_cache: Any = None,
    fast_layers: bool = True,
) -> nn.Module:
    """Swap each layer named in ``layers`` for its sparse runtime form, in place.

    ``spatial``: ``SparseConv2d`` / ``SparseLinear``. ``winograd``: ``WinogradConv2d`` pruned by
    the layer's ``(m, threshold)`` where one is given, spatial sparse where it is None. ``auto``:
    each layer keeps the fastest of its dense, spatial and Winograd forms, timed on its input when
    the model runs ``sample`` at ``threads`` threads (see :func:`jointsparse.nn.choice.choose`;
    ``force`` maps layer names or globs to a form; ``timing_cache`` is a ``TimingCache``, None for
    the default file, or False for none). The choices are left in ``model.deployment_choices``.

    ``fast_layers``: also swap max pooling and local response norm for their compiled stand-ins
    (:mod:`jointsparse.nn.fast`; same outputs, several times faster), where the kernels are built.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use one of {DOMAINS}")
    if domain == "auto":
        if sample is None:
            raise ValueError("domain 'auto' needs a sample input to time the layers on")
        inputs = layer_inputs(model, sample, set(layers))
        forms = {name: _runtime_forms(model.get_submodule(name), name, setting) for name, setting in layers.items()}
        cache = None if timing_cache is False else (timing_cache if timing_cache is not None else TimingCache())
        choices = choose(forms, inputs, threads=threads, force=force, cache=cache)
        for name, entry in choices.items():
            _replace(model, name, forms[name][entry["choice"]])
        model.deployment_choices = choices
        if fast_layers:
            swap_fast_layers(model)
        return model
    for name, setting in layers.items():
        module = model.get_submodule(name)
        if domain == "winograd" and setting is not None:
            replacement: nn.Module = _winograd_layer(module, name, setting)
        elif isinstance(module, nn.Conv2d):
            replacement = SparseConv2d.from_conv(module)
        elif isinstance(module, nn.Linear):
            replacement = SparseLinear.from_linear(module)
        else:
            raise ValueError(f"layer {name!r} is a {type(module).__name__}, not a Conv2d or Linear")
        _replace(model, name, replacement)
    if fast_layers:
        swap_fast_layers(model)
    return model


def winograd_prune(model: nn.Module, winograd: Mapping[str, WinogradSetting]) -> nn.Module:
    """A copy of ``model`` in which each conv named in ``winograd`` is a sparse
    :class:`WinogradConv2d` keeping ``|G w G^T| > threshold`` (decode-time pruning without a file);
    every other layer is left as it is."""
    pruned = copy.deepcopy(model)
    for name, setting in winograd.items():
        _replace(pruned, name, _winograd_layer(pruned.get_submodule(name), name, setting))
    return pruned
