"""The manifest's schema: every field's type and range, and the counts that must agree with the
layer shapes and section lengths, checked before any stream is decoded."""

from __future__ import annotations

import base64
import math
from typing import Any, Mapping, Optional

import numpy as np
import torch

from .codebooks import CODEBOOK_DTYPES, unpack_codebooks
from .entropy import CODERS, CONTEXT_CODING, POSITION_CODINGS, position_symbol_count
from .errors import FormatError
from .framing import KNOWN_VERSIONS
from .index_context import MAX_ALPHABET as INDEX_CONTEXT_MAX_ALPHABET
from .index_context import supports as supports_index_contexts
from .quantize import MAX_BITS, QUANTIZERS

__all__ = ["RAW_DTYPES", "MAX_NDIM", "MAX_WINOGRAD_OUTPUT", "MAX_WINOGRAD_TILE", "CODEBOOK_SECTION", "validate_manifest", "planned_bytes"]

MAX_NDIM = 8
MAX_WINOGRAD_TILE = 16  # t = m + r - 1; bounds the Cook-Toom work a file can ask for
#: The largest Winograd output tile m. Real networks use F(2,3) to F(6,3); a larger m multiplies
#: the Winograd-domain weights by (t/r)^2 for no use (the transforms lose all float32 precision).
MAX_WINOGRAD_OUTPUT = 8

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


#: The largest output map side a layer record may state.
MAX_MAP_SIDE = 1 << 16

#: Version 3: section 0 holds the codebooks; layer i's position and index streams are sections
#: 1 + 2i and 2 + 2i; raw tensor j's bytes section 1 + 2L + j (L layers). The records name no
#: section: the order says it, and the table cannot hold one a tensor does not use.
CODEBOOK_SECTION = 0
#: Fields a version-3 record leaves out because they follow from others (docs/format.md section 2):
#: a reader refuses them there rather than guess which of two disagreeing values is meant.
_DERIVED_FIELDS = ("module", "parameter_count")


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


