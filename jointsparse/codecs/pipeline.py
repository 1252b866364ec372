"""Model-level encode and decode: one ``.jsz`` file, two deployments (SPEC sections 1, 4, 5).

``encode`` quantizes a (pruned) model as it is, stores a per-layer Winograd threshold for every
layer with a Winograd form, and writes the file. ``decode`` rebuilds the architecture named in the
file and swaps in the sparse runtime layers of :mod:`jointsparse.nn` for the chosen domain.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..transforms import filter_to_winograd, has_winograd_form
from .container import DEFAULT_MAX_EXPANSION, JszContents, StoredLayer, load, planned_bytes, save
from .entropy import DEFAULT_CODER
from .errors import FormatError
from .quantize import BitsSpec, QuantizedLayer, compressible_layers, quantize_model

__all__ = ["DOMAINS", "encode", "decode", "decode_state", "deploy", "winograd_mask", "winograd_weights"]

DOMAINS = ("spatial", "winograd", "auto")

WinogradSpec = Union[None, float, Mapping[str, float]]


def _check_quantized(quantized: Mapping[str, QuantizedLayer], layers: Mapping[str, tuple[nn.Module, str]]) -> None:
    missing, extra = sorted(set(layers) - set(quantized)), sorted(set(quantized) - set(layers))
    if missing or extra:
        raise ValueError(f"quantized layers do not match the model's conv/linear weights (missing {missing}, extra {extra})")
    for name, layer in quantized.items():
        if tuple(layer.shape) != tuple(layers[name][0].weight.shape):
            raise ValueError(f"{name}: quantized shape {tuple(layer.shape)} differs from the weight's {tuple(layers[name][0].weight.shape)}")


def _winograd_entries(
    model: nn.Module, quantized: Mapping[str, QuantizedLayer], winograd_sparsity: WinogradSpec, m: int
) -> dict[str, dict]:
    """Per Winograd-form layer: ``{"m", "r", "threshold", "sparsity"}`` on the quantized weights."""
    from ..sparsity import resolve_per_layer, winograd_thresholds

    winograd_layers = {name: module for name, (module, _) in compressible_layers(model).items() if has_winograd_form(module)}
    if not winograd_layers:
        if winograd_sparsity is not None and isinstance(winograd_sparsity, Mapping) and winograd_sparsity:
            raise ValueError("winograd_sparsity names layers, but the model has no layer with a Winograd form")
        return {}
    if winograd_sparsity is None:
        thresholds = {name: 0.0 for name in winograd_layers}
        targets: dict[str, Optional[float]] = {name: None for name in winograd_layers}
    else:
        module_names = [name[: -len(".weight")] for name in winograd_layers]
        targets = {f"{k}.weight": v for k, v in resolve_per_layer(winograd_sparsity, module_names, "winograd_sparsity").items()}
        # The thresholds are quantiles of |G w_q G^T| of the QUANTIZED weights: swap them in
        # (Winograd-form convs only, so this costs conv-sized memory), compute, swap back.
        originals = {name: module.weight.detach().clone() for name, module in winograd_layers.items()}
        try:
            with torch.no_grad():
                for name, module in winograd_layers.items():
                    module.weight.copy_(quantized[name].dequantize().to(module.weight.dtype))
            by_module = winograd_thresholds(model, winograd_sparsity, m)
        finally:
            with torch.no_grad():
                for name, module in winograd_layers.items():
                    module.weight.copy_(originals[name])
        thresholds = {f"{k}.weight": v for k, v in by_module.items()}
    return {
        name: {"m": m, "r": module.kernel_size[0], "threshold": thresholds[name], "sparsity": targets[name]}
        for name, module in winograd_layers.items()
    }


def encode(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    quantizer: str = "kmeans",
    bits: BitsSpec = None,
    winograd_sparsity: WinogradSpec = None,
    m: int = 2,
    quantized: Optional[Mapping[str, QuantizedLayer]] = None,
    coder: Optional[str] = None,
    recipe: Optional[Mapping[str, Any]] = None,
    arch: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    provenance: Optional[Mapping[str, Any]] = None,
    input_size: Optional[tuple[int, int, int]] = None,
    allow_no_arch: bool = False,
) -> dict:
    """Quantize ``model`` as it is (or take the already fine-tuned ``quantized`` layers), code it,
    write ``path`` atomically and return :func:`jointsparse.codecs.report` of the file.

    The model's exact zeros are the pruned weights. ``winograd_sparsity`` (a float, or a dict of
    module names/globs) sets each Winograd-form layer's stored threshold to that quantile of
    ``|G w_q G^T|``; None stores threshold 0 (keep every non-zero). ``arch`` defaults to
    ``model.jointsparse_arch``. Biases, BatchNorm parameters and buffers are stored losslessly.
    ``recipe`` and ``provenance`` (plain JSON: e.g. data set, command line) go into the manifest.

    Without ``arch`` or ``model.jointsparse_arch``, the model's class is stored when it rebuilds
    the same tensors with no arguments (``package.module:Class``); otherwise encode refuses, with a
    message showing how to pass ``arch``, unless ``allow_no_arch=True`` (weights only: read them
    back with :func:`decode_state`). ``input_size`` (C, H, W) stores each layer's output map size
    and groups, so that MACs can be counted from the file without building the model.
    """
    from .report import report

    if m < 1:
        raise ValueError(f"Winograd output tile m must be >= 1, got {m}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    layers = compressible_layers(model)
    if quantized is None:
        quantized = quantize_model(model, quantizer, bits, seed)
    else:
        _check_quantized(quantized, layers)
    quantized = {name: quantized[name] for name in layers}  # model order
    arch = arch if arch is not None else getattr(model, "jointsparse_arch", None)
    if arch is None and not allow_no_arch:
        arch = _class_reference(model)
    maps = _layer_maps(model, input_size) if input_size is not None else None
    raw = {name: tensor for name, tensor in model.state_dict().items() if name not in quantized}
    winograd = _winograd_entries(model, quantized, winograd_sparsity, m)
    original = sum(p.numel() for p in model.parameters())
    written = save(
        path,
        quantized,
        raw,
        arch=arch,
        original_parameter_count=original,
        coder=coder or DEFAULT_CODER,
        winograd=winograd,
        recipe=recipe,
        provenance=provenance,
        input_size=None if input_size is None else [int(v) for v in input_size],
        maps=maps,
    )
    size = os.path.getsize(written)
    planned = planned_bytes(
        [{"parameter_count": q.numel, "nnz": q.nnz} for q in quantized.values()],
        [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in raw.values()],
    )
    if planned > DEFAULT_MAX_EXPANSION * size:
        warnings.warn(f"{written} decodes to {planned} bytes, more than load()'s default cap; decode it with max_expansion=None", stacklevel=2)
    return report(written)


def _class_reference(model: nn.Module) -> dict:
    """``{"name": "module:Class", "kwargs": {}}`` if ``Class()`` rebuilds the model's tensors, else refuse."""
    cls = type(model)
    name = f"{cls.__module__}:{cls.__qualname__}"
    how = (
        "pass arch={'name': 'package.module:factory', 'kwargs': {...}} naming an importable factory that rebuilds it "
        "(or build it with jointsparse.models.get_model), or allow_no_arch=True to store weights only"
    )
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ValueError(f"cannot store an architecture reference for {cls.__qualname__} (defined in {'a script' if cls.__module__ == '__main__' else 'a function'}, not importable): {how}")
    try:
        with torch.device("meta"):
            probe = cls()
        fits = {k: tuple(v.shape) for k, v in probe.state_dict().items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except Exception:  # needs arguments, or fails to build: no reference we can vouch for
        fits = False
    if not fits:
        raise ValueError(f"{name}() does not rebuild this model's tensors, so the file could not be decoded into it: {how}")
    return {"name": name, "kwargs": {}}


def _layer_maps(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, dict]:
    """Per compressed weight: ``{"output_size": [H, W], "groups": g}`` from one forward pass on zeros
    (``[1, 1]`` and 1 for linear layers); layers the pass does not reach are left out."""
    sizes: dict[str, list[int]] = {}
    layers = compressible_layers(model)
    handles = [
        module.register_forward_hook(lambda mod, args, out, name=name: sizes.__setitem__(name, list(out.shape[-2:]) if out.ndim == 4 else [1, 1]))
        for name, (module, _) in layers.items()
    ]
    was_training = model.training
    try:
        parameter = next(model.parameters(), None)
        with torch.no_grad():
            model.eval()(torch.zeros((1, *input_size), device=parameter.device if parameter is not None else "cpu"))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: {"output_size": [int(v) for v in sizes[name]], "groups": int(getattr(module, "groups", 1))}
            for name, (module, _) in layers.items() if name in sizes}


