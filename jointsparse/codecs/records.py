"""The manifest's records of stored tensors and the sections they point at: quantized layers
(position and index streams) and losslessly stored raw tensors, in both directions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from .entropy import (
    CONTEXT_CODING,
    GAP_ALPHABET,
    bitmap_entropy_bytes,
    decode_positions,
    decode_symbols,
    encode_positions,
    encode_symbols,
    order0_entropy_bits,
)
from .errors import FormatError
from .framing import VERSION
from .index_context import decode_context_indices, encode_context_indices
from .index_context import supports as supports_index_contexts
from .manifest import RAW_DTYPES
from .quantize import MAX_BITS, QUANTIZERS, QuantizedLayer, index_dtype

__all__ = ["StreamStats", "StoredLayer", "JszContents", "layer_record", "raw_record", "decode_layer", "decode_raw"]

_DTYPE_NAMES = {dtype: name for name, dtype in RAW_DTYPES.items()}


@dataclass(frozen=True)
class StreamStats:
    """Size and order-0 bound of one stored stream."""

    coder: str
    nbytes: int
    model_bytes: int
    symbols: int
    alphabet: int
    entropy_bytes: float
    coding: Optional[str] = None  # positions: "bitmap", "gaps" or "ctx"; indices: "ctx" or None (order-0)


@dataclass
class StoredLayer:
    name: str
    module: str
    kind: str
    quantized: QuantizedLayer
    positions: StreamStats
    indices: StreamStats
    winograd: Optional[dict]  # {"m", "r", "threshold", "sparsity"} or None


@dataclass
class JszContents:
    manifest: dict
    layers: dict[str, StoredLayer]
    raw: dict[str, torch.Tensor]
    file_size: int

    @property
    def arch(self) -> Optional[dict]:
        return self.manifest.get("arch")


def _shortest_float32(value: float) -> float:
    """The float64 whose shortest repr is the shortest decimal that still reads back as the same
    float32: keeps the JSON small and exact."""
    single = np.float32(value)
    short = float(str(single))
    return short if np.float32(short) == single else float(single)


def _raw_bytes(tensor: torch.Tensor) -> tuple[str, bytes]:
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype not in _DTYPE_NAMES:
        raise ValueError(f"cannot store a {tensor.dtype} tensor; allowed: {sorted(RAW_DTYPES)}")
    if tensor.numel() == 0:
        return _DTYPE_NAMES[tensor.dtype], b""
    return _DTYPE_NAMES[tensor.dtype], tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def _winograd_entry(value: Optional[Mapping]) -> Optional[dict]:
    if value is None:
        return None
    entry = {"m": int(value["m"]), "r": int(value["r"]), "threshold": float(value["threshold"])}
    entry["sparsity"] = None if value.get("sparsity") is None else float(value["sparsity"])
    return entry


def layer_record(
    name: str, layer: QuantizedLayer, coder: str, winograd: Optional[Mapping], sections: list[bytes], contexts: bool = True
) -> dict:
    """Code ``layer``'s two streams onto ``sections`` and return its version-3 manifest record.
    ``contexts=False`` leaves out the ctx codings of positions and indices (order-0 codings only).

    The record names no section and leaves out what follows from other fields (docs/format.md
    section 2): ``sections`` must already hold the codebook section (the caller fills it with
    :func:`.codebooks.pack_codebooks` once every layer is in), and the streams go after it in layer
    order. Only a gap stream states its symbol count."""
    _check_layer(name, layer)
    shape = tuple(layer.shape) if contexts else None
    coding, position_stream = encode_positions(layer.positions, layer.numel, coder, shape=shape)
    alphabet = max(1, len(layer.codebook))
    index_data = encode_symbols(layer.indices, alphabet, coder).data
    indices = {"coder": coder}
    if contexts and coder == "ans" and supports_index_contexts(alphabet, layer.nnz):
        context_data = encode_context_indices(layer.indices, layer.positions, layer.shape, alphabet)[0]
        if len(context_data) < len(index_data):  # kept only where it wins (format version 5)
            index_data, indices = context_data, {"coder": coder, "coding": CONTEXT_CODING}
    sections += [position_stream.data, index_data]
    positions = {"coding": coding, "coder": coder}
    if coding == "gaps":  # escapes make its length something the decoder cannot work out
        positions["symbols"] = position_stream.count
    return {
        "name": name,
        "kind": layer.kind,
        "shape": list(layer.shape),
        "quantizer": layer.quantizer,
        "bits": layer.bits,
        "codebook": len(layer.codebook),
        "dither": None if layer.quantizer != "universal" else {"seed": int(layer.dither_seed), "step": _shortest_float32(layer.dither_step)},
        "nnz": layer.nnz,
        "positions": positions,
        "indices": indices,
        "winograd": _winograd_entry(winograd),
    }


def raw_record(name: str, tensor: torch.Tensor, sections: list[bytes]) -> dict:
    """Append ``tensor``'s bytes to ``sections`` (after every layer's streams) and return its
    version-3 manifest record, which names no section."""
    dtype, payload = _raw_bytes(tensor)
    sections.append(payload)
    return {"name": name, "dtype": dtype, "shape": list(tensor.shape)}


def _check_layer(name: str, layer: QuantizedLayer) -> None:
    """Refuse to write what load() would refuse to read."""
    if not name.endswith(".weight") or name == ".weight":
        raise ValueError(f"compressed tensor names are '<module>.weight', got {name!r}")
    if layer.quantizer not in QUANTIZERS:
        raise ValueError(f"{name}: unknown quantizer {layer.quantizer!r}")
    if not 1 <= layer.bits <= MAX_BITS:
        raise ValueError(f"{name}: bits {layer.bits} outside 1..{MAX_BITS}")
    if len(layer.codebook) > (1 << layer.bits) - 1:
        raise ValueError(f"{name}: codebook of {len(layer.codebook)} entries exceeds 2^{layer.bits} - 1")
    if not np.isfinite(layer.codebook).all():
        raise ValueError(f"{name}: codebook has non-finite values")
    if layer.kind not in ("conv", "linear"):
        raise ValueError(f"{name}: kind must be 'conv' or 'linear', got {layer.kind!r}")
    if layer.positions.shape != layer.indices.shape:
        raise ValueError(f"{name}: {layer.positions.size} positions but {layer.indices.size} indices")
    positions = layer.positions
    if positions.size and (positions[0] < 0 or positions[-1] >= layer.numel or np.any(np.diff(positions) <= 0)):
        raise ValueError(f"{name}: positions must be strictly increasing flat indices below {layer.numel}")
    if layer.indices.size and (len(layer.codebook) == 0 or int(layer.indices.max()) >= len(layer.codebook)):
        raise ValueError(f"{name}: index beyond the codebook")
    if layer.quantizer == "universal":
        step = layer.dither_step
        if layer.dither_seed is None or step is None or not (0 < step < math.inf) or not 0 <= layer.dither_seed < (1 << 63):
            raise ValueError(f"{name}: universal quantization needs a dither seed in [0, 2^63) and a positive step")


def decode_layer(entry: dict, sections: list[memoryview], version: int = VERSION) -> StoredLayer:
    """A validated layer record's streams decoded (``version``: the file's; the adaptive ANS
    model exists from version 3 on)."""
    name, numel, nnz = entry["name"], entry["parameter_count"], entry["nnz"]
    pos, idx = entry["positions"], entry["indices"]
    adaptive = version >= 3
    try:
        positions, position_symbols, position_model = decode_positions(
            sections[pos["section"]], pos["coding"], pos["symbols"], numel, nnz, pos["coder"], tuple(entry["shape"]), adaptive=adaptive
        )
        alphabet = max(1, len(entry["codebook"]))
        if idx.get("coding") == CONTEXT_CODING:
            indices, index_model = decode_context_indices(sections[idx["section"]], positions, entry["shape"], nnz, alphabet)
        else:
            indices, index_model = decode_symbols(sections[idx["section"]], nnz, alphabet, idx["coder"], adaptive=adaptive)
    except FormatError as error:
        raise FormatError(f"layer {name!r}: {error}") from None
    position_alphabet = GAP_ALPHABET if pos["coding"] == "gaps" else 2
    if position_symbols is None:  # ctx: its bound is the map's order-0 entropy
        position_entropy = bitmap_entropy_bytes(numel, nnz)
    else:
        position_entropy = order0_entropy_bits(np.bincount(position_symbols, minlength=position_alphabet)) / 8
    dither = entry["dither"]
    quantized = QuantizedLayer(
        shape=tuple(entry["shape"]),
        positions=positions,
        indices=indices.astype(index_dtype(entry["bits"]), copy=False),
        codebook=np.asarray(entry["codebook"], dtype=np.float32),
        quantizer=entry["quantizer"],
        bits=entry["bits"],
        kind=entry["kind"],
        dither_seed=None if dither is None else dither["seed"],
        dither_step=None if dither is None else float(np.float32(dither["step"])),
    )
    position_stats = StreamStats(
        pos["coder"], len(sections[pos["section"]]), position_model, pos["symbols"], position_alphabet,
        position_entropy, pos["coding"],
    )
    index_stats = StreamStats(
        idx["coder"], len(sections[idx["section"]]), index_model, nnz, alphabet,
        order0_entropy_bits(np.bincount(indices, minlength=alphabet)) / 8 if nnz else 0.0, idx.get("coding"),
    )
    return StoredLayer(name, entry["module"], entry["kind"], quantized, position_stats, index_stats, entry["winograd"])


def decode_raw(entry: dict, sections: list[memoryview]) -> torch.Tensor:
    dtype, shape = RAW_DTYPES[entry["dtype"]], tuple(entry["shape"])
    payload = sections[entry["section"]]
    if len(payload) == 0:
        return torch.empty(shape, dtype=dtype)
    tensor = torch.frombuffer(bytearray(payload), dtype=dtype).reshape(shape)
    if dtype == torch.bool and bool((tensor.view(torch.uint8) > 1).any()):
        raise FormatError(f"raw tensor {entry['name']!r}: bool bytes other than 0 and 1")
    return tensor
