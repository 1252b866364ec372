"""The ``.jsz`` file: header, section table, JSON manifest, binary sections, checksums.

The byte layout is specified in docs/format.md. In short (all integers little-endian)::

    magic "\\x89JSZ\\r\\n\\x1a\\n" | u16 version | u16 flags | u32 section count | u32 manifest length
    | u32 manifest CRC32 | u64 file length | section table (u64 length, u32 CRC32, u32 zero) x count
    | manifest (UTF-8 JSON) | sections, back to back | u32 CRC32 of everything before | "JSZE"

:func:`load` checks the frame (sizes, CRCs), then the manifest schema and every count against the
layer shapes and stream lengths, then a memory budget, all before it decodes a stream. Anything
wrong raises :class:`FormatError` with one line saying what.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
import zstandard

from ..utils import atomic_write_bytes
from .entropy import (
    CODERS,
    DEFAULT_CODER,
    GAP_ALPHABET,
    POSITION_CODINGS,
    decode_positions,
    decode_symbols,
    encode_positions,
    encode_symbols,
    order0_entropy_bits,
    position_symbol_count,
)
from .errors import FormatError
from .quantize import MAX_BITS, QUANTIZERS, QuantizedLayer, index_dtype

__all__ = [
    "MAGIC",
    "VERSION",
    "DEFAULT_MAX_EXPANSION",
    "RAW_DTYPES",
    "StreamStats",
    "StoredLayer",
    "JszContents",
    "pack",
    "unpack",
    "save",
    "load",
    "loads",
    "read_manifest",
    "planned_bytes",
]

MAGIC = b"\x89JSZ\r\n\x1a\n"
END_MARKER = b"JSZE"
VERSION = 1
FLAG_ZSTD_MANIFEST = 1
_HEADER = struct.Struct("<8sHHIIIQ")
_SECTION = struct.Struct("<QII")
_TRAILER = struct.Struct("<I4s")
MAX_MANIFEST_BYTES = 64 << 20
_MANIFEST_EXPANSION = 256
MAX_NDIM = 8
MAX_WINOGRAD_TILE = 16  # t = m + r - 1; bounds the Cook-Toom work a file can ask for
#: load() refuses files whose decoded data (see planned_bytes) exceeds this many times the file
#: size. Published whole-model compression ratios are below ~130x (and planned_bytes is about
#: 1.3-1.5x the dense float32 size at typical densities), so 1024 leaves ample room for real files.
DEFAULT_MAX_EXPANSION = 1024

RAW_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in RAW_DTYPES.items()}


def _require_little_endian() -> None:
    if sys.byteorder != "little":  # raw sections are copied from native memory
        raise NotImplementedError(".jsz raw sections are little-endian; big-endian hosts are not supported")


# -- the frame ------------------------------------------------------------------------------
def _shortest_float32(value: float) -> float:
    """The float64 whose shortest repr is the shortest decimal that still reads back as the same
    float32: keeps the JSON small and exact."""
    single = np.float32(value)
    short = float(str(single))
    return short if np.float32(short) == single else float(single)


def pack(manifest: Mapping[str, Any], sections: list[bytes]) -> bytes:
    """Frame a manifest and its binary sections into the bytes of a ``.jsz`` file.

    The manifest is stored zstd-compressed (header flag bit 0): its repeated keys and decimal
    codebooks would otherwise cost a tenth of a small model's file.
    """
    try:
        manifest_json = json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ValueError(f"manifest is not plain JSON (recipe and arch kwargs must be JSON values): {error}") from None
    if len(manifest_json) > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest of {len(manifest_json)} bytes exceeds {MAX_MANIFEST_BYTES}")
    manifest_bytes = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(manifest_json)
    table = b"".join(_SECTION.pack(len(s), zlib.crc32(s), 0) for s in sections)
    total = _HEADER.size + len(table) + len(manifest_bytes) + sum(len(s) for s in sections) + _TRAILER.size
    header = _HEADER.pack(MAGIC, VERSION, FLAG_ZSTD_MANIFEST, len(sections), len(manifest_bytes), zlib.crc32(manifest_bytes), total)
    body = b"".join([header, table, manifest_bytes, *sections])
    return body + _TRAILER.pack(zlib.crc32(body), END_MARKER)


def _manifest_json(stored: bytes, flags: int) -> bytes:
    if not flags & FLAG_ZSTD_MANIFEST:
        return stored
    limit = min(MAX_MANIFEST_BYTES, _MANIFEST_EXPANSION * len(stored) + (64 << 10))
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as error:
        raise FormatError(f"manifest is not a zstd frame: {error}") from None
    if not 0 <= declared <= limit:
        raise FormatError(f"compressed manifest declares {declared} bytes (limit {limit})")
    try:
        raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=declared)
    except zstandard.ZstdError as error:
        raise FormatError(f"corrupt compressed manifest: {error}") from None
    if len(raw) != declared:
        raise FormatError("compressed manifest decodes to a length other than it declares")
    return raw


def unpack(data: bytes) -> tuple[dict, list[memoryview]]:
    """Check the frame of a ``.jsz`` file and return ``(manifest, sections)``.

    Checks, in order: size, magic, version, flags, declared length (truncation), end marker,
    whole-file CRC, section table bounds, manifest and section CRCs, JSON syntax.
    """
    view = memoryview(data)
    minimum = _HEADER.size + _TRAILER.size
    if len(data) < 8 or bytes(view[:8]) != MAGIC:
        if len(data) < 8 and MAGIC.startswith(bytes(view)):
            raise FormatError(f"truncated file: {len(data)} bytes")
        raise FormatError("not a .jsz file (bad magic)")
    if len(data) < minimum:
        raise FormatError(f"truncated file: {len(data)} bytes, the header alone needs {minimum}")
    magic, version, flags, count, manifest_length, manifest_crc, total = _HEADER.unpack_from(view, 0)
    if version != VERSION:
        raise FormatError(f"unknown .jsz version {version} (this reader knows version {VERSION})")
    if flags & ~FLAG_ZSTD_MANIFEST:
        raise FormatError(f"unsupported .jsz flags 0x{flags:04x}")
    if total != len(data):
        if total > len(data):
            raise FormatError(f"truncated file: header says {total} bytes, file has {len(data)}")
        raise FormatError(f"file has {len(data) - total} bytes after its declared end")
    file_crc, marker = _TRAILER.unpack_from(view, len(data) - _TRAILER.size)
    if marker != END_MARKER:
        raise FormatError("missing end marker (truncated or corrupted file)")
    if zlib.crc32(view[: len(data) - _TRAILER.size]) != file_crc:
        raise FormatError("file checksum mismatch (corrupted file)")
    table_end = _HEADER.size + _SECTION.size * count
    if table_end + manifest_length + _TRAILER.size > len(data):
        raise FormatError(f"section table ({count} entries) and manifest ({manifest_length} bytes) overrun the file")
    if manifest_length > MAX_MANIFEST_BYTES:
        raise FormatError(f"manifest of {manifest_length} bytes exceeds {MAX_MANIFEST_BYTES}")
    entries = [_SECTION.unpack_from(view, _HEADER.size + i * _SECTION.size) for i in range(count)]
    offset = table_end + manifest_length
    payload_end = len(data) - _TRAILER.size
    if sum(length for length, _, _ in entries) != payload_end - offset:
        raise FormatError("section lengths do not add up to the file size (inconsistent sizes)")
    manifest_bytes = view[table_end:offset]
    if zlib.crc32(manifest_bytes) != manifest_crc:
        raise FormatError("manifest checksum mismatch")
    sections = []
    for index, (length, crc, reserved) in enumerate(entries):
        if reserved != 0:
            raise FormatError(f"section {index}: reserved field is not zero")
        section = view[offset : offset + length]
        if zlib.crc32(section) != crc:
            raise FormatError(f"section {index}: checksum mismatch")
        sections.append(section)
        offset += length
    return _parse_json(_manifest_json(bytes(manifest_bytes), flags)), sections


def _reject_constant(name: str) -> None:
    raise FormatError(f"manifest contains non-finite number {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise FormatError("manifest has a duplicate key")
    return result


def _parse_json(raw: bytes) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except FormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FormatError(f"manifest is not valid JSON: {str(error).splitlines()[0][:200]}") from None
    if not isinstance(manifest, dict):
        raise FormatError("manifest is not a JSON object")
    return manifest


# -- manifest schema helpers ----------------------------------------------------------------
def _field(obj: Mapping, key: str, kinds: type | tuple[type, ...], where: str, nullable: bool = False) -> Any:
    """``obj[key]`` checked against ``kinds``; every field is required, ``nullable`` ones may be null."""
    if key not in obj:
        raise FormatError(f"{where}: missing field {key!r}")
    value = obj[key]
    if value is None and nullable:
        return None
    # bool is an int in Python; a JSON true/false is never a valid count or float here.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise FormatError(f"{where}: field {key!r} has the wrong type (bool)")
    if not isinstance(value, kinds):
        raise FormatError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _count(obj: Mapping, key: str, where: str, low: int = 0, high: int = 1 << 62) -> int:
    value = _field(obj, key, int, where)
    if not low <= value <= high:
        raise FormatError(f"{where}: {key} = {value} outside [{low}, {high}]")
    return value


def _real(obj: Mapping, key: str, where: str, nullable: bool = False) -> Optional[float]:
    value = _field(obj, key, (int, float), where, nullable)
    if value is None:
        return None
    try:
        value = float(value)  # a huge JSON integer overflows here
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise FormatError(f"{where}: {key} is not finite")
    return value


def _shape(obj: Mapping, where: str) -> tuple[int, ...]:
    shape = _field(obj, "shape", list, where)
    if len(shape) > MAX_NDIM or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < (1 << 40) for s in shape):
        raise FormatError(f"{where}: invalid shape {shape!r:.80}")
    return tuple(shape)


def _is_float32(value: Any) -> bool:
    """A JSON number that reads as a finite float32."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)  # a huge JSON integer overflows here
    except OverflowError:
        return False
    with np.errstate(over="ignore"):
        return math.isfinite(value) and bool(np.isfinite(np.float32(value)))


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)  # exact Python ints: no overflow on hostile shapes