def decode_state(path: Union[str, os.PathLike], *, max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION) -> tuple[Optional[dict], dict[str, torch.Tensor], dict]:
    """``(arch, state_dict, manifest)``: the spatial weights (exactly the quantized values, float32)
    and the losslessly stored tensors, ready for ``load_state_dict`` or a plain checkpoint."""
    contents = load(path, max_expansion=max_expansion)
    return contents.arch, _state_dict(contents), contents.manifest


def _state_dict(contents: JszContents) -> dict[str, torch.Tensor]:
    state = {name: stored.quantized.dequantize() for name, stored in contents.layers.items()}
    state.update(contents.raw)
    return state


def _build_model(arch: Optional[dict], state: Mapping[str, torch.Tensor], allow_imports: bool) -> nn.Module:
    from ..models import get_model

    if arch is None:
        raise FormatError("file has no architecture reference; use decode_state() and build the model yourself")
    if ":" in arch["name"] and not allow_imports:
        raise FormatError(
            f"file names the factory {arch['name']!r}, which decode would import and call; "
            "pass allow_imports=True only for files you trust"
        )
    try:
        # Build on the meta device first: a file must not make us allocate a model it cannot fill.
        with torch.device("meta"):
            probe = get_model(arch["name"], **arch["kwargs"])
        expected = {name: tuple(t.shape) for name, t in probe.state_dict().items()}
        stored = {name: tuple(t.shape) for name, t in state.items()}
        if expected != stored:
            missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
            wrong = sorted(n for n in set(expected) & set(stored) if expected[n] != stored[n])
            raise FormatError(f"file does not fit architecture {arch['name']!r}: missing {missing[:5]}, extra {extra[:5]}, wrong shape {wrong[:5]}")
        model = get_model(arch["name"], **arch["kwargs"])
    except FormatError:
        raise
    except Exception as error:  # unknown model name, bad kwargs: the file references what we cannot build
        raise FormatError(f"cannot build architecture {arch['name']!r}: {error}") from None
    model.load_state_dict(state, strict=True)
    return model


