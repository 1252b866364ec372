"""Writing and reading a ``.jsz`` file (byte layout: docs/format.md).

The file's three layers each have a module: :mod:`.framing` (header, section table, checksums),
:mod:`.manifest` (the schema of the JSON manifest) and :mod:`.records` (each stored tensor's
record and sections); :mod:`.codebooks` packs every layer's codebook into section 0 (format
versions 3 and 4). This module puts them together.

:func:`load` checks the frame (sizes, CRCs), then the manifest schema and every count against the
layer shapes and stream lengths, then a memory budget, all before it decodes a stream. Anything
wrong raises :class:`FormatError` with one line saying what.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..utils import atomic_write_bytes
from .codebooks import CODEBOOK_DTYPES, narrow_codebook, pack_codebooks
from .entropy import CODERS, DEFAULT_CODER
from .errors import FormatError
from .framing import MAGIC, VERSION, pack, require_little_endian, unpack
from .manifest import CODEBOOK_SECTION, RAW_DTYPES, planned_bytes, validate_manifest
from .quantize import QuantizedLayer
from .records import JszContents, StoredLayer, StreamStats, decode_layer, decode_raw, layer_record, raw_record

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
    "recode",
    "load",
    "loads",
    "read_manifest",
    "planned_bytes",
]

#: load() refuses files whose decoding (see planned_bytes: either domain, runtime copies
#: included) would need more than this many times the file size. Real files need 85-330x, a conv
#: network at 75x compression about 700x (docs/format.md section 5).
DEFAULT_MAX_EXPANSION = 1024


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
    contexts: bool = True,
    codebook_dtype: str = "float32",
) -> Path:
    """Entropy-code ``layers`` and write the ``.jsz`` file atomically (temp file + ``os.replace``).

    ``raw``: tensors stored losslessly (biases, BatchNorm parameters and buffers).
    ``winograd``: per layer name, ``{"m", "r", "threshold", "sparsity"}`` for layers with a
    Winograd form. ``original_parameter_count`` defaults to the layer and raw element counts.
    ``recipe`` and ``provenance`` (e.g. the data set and command line) are stored as given; both
    must be plain JSON values. ``input_size`` ([C, H, W]) and ``maps`` (per layer name,
    ``{"output_size": [H, W], "groups": g}``) record the shapes MAC counts need (optional keys).
    ``contexts``: with the ans coder, also try the context-modelled position and index codings per
    layer (each kept where it is smaller); False writes order-0 codings only. ``codebook_dtype``:
    ``"float32"`` (exact) or ``"float16"`` (half the codebook bytes; every value rounded, refused
    where that overflows).
    """
    require_little_endian()
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
    sections: list[bytes] = [b""]  # CODEBOOK_SECTION, filled once every layer is in
    layer_entries = []
    for name, layer in layers.items():
        layer_entries.append(layer_record(name, layer, coder, winograd.get(name), sections, contexts))
        if maps is not None and name in maps:
            layer_entries[-1]["output_size"] = [int(v) for v in maps[name]["output_size"]]
            layer_entries[-1]["groups"] = int(maps[name]["groups"])
    raw_entries = [raw_record(name, tensor, sections) for name, tensor in raw.items()]
    if codebook_dtype not in CODEBOOK_DTYPES:
        raise ValueError(f"codebook_dtype must be one of {', '.join(CODEBOOK_DTYPES)}, got {codebook_dtype!r}")
    sections[CODEBOOK_SECTION] = pack_codebooks([narrow_codebook(layer.codebook, codebook_dtype, name) for name, layer in layers.items()], codebook_dtype)
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
        "codebook_dtype": codebook_dtype,
        "layers": layer_entries,
        "raw": raw_entries,
    }
    if input_size is not None:
        manifest["input_size"] = [int(v) for v in input_size]
    return atomic_write_bytes(path, pack(manifest, sections))


def recode(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    coder: str = DEFAULT_CODER,
    contexts: bool = True,
    max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION,
) -> tuple[int, int]:
    """Write ``source``'s weights again in this format version, with this version's coders: the
    same quantized values (positions, indices, codebooks in their stored precision, dithers) and
    the same raw tensors, architecture, recipe and map sizes; only the coding changes. The new
    file's provenance adds ``recoded`` (the source's format version and tool). Returns
    (source bytes, target bytes). Raises :class:`FormatError` for a bad source file."""
    contents = load(source, max_expansion=max_expansion)
    manifest = contents.manifest
    entries = {entry["name"]: entry for entry in manifest["layers"]}
    maps = {name: {"output_size": entry["output_size"], "groups": entry["groups"]} for name, entry in entries.items() if "output_size" in entry}
    provenance = dict(manifest.get("provenance") or {})
    provenance["recoded"] = {"from_version": manifest["version"], "from_tool": manifest["tool"]}
    written = save(
        target,
        {name: stored.quantized for name, stored in contents.layers.items()},
        contents.raw,
        arch=manifest.get("arch"),
        original_parameter_count=manifest["original_parameter_count"],
        coder=coder,
        winograd={name: stored.winograd for name, stored in contents.layers.items() if stored.winograd is not None},
        recipe=manifest.get("recipe"),
        provenance=provenance,
        input_size=manifest.get("input_size"),
        maps=maps or None,
        contexts=contexts,
        codebook_dtype=manifest.get("codebook_dtype", "float32"),
    )
    return contents.file_size, written.stat().st_size


def _tool_version() -> str:
    try:
        return version("jointsparse")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        return "unknown"


def load(path: str | os.PathLike, *, max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION) -> JszContents:
    """Read, validate and decode a ``.jsz`` file. Raises :class:`FormatError` for a bad file.

    Everything is validated before any stream is decoded; the decoded data may take at most
    ``max_expansion`` times the file size (see :func:`planned_bytes`); pass
    ``max_expansion=None`` to lift that cap for a file you trust.
    """
    require_little_endian()
    data = Path(path).read_bytes()
    return loads(data, max_expansion=max_expansion)


def read_manifest(path: str | os.PathLike) -> dict:
    """The validated manifest of a ``.jsz`` file, without decoding any stream."""
    manifest, sections = unpack(Path(path).read_bytes())
    return validate_manifest(manifest, sections)


def loads(data: bytes, *, max_expansion: Optional[float] = DEFAULT_MAX_EXPANSION) -> JszContents:
    """:func:`load` from bytes in memory."""
    manifest, sections = unpack(data)
    manifest = validate_manifest(manifest, sections)
    planned = planned_bytes(manifest["layers"], manifest["raw"])
    if max_expansion is not None and planned > max_expansion * len(data):
        raise FormatError(
            f"decoding needs {planned} bytes, over {max_expansion:g}x the {len(data)}-byte file; "
            "pass max_expansion=None only for a file you trust"
        )
    layers = {entry["name"]: decode_layer(entry, sections, manifest["version"]) for entry in manifest["layers"]}
    raw = {entry["name"]: decode_raw(entry, sections) for entry in manifest["raw"]}
    return JszContents(manifest, layers, raw, len(data))
