"""Model-level encode and decode: one ``.jsz`` file, two deployments (SPEC sections 1, 4, 5).

``encode`` quantizes a (pruned) model as it is, stores a per-layer Winograd threshold for every
layer with a Winograd form, and writes the file. ``decode`` rebuilds the architecture named in the
file and swaps in the sparse runtime layers of :mod:`jointsparse.nn` for the chosen domain.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..layers import resolve_per_layer, winograd_layers
from ..models import get_model
from ..nn import DOMAINS, WinogradSetting, deploy
from ..nn.choice import ChoiceError
from ..transforms import DEFAULT_M, winograd_pruned_weight, winograd_threshold
from .codebooks import narrow_codebook
from .container import DEFAULT_MAX_EXPANSION, JszContents, StoredLayer, load, planned_bytes, read_manifest, save
from .entropy import DEFAULT_CODER
from .errors import FormatError
from .manifest import MAX_MAP_SIDE, MAX_WINOGRAD_OUTPUT
from .quantize import BitsSpec, QuantizedLayer, compressible_layers, quantize_model
from .report import report

#: Most values (batch x C x H x W) in the random sample ``decode(domain="auto")`` times layers on:
#: 2^26 floats, 256 MiB, e.g. a batch of 64 ImageNet-sized images.
MAX_AUTO_SAMPLE = 1 << 26

__all__ = ["DOMAINS", "encode", "decode", "decode_state", "winograd_settings", "winograd_weights"]

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
    """Per Winograd-form layer: ``{"m", "r", "threshold", "sparsity"}``, the threshold taken on
    the quantized weights (what the decoder prunes)."""
    layers = winograd_layers(model)
    targets: Mapping[str, Optional[float]] = (
        dict.fromkeys(layers) if winograd_sparsity is None else resolve_per_layer(winograd_sparsity, layers, "winograd_sparsity")
    )
    entries = {}
    for name, module in layers.items():
        target = targets[name]
        weight = quantized[f"{name}.weight"].dequantize()
        threshold = 0.0 if target is None else winograd_threshold(weight, float(target), m)
        entries[f"{name}.weight"] = {"m": m, "r": module.kernel_size[0], "threshold": threshold, "sparsity": target}
    return entries


#: What ``raw_float_dtype`` may name: a float type a reader widens back with ``load_state_dict``.
RAW_FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _narrowed(raw: dict[str, torch.Tensor], dtype_name: str) -> dict[str, torch.Tensor]:
    """The float32 tensors of ``raw`` cast to ``dtype_name`` (others as they are)."""
    if dtype_name not in RAW_FLOAT_DTYPES:
        raise ValueError(f"raw_float_dtype must be one of {', '.join(RAW_FLOAT_DTYPES)}, got {dtype_name!r}")
    dtype = RAW_FLOAT_DTYPES[dtype_name]
    out = {}
    for name, tensor in raw.items():
        if tensor.dtype == torch.float32 and dtype != torch.float32:
            narrow = tensor.detach().to(dtype)
            if not bool(torch.isfinite(narrow).all()) and bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name}: a value outside {dtype_name}'s range (largest |value| {float(tensor.abs().max()):.4g}); store it as float32")
            tensor = narrow
        out[name] = tensor
    return out


def encode(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    quantizer: str = "kmeans",
    bits: BitsSpec = None,
    winograd_sparsity: WinogradSpec = None,
    m: int = DEFAULT_M,
    quantized: Optional[Mapping[str, QuantizedLayer]] = None,
    coder: Optional[str] = None,
    recipe: Optional[Mapping[str, Any]] = None,
    arch: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    provenance: Optional[Mapping[str, Any]] = None,
    input_size: Optional[tuple[int, int, int]] = None,
    allow_no_arch: bool = False,
    raw_float_dtype: str = "float32",
    codebook_dtype: str = "float32",
) -> dict:
    """Quantize ``model`` as it is (or take the already fine-tuned ``quantized`` layers), code it,
    write ``path`` atomically and return :func:`jointsparse.codecs.report` of the file.

    The model's exact zeros are the pruned weights. ``bits``: one int, or per layer by module name
    or glob (``{"conv*": 4, "conv1": 8}``; see :func:`jointsparse.layers.resolve_per_layer`).
    ``winograd_sparsity`` (a float, or a dict of module names/globs) sets each Winograd-form layer's stored threshold to that quantile of
    ``|G w_q G^T|``; None stores threshold 0 (keep every non-zero). ``arch`` defaults to
    ``model.jointsparse_arch``. Biases, BatchNorm parameters and buffers are stored losslessly,