def _winograd_float64(weight: torch.Tensor, m: int) -> torch.Tensor:
    return filter_to_winograd(weight.detach().to(torch.float64), m)


def winograd_mask(weight: torch.Tensor, m: int, threshold: float) -> torch.Tensor:
    """``|G w G^T| > threshold`` in float64, the decoder's Winograd pruning (SPEC section 1)."""
    return _winograd_float64(weight, m).abs() > threshold


def winograd_weights(path: Union[str, os.PathLike], *, max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION) -> dict[str, dict]:
    """The pruned Winograd-domain weights of every layer with a Winograd form:
    ``{module: {"m": m, "weight": float32 [Cout, Cin/groups, t, t]}}`` with ``|G w G^T|`` at or
    under the stored threshold set to zero (what ``WinogradConv2d.from_conv`` builds)."""
    contents = load(path, max_expansion=max_expansion)
    out = {}
    for stored in contents.layers.values():
        if stored.winograd is None:
            continue
        m = stored.winograd["m"]
        big = _winograd_float64(stored.quantized.dequantize(), m)
        pruned = big * (big.abs() > stored.winograd["threshold"])
        out[stored.module] = {"m": m, "weight": pruned.to(torch.float32)}
    return out


def _runtime_forms(module: nn.Module, stored: StoredLayer) -> dict[str, nn.Module]:
    """Every runtime form of one decoded layer: ``dense`` (the module itself), ``spatial``
    (CSR, forced sparse) and ``winograd`` (sparse Winograd, where the layer has that form)."""
    from ..nn import SparseConv2d, SparseLinear, WinogradConv2d

    forms: dict[str, nn.Module] = {"dense": module}
    if isinstance(module, nn.Conv2d):
        forms["spatial"] = SparseConv2d.from_conv(module, sparse=True)
    elif isinstance(module, nn.Linear):
        forms["spatial"] = SparseLinear.from_linear(module, sparse=True)
    else:
        raise FormatError(f"layer {stored.module!r} is a {type(module).__name__}, not a Conv2d or Linear")
    if stored.winograd is not None and has_winograd_form(module):
        m = stored.winograd["m"]
        mask = winograd_mask(module.weight, m, stored.winograd["threshold"])
        forms["winograd"] = WinogradConv2d.from_conv(module, m=m, winograd_mask=mask, sparse=True)
    return forms