# -- data classes returned by load ----------------------------------------------------------
@dataclass(frozen=True)
class StreamStats:
    """Size and order-0 bound of one stored stream."""

    coder: str
    nbytes: int
    model_bytes: int
    symbols: int
    alphabet: int
    entropy_bytes: float
    coding: Optional[str] = None  # position streams: "bitmap" or "gaps"


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


# -- writing --------------------------------------------------------------------------------
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


def save(
    path: str | os.PathLike,
    layers: Mapping[str, QuantizedLayer],
    raw: Optional[Mapping[str, torch.Tensor]] = None,
    *,
    arch: Optional[Mapping[str, Any]] = None,
    original_parameter_count: Optional[int] = None,
    coder: str = DEFAULT_CODER,
    winograd: Optional[Mapping[str, Optional[Mapping]]] = None,
    recipe: Optional[Mapping[str, Any]] = None,
    provenance: Optional[Mapping[str, Any]] = None,
    tool_version: Optional[str] = None,
    input_size: Optional[list[int]] = None,
    maps: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Path:
    """Entropy-code ``layers`` and write the ``.jsz`` file atomically (temp file + ``os.replace``).

    ``raw``: tensors stored losslessly (biases, BatchNorm parameters and buffers).
    ``winograd``: per layer name, ``{"m", "r", "threshold", "sparsity"}`` for layers with a
    Winograd form. ``original_parameter_count`` defaults to the layer and raw element counts.
    ``recipe`` and ``provenance`` (e.g. the data set and command line) are stored as given; both
    must be plain JSON values. ``input_size`` ([C, H, W]) and ``maps`` (per layer name,
    ``{"output_size": [H, W], "groups": g}``) record the shapes MAC counts need (optional keys).
    """
    _require_little_endian()
    if coder not in CODERS:
        raise ValueError(f"unknown coder {coder!r}; use one of {CODERS}")
    raw = dict(raw or {})
    overlap = sorted(set(raw) & set(layers))
    if overlap:
        raise ValueError(f"tensors {overlap} are both compressed and raw")
    winograd = dict(winograd or {})
    unknown = sorted(set(winograd) - set(layers))
    if unknown:
        raise ValueError(f"Winograd entries for unknown layers {unknown}")
    sections: list[bytes] = []
    layer_entries = []
    for name, layer in layers.items():
        _check_layer(name, layer)
        coding, position_stream = encode_positions(layer.positions, layer.numel, coder)
        index_stream = encode_symbols(layer.indices, max(1, len(layer.codebook)), coder)
        sections += [position_stream.data, index_stream.data]
        module = name[: -len(".weight")]
        layer_entries.append(
            {
                "name": name,
                "module": module,
                "kind": layer.kind,
                "shape": list(layer.shape),
                "parameter_count": layer.numel,
                "quantizer": layer.quantizer,
                "bits": layer.bits,
                "codebook": [_shortest_float32(v) for v in layer.codebook],
                "dither": None if layer.quantizer != "universal" else {"seed": int(layer.dither_seed), "step": _shortest_float32(layer.dither_step)},
                "nnz": layer.nnz,
                "positions": {"coding": coding, "coder": coder, "section": len(sections) - 2, "symbols": position_stream.count},
                "indices": {"coder": coder, "section": len(sections) - 1, "symbols": index_stream.count},
                "winograd": _winograd_entry(winograd.get(name)),
            }
        )
        if maps is not None and name in maps:
            layer_entries[-1]["output_size"] = [int(v) for v in maps[name]["output_size"]]
            layer_entries[-1]["groups"] = int(maps[name]["groups"])
    raw_entries = []
    for name, tensor in raw.items():
        dtype, payload = _raw_bytes(tensor)
        sections.append(payload)
        raw_entries.append({"name": name, "dtype": dtype, "shape": list(tensor.shape), "section": len(sections) - 1})
    if original_parameter_count is None:
        original_parameter_count = sum(layer.numel for layer in layers.values()) + sum(t.numel() for t in raw.values())
    manifest = {
        "format": "jsz",
        "version": VERSION,
        "tool": {"name": "jointsparse", "version": tool_version or _tool_version()},
        "arch": None if arch is None else {"name": str(arch["name"]), "kwargs": dict(arch.get("kwargs", {}))},
        "recipe": None if recipe is None else dict(recipe),
        "provenance": None if provenance is None else dict(provenance),
        "original_parameter_count": int(original_parameter_count),
        "layers": layer_entries,
        "raw": raw_entries,
    }
    if input_size is not None:
        manifest["input_size"] = [int(v) for v in input_size]
    return atomic_write_bytes(path, pack(manifest, sections))


def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("jointsparse")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        return "unknown"


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


# -- reading --------------------------------------------------------------------------------
def planned_bytes(manifest_layers: list[dict], raw_entries: list[dict]) -> int:
    """Upper bound of the bytes load() allocates for decoded data, from validated manifest counts.

    Per layer: the dense float32 tensor (4 per weight), the bitmap symbols if any (1 per weight),
    and per non-zero its int64 position, index and float32 value/dither (8 + 2 + 4 + 4 bytes);
    plus every raw tensor. Gap symbols are bounded by the bitmap term.
    """
    total = 0
    for entry in manifest_layers:
        numel, nnz = entry["parameter_count"], entry["nnz"]
        total += 5 * numel + 18 * nnz
    for entry in raw_entries:
        total += _numel(tuple(entry["shape"])) * RAW_DTYPES[entry["dtype"]].itemsize
    return total


def _validate_layer(entry: Any, index: int, section_count: int, claimed: set[int]) -> dict:
    where = f"layer {index}"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: not a JSON object")
    name = _field(entry, "name", str, where)
    where = f"layer {name!r}"
    if name != _field(entry, "module", str, where) + ".weight":
        raise FormatError(f"{where}: name must be the module name plus '.weight'")
    if _field(entry, "kind", str, where) not in ("conv", "linear"):
        raise FormatError(f"{where}: kind must be 'conv' or 'linear'")
    shape = _shape(entry, where)
    numel = _count(entry, "parameter_count", where)
    if numel != _numel(shape):
        raise FormatError(f"{where}: parameter_count {numel} does not match shape {list(shape)}")
    quantizer = _field(entry, "quantizer", str, where)
    if quantizer not in QUANTIZERS:
        raise FormatError(f"{where}: unknown quantizer {quantizer!r}")
    bits = _count(entry, "bits", where, 1, MAX_BITS)
    codebook = _field(entry, "codebook", list, where)
    if len(codebook) > (1 << bits) - 1:
        raise FormatError(f"{where}: codebook of {len(codebook)} entries exceeds 2^{bits} - 1")
    if not all(_is_float32(v) for v in codebook):
        raise FormatError(f"{where}: codebook holds something other than a finite float32 value")
    dither = _field(entry, "dither", dict, where, nullable=True)
    if (dither is None) != (quantizer != "universal"):
        raise FormatError(f"{where}: dither must be given exactly for universal quantization")
    if dither is not None:
        _count(dither, "seed", where, 0, (1 << 63) - 1)
        step = _real(dither, "step", where)
        if not _is_float32(step) or not np.float32(step) > 0:
            raise FormatError(f"{where}: dither step must be a positive float32 value")
    nnz = _count(entry, "nnz", where, 0, numel)
    if nnz and not codebook:
        raise FormatError(f"{where}: {nnz} non-zeros but an empty codebook")
    streams = {}
    for key in ("positions", "indices"):
        stream = _field(entry, key, dict, where)
        if _field(stream, "coder", str, where) not in CODERS:
            raise FormatError(f"{where}: unknown {key} coder {stream['coder']!r}")
        section = _count(stream, "section", where, 0, section_count - 1) if section_count else None
        if section is None or section in claimed:
            raise FormatError(f"{where}: {key} section missing or shared")
        claimed.add(section)
        _count(stream, "symbols", where)
        streams[key] = stream
    coding = _field(streams["positions"], "coding", str, where)
    if coding not in POSITION_CODINGS:
        raise FormatError(f"{where}: unknown position coding {coding!r}")
    position_symbol_count(coding, numel, nnz, streams["positions"]["symbols"])
    if streams["indices"]["symbols"] != nnz:
        raise FormatError(f"{where}: {streams['indices']['symbols']} index symbols for {nnz} non-zeros")
    winograd = _field(entry, "winograd", dict, where, nullable=True)
    if winograd is not None:
        m = _count(winograd, "m", where, 1, MAX_WINOGRAD_TILE)
        r = _count(winograd, "r", where, 2, MAX_WINOGRAD_TILE)
        if m + r - 1 > MAX_WINOGRAD_TILE:
            raise FormatError(f"{where}: Winograd tile F({m},{r}) larger than {MAX_WINOGRAD_TILE}")
        threshold = _real(winograd, "threshold", where)
        _real(winograd, "sparsity", where, nullable=True)
        if threshold < 0:
            raise FormatError(f"{where}: negative Winograd threshold")
        if len(shape) != 4 or shape[2] != r or shape[3] != r:
            raise FormatError(f"{where}: Winograd F({m},{r}) does not fit shape {list(shape)}")
    return entry


def _validate_raw(entry: Any, index: int, section_count: int, claimed: set[int], sections: list[memoryview]) -> dict:
    where = f"raw tensor {index}"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: not a JSON object")
    where = f"raw tensor {_field(entry, 'name', str, where)!r}"
    dtype = _field(entry, "dtype", str, where)
    if dtype not in RAW_DTYPES:
        raise FormatError(f"{where}: dtype {dtype!r} not allowed; allowed: {sorted(RAW_DTYPES)}")
    shape = _shape(entry, where)
    section = _count(entry, "section", where, 0, max(section_count - 1, 0)) if section_count else None
    if section is None or section in claimed:
        raise FormatError(f"{where}: section missing or shared")
    claimed.add(section)
    expected = _numel(shape) * RAW_DTYPES[dtype].itemsize
    if len(sections[section]) != expected:
        raise FormatError(f"{where}: section has {len(sections[section])} bytes, {dtype}{list(shape)} needs {expected}")
    return entry


def _validate_manifest(manifest: dict, sections: list[memoryview]) -> None:
    if manifest.get("format") != "jsz":
        raise FormatError("manifest: format is not 'jsz'")
    if _field(manifest, "version", int, "manifest") != VERSION:
        raise FormatError(f"manifest: version {manifest['version']} differs from the header's {VERSION}")
    tool = _field(manifest, "tool", dict, "manifest")
    _field(tool, "name", str, "manifest tool")
    _field(tool, "version", str, "manifest tool")
    arch = _field(manifest, "arch", dict, "manifest", nullable=True)
    if arch is not None:
        _field(arch, "name", str, "manifest arch")
        _field(arch, "kwargs", dict, "manifest arch")
    _field(manifest, "recipe", dict, "manifest", nullable=True)
    _field(manifest, "provenance", dict, "manifest", nullable=True)
    _count(manifest, "original_parameter_count", "manifest")
    claimed: set[int] = set()
    layers = [_validate_layer(e, i, len(sections), claimed) for i, e in enumerate(_field(manifest, "layers", list, "manifest"))]
    raws = [_validate_raw(e, i, len(sections), claimed, sections) for i, e in enumerate(_field(manifest, "raw", list, "manifest"))]
    names = [e["name"] for e in layers] + [e["name"] for e in raws]
    if len(set(names)) != len(names):
        raise FormatError("manifest: a tensor name appears twice")
    if len(claimed) != len(sections):
        raise FormatError(f"manifest: {len(sections) - len(claimed)} sections belong to no tensor")


def _decode_layer(entry: dict, sections: list[memoryview]) -> StoredLayer:
    name, numel, nnz = entry["name"], entry["parameter_count"], entry["nnz"]
    pos, idx = entry["positions"], entry["indices"]
    try:
        positions, position_symbols, position_model = decode_positions(
            sections[pos["section"]], pos["coding"], pos["symbols"], numel, nnz, pos["coder"]
        )
        alphabet = max(1, len(entry["codebook"]))
        indices, index_model = decode_symbols(sections[idx["section"]], nnz, alphabet, idx["coder"])
    except FormatError as error:
        raise FormatError(f"layer {name!r}: {error}") from None
    position_alphabet = 2 if pos["coding"] == "bitmap" else GAP_ALPHABET
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
        order0_entropy_bits(np.bincount(position_symbols, minlength=position_alphabet)) / 8, pos["coding"],
    )
    index_stats = StreamStats(
        idx["coder"], len(sections[idx["section"]]), index_model, nnz, alphabet,
        order0_entropy_bits(np.bincount(indices, minlength=alphabet)) / 8 if nnz else 0.0,
    )
    return StoredLayer(name, entry["module"], entry["kind"], quantized, position_stats, index_stats, entry["winograd"])