def _float32(value: Any) -> Optional[float]:
    """A JSON number as the float32 the decoder uses (held in a Python float), or None if it is
    not a number or not finite as a float32."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)  # a huge JSON integer overflows here
    except OverflowError:
        return None
    with np.errstate(over="ignore"):
        single = np.float32(value)
    return float(single) if np.isfinite(single) else None


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)  # exact Python ints: no overflow on hostile shapes


def _winograd_geometry(entry: Mapping) -> Optional[tuple[int, int]]:
    """``(W, P)`` of a Winograd-form layer: its Winograd-domain weights ``Cout * Cin/g * t * t``
    and the rows of its block-diagonal product ``t * t * Cout``; None for other layers."""
    winograd, shape = entry.get("winograd"), entry.get("shape")
    if not winograd or not shape or len(shape) != 4:
        return None
    t = winograd["m"] + winograd["r"] - 1
    return shape[0] * shape[1] * t * t, shape[0] * t * t


def planned_bytes(manifest_layers: list[dict], raw_entries: list[dict]) -> int:
    """Upper bound of the bytes that decoding allocates, in EITHER domain, from validated counts.

    Spatial, per layer of ``N`` weights with ``nnz`` coded: 12 N + 40 nnz (the decoded streams
    and dense float32 weights, the model that receives them, its sparse runtime copy), plus twice
    the raw tensors' bytes. Winograd, per Winograd-form layer with ``W`` Winograd-domain weights
    and ``P`` product rows (see ``_winograd_geometry``): 8 W + 8 P kept (the pruned float32
    weights and their sparse copy), plus for the largest such layer 16 W + 28 P of working memory
    while its sparse copy is built. ``G w G^T`` itself is computed in bounded float64 chunks.
    docs/format.md section 5 states the same bound.
    """
    total, working = 0, 0
    for entry in manifest_layers:
        numel, nnz = entry["parameter_count"], entry["nnz"]
        total += 12 * numel + 40 * nnz
        geometry = _winograd_geometry(entry)
        if geometry is not None:
            weights, rows = geometry
            total += 8 * weights + 8 * rows
            working = max(working, 16 * weights + 28 * rows)
    for entry in raw_entries:
        total += 2 * _numel(tuple(entry["shape"])) * RAW_DTYPES[entry["dtype"]].itemsize
    return total + working


def _binary_codebook(text: str, bits: int, version: int, where: str) -> list[float]:
    """A version-2 codebook: base64 of little-endian float32 values (docs/format.md section 2)."""
    if version < 2:
        raise FormatError(f"{where}: a base64 codebook in a version-{version} file")
    if len(text) > 4 * -(-4 * ((1 << bits) - 1) // 3):  # bounded before decoding
        raise FormatError(f"{where}: codebook text of {len(text)} characters exceeds 2^{bits} - 1 entries")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):  # binascii.Error is a ValueError
        raise FormatError(f"{where}: codebook is not valid base64") from None
    if len(raw) % 4:
        raise FormatError(f"{where}: codebook of {len(raw)} bytes is not whole float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float64).tolist()


def _absent(obj: Mapping, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if key in obj:
            raise FormatError(f"{where}: field {key!r} is not part of a version-3 record")


def validate_layer(
    entry: Any, index: int, section_count: int, claimed: set[int], version: int = KNOWN_VERSIONS[-1],
    streams_at: Optional[tuple[int, int]] = None,
) -> dict:
    """One ``layers`` entry checked, as a new record holding each value in the type the decoder
    uses (ints, float64 thresholds, float32 codebook values and dither step) and every field of
    the version-2 record (version 3 leaves out the derivable ones; they are filled in here).

    Version 3: ``streams_at`` gives the (positions, indices) sections the layer's place implies,
    and the record's ``codebook`` is its number of entries (the values are in the codebook
    section; :func:`validate_manifest` fills them in)."""
    where = f"layer {index}"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: not a JSON object")
    name = _field(entry, "name", str, where)
    where = f"layer {name!r}"
    if version >= 3:
        _absent(entry, _DERIVED_FIELDS, where)
        if not name.endswith(".weight") or name == ".weight":
            raise FormatError(f"{where}: name must be a module name plus '.weight'")
        module = name[: -len(".weight")]
    else:
        module = _field(entry, "module", str, where)
        if name != module + ".weight":
            raise FormatError(f"{where}: name must be the module name plus '.weight'")
    kind = _field(entry, "kind", str, where)
    if kind not in ("conv", "linear"):
        raise FormatError(f"{where}: kind must be 'conv' or 'linear'")
    shape = _shape(entry, where)
    numel = _numel(shape) if version >= 3 else _count(entry, "parameter_count", where)
    if numel != _numel(shape):
        raise FormatError(f"{where}: parameter_count {numel} does not match shape {list(shape)}")
    quantizer = _field(entry, "quantizer", str, where)
    if quantizer not in QUANTIZERS:
        raise FormatError(f"{where}: unknown quantizer {quantizer!r}")
    bits = _count(entry, "bits", where, 1, MAX_BITS)
    if version >= 3:
        entries = _count(entry, "codebook", where, 0, (1 << bits) - 1)
        codebook = [0.0] * entries  # placeholders of the right length; validate_manifest fills them
    else:
        codebook = _field(entry, "codebook", (list, str), where)
        if isinstance(codebook, str):
            codebook = _binary_codebook(codebook, bits, version, where)
    if len(codebook) > (1 << bits) - 1:
        raise FormatError(f"{where}: codebook of {len(codebook)} entries exceeds 2^{bits} - 1")
    codebook = [_float32(v) for v in codebook]
    if any(v is None for v in codebook):
        raise FormatError(f"{where}: codebook holds something other than a finite float32 value")
    dither = _field(entry, "dither", dict, where, nullable=True)
    if (dither is None) != (quantizer != "universal"):
        raise FormatError(f"{where}: dither must be given exactly for universal quantization")
    if dither is not None:
        seed = _count(dither, "seed", where, 0, (1 << 63) - 1)
        step = _float32(_field(dither, "step", (int, float), where))
        if step is None or not step > 0:
            raise FormatError(f"{where}: dither step must be a positive float32 value")
        dither = {"seed": seed, "step": step}
    nnz = _count(entry, "nnz", where, 0, numel)
    if nnz and not codebook:
        raise FormatError(f"{where}: {nnz} non-zeros but an empty codebook")
    streams = {}
    coding = _field(_field(entry, "positions", dict, where), "coding", str, where)
    if coding not in POSITION_CODINGS or (coding == CONTEXT_CODING and version < 2):
        raise FormatError(f"{where}: unknown position coding {coding!r} (in a version-{version} file)")
    for slot, key in enumerate(("positions", "indices")):
        stream = _field(entry, key, dict, where)
        coder = _field(stream, "coder", str, where)
        if coder not in CODERS:
            raise FormatError(f"{where}: unknown {key} coder {coder!r}")
        if streams_at is not None:  # version 3: implied by the layer's place
            _absent(stream, ("section",), f"{where} {key}")
            section = streams_at[slot]
        else:
            section = _count(stream, "section", where, 0, section_count - 1) if section_count else None
        if section is None or section in claimed:
            raise FormatError(f"{where}: {key} section missing or shared")
        claimed.add(section)
        if version >= 3 and not (key == "positions" and coding == "gaps"):
            # bitmap and ctx code one symbol per weight, indices one per non-zero: nothing to state
            _absent(stream, ("symbols",), f"{where} {key}")
            symbols = numel if key == "positions" else nnz
        else:
            symbols = _count(stream, "symbols", where)
        streams[key] = {"coder": coder, "section": section, "symbols": symbols}
    if coding == CONTEXT_CODING and streams["positions"]["coder"] != "ans":
        raise FormatError(f"{where}: ctx position coding needs the ans coder")
    if "coding" in entry["indices"]:  # version 5: "ctx"; absent (never null) means order-0
        index_coding = entry["indices"]["coding"]
        if version < 5 or index_coding != CONTEXT_CODING:
            raise FormatError(f"{where}: unknown index coding {index_coding!r} (in a version-{version} file; ctx is version 5)")
        if streams["indices"]["coder"] != "ans":
            raise FormatError(f"{where}: ctx index coding needs the ans coder")
        if not supports_index_contexts(len(codebook), nnz):
            raise FormatError(f"{where}: ctx index coding needs 2..{INDEX_CONTEXT_MAX_ALPHABET} codebook entries and a non-zero")
        streams["indices"]["coding"] = index_coding
    streams["positions"]["coding"] = coding
    position_symbol_count(coding, numel, nnz, streams["positions"]["symbols"])
    if streams["indices"]["symbols"] != nnz:
        raise FormatError(f"{where}: {streams['indices']['symbols']} index symbols for {nnz} non-zeros")
    winograd = _field(entry, "winograd", dict, where, nullable=True)
    if winograd is not None:
        m = _count(winograd, "m", where, 1, MAX_WINOGRAD_OUTPUT)
        r = _count(winograd, "r", where, 2, MAX_WINOGRAD_TILE)
        if m + r - 1 > MAX_WINOGRAD_TILE:
            raise FormatError(f"{where}: Winograd tile F({m},{r}) larger than {MAX_WINOGRAD_TILE}")
        threshold = _real(winograd, "threshold", where)
        sparsity = _real(winograd, "sparsity", where, nullable=True)
        if threshold < 0:
            raise FormatError(f"{where}: negative Winograd threshold")
        if sparsity is not None and not 0 <= sparsity <= 1:
            raise FormatError(f"{where}: Winograd sparsity {sparsity} outside [0, 1]")
        if len(shape) != 4 or shape[2] != r or shape[3] != r:
            raise FormatError(f"{where}: Winograd F({m},{r}) does not fit shape {list(shape)}")
        winograd = {"m": m, "r": r, "threshold": threshold, "sparsity": sparsity}
    record = {
        "name": name, "module": module, "kind": kind, "shape": list(shape), "parameter_count": numel,
        "quantizer": quantizer, "bits": bits, "codebook": codebook, "dither": dither, "nnz": nnz,
        "positions": streams["positions"], "indices": streams["indices"], "winograd": winograd,
    }
    if "output_size" in entry or "groups" in entry:  # optional: the map size MAC counts need (format.md)
        output_size = _field(entry, "output_size", list, where)
        if len(output_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_MAP_SIDE for v in output_size):
            raise FormatError(f"{where}: output_size must be two integers in 1..{MAX_MAP_SIDE}")
        record["output_size"] = list(output_size)
        record["groups"] = _count(entry, "groups", where, 1, max(1, shape[0]))
    return record


def validate_raw(
    entry: Any, index: int, section_count: int, claimed: set[int], sections: list[memoryview], section_at: Optional[int] = None
) -> dict:
    """One ``raw`` entry checked; ``section_at``: its section in version 3 (implied by its place)."""
    where = f"raw tensor {index}"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: not a JSON object")
    where = f"raw tensor {_field(entry, 'name', str, where)!r}"
    dtype = _field(entry, "dtype", str, where)
    if dtype not in RAW_DTYPES:
        raise FormatError(f"{where}: dtype {dtype!r} not allowed; allowed: {sorted(RAW_DTYPES)}")
    shape = _shape(entry, where)
    if section_at is not None:
        _absent(entry, ("section",), where)
        section = section_at
    else:
        section = _count(entry, "section", where, 0, max(section_count - 1, 0)) if section_count else None
    if section is None or section in claimed:
        raise FormatError(f"{where}: section missing or shared")
    claimed.add(section)
    expected = _numel(shape) * RAW_DTYPES[dtype].itemsize
    if len(sections[section]) != expected:
        raise FormatError(f"{where}: section has {len(sections[section])} bytes, {dtype}{list(shape)} needs {expected}")
    return {"name": entry["name"], "dtype": dtype, "shape": list(shape), "section": section}


def validate_manifest(manifest: dict, sections: list[memoryview]) -> dict:
    """The manifest checked against docs/format.md section 2, returned with its ``layers`` and
    ``raw`` entries rebuilt in the decoder's types (see :func:`validate_layer`); the free-form
    records (``arch`` kwargs, ``recipe``, ``provenance``) as they are."""
    if manifest.get("format") != "jsz":
        raise FormatError("manifest: format is not 'jsz'")
    version = _field(manifest, "version", int, "manifest")
    if version not in KNOWN_VERSIONS:  # unpack() has checked that it equals the header's
        raise FormatError(f"manifest: unknown version {version}")
    tool = _field(manifest, "tool", dict, "manifest")
    _field(tool, "name", str, "manifest tool")
    _field(tool, "version", str, "manifest tool")
    arch = _field(manifest, "arch", dict, "manifest", nullable=True)
    if arch is not None:
        _field(arch, "name", str, "manifest arch")
        _field(arch, "kwargs", dict, "manifest arch")
    _field(manifest, "recipe", dict, "manifest", nullable=True)
    _field(manifest, "provenance", dict, "manifest", nullable=True)
    original = _count(manifest, "original_parameter_count", "manifest")
    layer_entries = _field(manifest, "layers", list, "manifest")
    raw_entries = _field(manifest, "raw", list, "manifest")
    claimed: set[int] = set()
    if version >= 3:  # the sections follow from the places (CODEBOOK_SECTION)
        expected = 1 + 2 * len(layer_entries) + len(raw_entries)
        if len(sections) != expected:
            raise FormatError(f"manifest: {len(sections)} sections for {len(layer_entries)} layers and {len(raw_entries)} raw tensors (needs {expected})")
        claimed.add(CODEBOOK_SECTION)
        layers = [validate_layer(e, i, len(sections), claimed, version, (1 + 2 * i, 2 + 2 * i)) for i, e in enumerate(layer_entries)]
        raw_first = 1 + 2 * len(layers)
        raws = [validate_raw(e, i, len(sections), claimed, sections, raw_first + i) for i, e in enumerate(raw_entries)]
        codebook_dtype = _field(manifest, "codebook_dtype", str, "manifest") if version >= 4 else "float32"
        if codebook_dtype not in CODEBOOK_DTYPES:
            raise FormatError(f"manifest: unknown codebook_dtype {codebook_dtype!r:.40}")
        _fill_codebooks(layers, sections[CODEBOOK_SECTION], codebook_dtype)
    else:
        layers = [validate_layer(e, i, len(sections), claimed, version) for i, e in enumerate(layer_entries)]
        raws = [validate_raw(e, i, len(sections), claimed, sections) for i, e in enumerate(raw_entries)]
    names = [e["name"] for e in layers] + [e["name"] for e in raws]
    if len(set(names)) != len(names):
        raise FormatError("manifest: a tensor name appears twice")
    if len(claimed) != len(sections):
        raise FormatError(f"manifest: {len(sections) - len(claimed)} sections belong to no tensor")
    return {**manifest, "original_parameter_count": original, "layers": layers, "raw": raws}


def _fill_codebooks(layers: list[dict], section: memoryview, dtype: str) -> None:
    """Versions 3 and 4: the codebook values from their section, into the validated records."""
    codebooks = unpack_codebooks(section, [len(layer["codebook"]) for layer in layers], dtype)
    for layer, values in zip(layers, codebooks):
        if not np.isfinite(values).all():
            raise FormatError(f"layer {layer['name']!r}: codebook holds something other than a finite float32 value")
        layer["codebook"] = values.astype(np.float64).tolist()