def _swap(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    if not child:
        raise FormatError("the model itself is a compressed layer; wrap it in a container module")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def deploy(
    model: nn.Module,
    layers: Mapping[str, StoredLayer],
    domain: str,
    *,
    sample: Optional[torch.Tensor] = None,
    threads: Optional[int] = None,
    force: Optional[Mapping[str, str]] = None,
    timing_cache: Any = None,
) -> nn.Module:
    """Swap each compressed layer of ``model`` for its sparse runtime form, in place.

    ``spatial``: ``SparseConv2d`` / ``SparseLinear``. ``winograd``: ``WinogradConv2d`` with the
    stored threshold where the layer has a Winograd form, spatial sparse elsewhere. ``auto``: each
    layer keeps the fastest of its dense, spatial and Winograd forms, timed on its input when the
    model runs ``sample`` at ``threads`` threads (see :func:`jointsparse.nn.choice.choose`;
    ``force`` maps layer names or globs to a form; ``timing_cache`` is a ``TimingCache``, None for
    the default file, or False for none). The choices are left in ``model.deployment_choices``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use one of {DOMAINS}")
    from ..nn import SparseConv2d, SparseLinear, WinogradConv2d

    if domain == "auto":
        from ..nn.choice import TimingCache, choose, layer_inputs

        if sample is None:
            raise ValueError("domain 'auto' needs a sample input to time the layers on")
        names = [stored.module for stored in layers.values()]
        inputs = layer_inputs(model, sample, set(names))
        forms = {stored.module: _runtime_forms(model.get_submodule(stored.module), stored) for stored in layers.values()}
        cache = None if timing_cache is False else (timing_cache if timing_cache is not None else TimingCache())
        choices = choose(forms, inputs, threads=threads, force=force, cache=cache)
        for name, entry in choices.items():
            _swap(model, name, forms[name][entry["choice"]])
        model.deployment_choices = choices
        return model
    for stored in layers.values():
        module = model.get_submodule(stored.module)
        if domain == "winograd" and stored.winograd is not None and has_winograd_form(module):
            m = stored.winograd["m"]
            mask = winograd_mask(module.weight, m, stored.winograd["threshold"])
            replacement = WinogradConv2d.from_conv(module, m=m, winograd_mask=mask)
        elif isinstance(module, nn.Conv2d):
            replacement = SparseConv2d.from_conv(module)
        elif isinstance(module, nn.Linear):
            replacement = SparseLinear.from_linear(module)
        else:
            raise FormatError(f"layer {stored.module!r} is a {type(module).__name__}, not a Conv2d or Linear")
        _swap(model, stored.module, replacement)
    return model


def decode(
    path: Union[str, os.PathLike],
    domain: str = "spatial",
    *,
    allow_imports: bool = False,
    max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION,
    runtime: bool = True,
    batch: int = 1,
    threads: Optional[int] = None,
    input_size: Optional[Any] = None,
    force: Optional[Mapping[str, str]] = None,
    timing_cache: Any = None,
) -> nn.Module:
    """Rebuild the model stored in ``path`` for the ``spatial``, ``winograd`` or ``auto`` deployment (eval mode).

    ``runtime=False`` skips the swap to sparse runtime layers: the architecture's own modules
    carrying the decoded weights (e.g. for MAC counting); ``domain`` is then irrelevant.

    ``auto`` times each layer's dense, spatial and Winograd forms on this machine for ``batch``
    images of ``input_size`` (C, H, W; default: recorded in the file) at ``threads`` torch threads
    (default: the current setting) and keeps the fastest; ``force`` maps layer names or globs to
    a form, and ``timing_cache`` is as in :func:`deploy`. The choices are in
    ``model.deployment_choices``.

    The architecture comes from ``jointsparse.models.get_model``; a file naming a
    ``package.module:factory`` is refused unless ``allow_imports=True``, because building it
    imports and calls code named by the file.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use one of {DOMAINS}")
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    contents = load(path, max_expansion=max_expansion)
    model = _build_model(contents.arch, _state_dict(contents), allow_imports)
    if runtime:
        sample = None
        if domain == "auto":
            size = list(input_size or ((contents.manifest.get("provenance") or {}).get("data") or {}).get("input_size") or [])
            if len(size) != 3:
                raise ValueError("the file records no input size; domain 'auto' needs input_size=(C, H, W)")
            sample = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
        deploy(model.eval(), contents.layers, domain, sample=sample, threads=threads, force=force, timing_cache=timing_cache)
    return model.eval()