unless ``raw_float_dtype`` (``"float16"`` or ``"bfloat16"``) narrows the floating ones: half their
bytes, rounded to 11 (8) significant bits; a value the narrower type cannot hold is refused.
``codebook_dtype = "float16"`` stores the codebooks at half their bytes (format version 4); the
weights the file decodes to, and the Winograd thresholds, are then those of the rounded codebooks.
    ``recipe`` and ``provenance`` (plain JSON: e.g. data set, command line) go into the manifest.

    Without ``arch`` or ``model.jointsparse_arch``, the model's class is stored when it rebuilds
    the same tensors with no arguments (``package.module:Class``); otherwise encode refuses, with a
    message showing how to pass ``arch``, unless ``allow_no_arch=True`` (weights only: read them
    back with :func:`decode_state`). ``input_size`` (C, H, W) stores each layer's output map size
    and groups, so that MACs can be counted from the file without building the model.
    """
    if not 1 <= m <= MAX_WINOGRAD_OUTPUT:
        raise ValueError(f"Winograd output tile m must be in 1..{MAX_WINOGRAD_OUTPUT} (what readers accept), got {m}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    layers = compressible_layers(model)
    if quantized is None:
        quantized = quantize_model(model, quantizer, bits, seed)
    else:
        _check_quantized(quantized, layers)
    # model order, with the codebooks the file will hold (so the Winograd thresholds are the decoded weights')
    quantized = {name: dataclasses.replace(quantized[name], codebook=narrow_codebook(quantized[name].codebook, codebook_dtype, name))
                 if codebook_dtype != "float32" else quantized[name] for name in layers}
    arch = arch if arch is not None else getattr(model, "jointsparse_arch", None)
    if arch is None and not allow_no_arch:
        arch = _class_reference(model)
    maps = _layer_maps(model, input_size) if input_size is not None else None
    raw = _narrowed({name: tensor for name, tensor in model.state_dict().items() if name not in quantized}, raw_float_dtype)
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
        codebook_dtype=codebook_dtype,
    )
    size = os.path.getsize(written)
    manifest = read_manifest(written)
    planned = planned_bytes(manifest["layers"], manifest["raw"])
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
        weight = winograd_pruned_weight(stored.quantized.dequantize(), m, stored.winograd["threshold"])
        out[stored.module] = {"m": m, "weight": weight}
    return out


def winograd_settings(layers: Mapping[str, StoredLayer]) -> dict[str, Optional[WinogradSetting]]:
    """Per stored layer's module: its ``(m, threshold)``, or None where it has no Winograd entry."""
    return {
        stored.module: None if stored.winograd is None else (stored.winograd["m"], stored.winograd["threshold"])
        for stored in layers.values()
    }


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
            recorded = ((contents.manifest.get("provenance") or {}).get("data") or {}).get("input_size")
            size = list(input_size or recorded or [])
            if len(size) != 3:
                raise ValueError("the file records no input size; domain 'auto' needs input_size=(C, H, W)")
            # The timing sample is a real tensor: bound it like every other allocation a file can
            # ask for (a hostile file could record a 10^6 x 10^6 input).
            bad = (ValueError if input_size else FormatError)
            if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_MAP_SIDE for v in size):
                raise bad(f"input size {size!r} for domain 'auto' must be three integers in 1..{MAX_MAP_SIDE}")
            if batch * size[0] * size[1] * size[2] > MAX_AUTO_SAMPLE:
                raise bad(f"a batch of {batch} inputs of size {size} is {batch * size[0] * size[1] * size[2]:,} values, over the {MAX_AUTO_SAMPLE:,} domain 'auto' times layers on")
            sample = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
        try:
            deploy(model.eval(), winograd_settings(contents.layers), domain, sample=sample, threads=threads, force=force, timing_cache=timing_cache)
        except ChoiceError:
            raise
        except ValueError as error:  # a stored layer that is no conv/linear, or has no Winograd form
            raise FormatError(str(error)) from None
    return model.eval()
