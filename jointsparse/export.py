"""Export a ``.jsz`` file for other runtimes: ONNX (the spatial deployment) and safetensors.

- :func:`export_onnx`: the decoded spatial model as plain ``Conv2d``/``Linear`` modules with the
  pruned weights as zeros in place, traced at the file's recorded input size with a dynamic
  batch dimension. Input ``input`` (already normalised, as for ``decode``), output ``output``.
  The normalisation and the architecture go into the model's metadata. Needs the ``export``
  extra (``onnx``; ``onnxruntime`` to run it).
- :func:`export_safetensors`: the decoded ``state_dict`` (every tensor dense, float32 weights
  with their zeros), plus every Winograd-form layer's pruned Winograd-domain weight in CSR form.
  Layout (also in ``docs/format.md``): for a module ``M`` with weight ``[Cout, Cin/g, t, t]``,
  the matrix ``W.reshape(Cout, Cin/g * t * t)`` is stored as ``M.winograd.crow_indices`` (int64,
  ``Cout + 1``), ``M.winograd.col_indices`` (int64, nnz) and ``M.winograd.values`` (float32,
  nnz), exactly ``torch.sparse_csr_tensor``'s three arrays; the metadata key
  ``winograd`` is JSON ``{M: {"m": m, "shape": [Cout, Cin/g, t, t]}}``.

Building the model (ONNX) imports the factory the file names, so it is gated like ``decode``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any, Sequence

import torch

from .codecs import decode, decode_state, read_manifest, winograd_weights
from .nn.choice import layer_inputs
from .utils import atomic_write_bytes

FORMATS = ("onnx", "safetensors")


class ExportError(ValueError):
    """An export that cannot be done: a missing optional package, no input size, a bad format."""


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"this export needs {module}: pip install 'jointsparse[export]'") from None


def _metadata(manifest: dict[str, Any]) -> dict[str, str]:
    data = (manifest.get("provenance") or {}).get("data") or {}
    return {
        "jointsparse_arch": json.dumps(manifest.get("arch")),
        "jointsparse_normalization": json.dumps({"mean": data.get("mean"), "std": data.get("std")}),
    }


def recorded_input_size(manifest: dict[str, Any]) -> list[int] | None:
    """[C, H, W] the file was made at: the manifest's ``input_size``, else the data record's."""
    size = manifest.get("input_size") or ((manifest.get("provenance") or {}).get("data") or {}).get("input_size")
    return [int(v) for v in size] if size else None


def static_adaptive_pools(model: torch.nn.Module, sample: torch.Tensor) -> list[str]:
    """Replace, in place, each ``AdaptiveAvgPool2d`` that sees a fixed input size when ``model``
    runs ``sample`` by the plain ``AvgPool2d`` (or ``Identity``) that computes the same thing
    there; returns their names. The TorchScript ONNX exporter cannot export an adaptive pool after
    a ceil-mode max pool (AlexNet: "input size not accessible"); a fixed-size export is what it
    can write. Pools whose bins do not tile the input evenly are left alone."""
    pools = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.AdaptiveAvgPool2d) and name}
    sizes = {name: tuple(x.shape[-2:]) for name, x in layer_inputs(model, sample, set(pools)).items()}
    replaced = []
    for name, module in pools.items():
        if name not in sizes:
            continue
        (h, w), target = sizes[name], module.output_size
        out_h, out_w = (target, target) if isinstance(target, int) else target
        out_h, out_w = out_h or h, out_w or w
        if h % out_h or w % out_w:
            continue
        kernel = (h // out_h, w // out_w)
        replacement = torch.nn.Identity() if kernel == (1, 1) else torch.nn.AvgPool2d(kernel, kernel)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
        replaced.append(name)
    return replaced


def export_onnx(path: str | os.PathLike[str], out: str | os.PathLike[str], *, trust: bool = False,
                input_size: Sequence[int] | None = None, opset: int = 17) -> dict[str, Any]:
    """Write the spatial deployment of ``path`` as ONNX; returns ``{"input_size", "bytes"}``."""
    onnx = _require("onnx")
    manifest = read_manifest(path)
    size = list(input_size) if input_size else recorded_input_size(manifest)
    if not size or len(size) != 3:
        raise ExportError(f"{os.fspath(path)!r} records no input size: pass --input-size C,H,W")
    model = decode(path, domain="spatial", runtime=False, allow_imports=trust)
    static_adaptive_pools(model, torch.zeros(1, *size))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (torch.zeros(1, *size),), buffer, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in _metadata(manifest).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    atomic_write_bytes(out, data)
    return {"input_size": size, "bytes": len(data)}


def winograd_csr(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The CSR arrays of ``weight.reshape(Cout, -1)`` (the safetensors layout above)."""
    matrix = weight.reshape(weight.shape[0], -1)
    rows, cols = matrix.nonzero(as_tuple=True)  # row-major order, as CSR needs
    crow = torch.zeros(matrix.shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(rows, minlength=matrix.shape[0]).cumsum(0)
    return {"crow_indices": crow, "col_indices": cols.to(torch.int64), "values": matrix[rows, cols].to(torch.float32)}


def dense_from_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`winograd_csr`, for readers of the export."""
    rows = int(shape[0])
    dense = torch.zeros(rows, int(torch.tensor(list(shape[1:])).prod()), dtype=values.dtype)
    dense[torch.repeat_interleave(torch.arange(rows), crow.diff()), col] = values
    return dense.reshape(*shape)


def export_safetensors(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the decoded state_dict plus CSR Winograd weights; returns ``{"tensors", "winograd_layers", "bytes"}``.

    Nothing is imported or built: only the file's tensors are read.
    """
    _require("safetensors")
    from safetensors.torch import save

    _, state, manifest = decode_state(path)
    tensors = {name: tensor.contiguous() for name, tensor in state.items()}
    winograd_meta = {}
    for module, entry in winograd_weights(path).items():
        for key, array in winograd_csr(entry["weight"]).items():
            tensors[f"{module}.winograd.{key}"] = array.contiguous()
        winograd_meta[module] = {"m": entry["m"], "shape": list(entry["weight"].shape)}
    metadata = {**_metadata(manifest), "winograd": json.dumps(winograd_meta), "format": "jointsparse-safetensors-1"}
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(out, data)
    return {"tensors": len(tensors), "winograd_layers": len(winograd_meta), "bytes": len(data)}