def _decode_raw(entry: dict, sections: list[memoryview]) -> torch.Tensor:
    dtype, shape = RAW_DTYPES[entry["dtype"]], tuple(entry["shape"])
    payload = sections[entry["section"]]
    if len(payload) == 0:
        return torch.empty(shape, dtype=dtype)
    tensor = torch.frombuffer(bytearray(payload), dtype=dtype).reshape(shape)
    if dtype == torch.bool and bool((tensor.view(torch.uint8) > 1).any()):
        raise FormatError(f"raw tensor {entry['name']!r}: bool bytes other than 0 and 1")
    return tensor


def load(path: str | os.PathLike, *, max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION) -> JszContents:
    """Read, validate and decode a ``.jsz`` file. Raises :class:`FormatError` for a bad file.

    Everything is validated before any stream is decoded; the decoded data may take at most
    ``max_expansion`` times the file size (see :func:`planned_bytes`); pass
    ``max_expansion=None`` to lift that cap for a file you trust.
    """
    _require_little_endian()
    data = Path(path).read_bytes()
    return loads(data, max_expansion=max_expansion)


def read_manifest(path: str | os.PathLike) -> dict:
    """The validated manifest of a ``.jsz`` file, without decoding any stream."""
    manifest, sections = unpack(Path(path).read_bytes())
    _validate_manifest(manifest, sections)
    return manifest


def loads(data: bytes, *, max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION) -> JszContents:
    """:func:`load` from bytes in memory."""
    manifest, sections = unpack(data)
    _validate_manifest(manifest, sections)
    planned = planned_bytes(manifest["layers"], manifest["raw"])
    if max_expansion is not None and planned > max_expansion * len(data):
        raise FormatError(
            f"decoding needs {planned} bytes, over {max_expansion:g}x the {len(data)}-byte file; "
            "pass max_expansion=None only for a file you trust"
        )
    layers = {entry["name"]: _decode_layer(entry, sections) for entry in manifest["layers"]}
    raw = {entry["name"]: _decode_raw(entry, sections) for entry in manifest["raw"]}
    return JszContents(manifest, layers, raw, len(data))
