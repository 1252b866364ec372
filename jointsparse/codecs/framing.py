"""The frame of a ``.jsz`` file: header, section table, the zstd-compressed JSON manifest, the
binary sections back to back, and the checksums (docs/format.md)::

    magic "\\x89JSZ\\r\\n\\x1a\\n" | u16 version | u16 flags | u32 section count | u32 manifest length
    | u32 manifest CRC32 | u64 file length | section table | manifest (UTF-8 JSON)
    | sections, back to back | u32 CRC32 of everything before | "JSZE"

The section table is, in version 3, one LEB128 varint length per section; in versions 1 and 2 it
was (u64 length, u32 CRC32, u32 zero) per section. The per-section CRCs were dropped because the
whole-file CRC is checked before anything else is read: once it passes, a section CRC can only
fail together with it, so it detected nothing, and cost 16 bytes a section where a varint length
costs one to three (2-3% of the demo's 36 KB vgg_small file).
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from typing import Any, Mapping

from . import bounded_zstd
from .errors import FormatError
from .varint import get_varint, put_varint

__all__ = ["MAGIC", "VERSION", "KNOWN_VERSIONS", "MAX_MANIFEST_BYTES", "pack", "pack_text", "unpack", "require_little_endian"]

MAGIC = b"\x89JSZ\r\n\x1a\n"
END_MARKER = b"JSZE"
#: The version this writer writes. Version 2 added the "ctx" position coding; version 3 the compact
#: section table, the codebook section, the adaptive ANS model and a manifest without derivable
#: fields; version 4 the manifest's ``codebook_dtype`` (float16 codebooks); version 5 the "ctx"
#: index coding (docs/format.md section 6). Files of every known version read as they always did.
VERSION = 5
KNOWN_VERSIONS = (1, 2, 3, 4, 5)
FLAG_ZSTD_MANIFEST = 1
_HEADER = struct.Struct("<8sHHIIIQ")
_SECTION = struct.Struct("<QII")  # versions 1 and 2: length, CRC32, reserved zero
_TRAILER = struct.Struct("<I4s")
MAX_MANIFEST_BYTES = 64 << 20
_MANIFEST_EXPANSION = 256


def require_little_endian() -> None:
    if sys.byteorder != "little":  # raw sections are copied from native memory
        raise NotImplementedError(".jsz raw sections are little-endian; big-endian hosts are not supported")


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
    # The header states the manifest's version (a version-1 manifest gives a version-1 file).
    version = manifest.get("version")
    return pack_text(manifest_json, sections, version=version if version in KNOWN_VERSIONS else VERSION)


def pack_text(manifest_json: bytes, sections: list[bytes], *, compress: bool = True, level: int = 19, version: int = VERSION) -> bytes:
    """Frame manifest text as given (no check that it is JSON) and the sections; the checksums
    are computed here. :func:`pack` uses it; so do tests and the adversarial campaign
    (experiments/fuzz_decoder.py), which frame manifests no writer would produce. ``version`` is the
    header's (tests write version-1 files with it)."""
    manifest_bytes = bounded_zstd.compress(manifest_json, level=level) if compress else bytes(manifest_json)
    table = _section_table(sections, version)
    total = _HEADER.size + len(table) + len(manifest_bytes) + sum(len(s) for s in sections) + _TRAILER.size
    flags = FLAG_ZSTD_MANIFEST if compress else 0
    header = _HEADER.pack(MAGIC, version, flags, len(sections), len(manifest_bytes), zlib.crc32(manifest_bytes), total)
    body = b"".join([header, table, manifest_bytes, *sections])
    return body + _TRAILER.pack(zlib.crc32(body), END_MARKER)


def _section_table(sections: list[bytes], version: int) -> bytes:
    if version < 3:
        return b"".join(_SECTION.pack(len(s), zlib.crc32(s), 0) for s in sections)
    table = bytearray()
    for section in sections:
        put_varint(table, len(section))
    return bytes(table)


def _read_table(view: memoryview, count: int, version: int, end: int) -> tuple[list[int], int]:
    """The section lengths (and, before version 3, their CRCs, checked later) and where the table
    ends; every entry must lie before ``end`` (where the trailer starts)."""
    if version < 3:
        table_end = _HEADER.size + _SECTION.size * count
        if table_end > end:
            raise FormatError(f"section table ({count} entries) overruns the file")
        return [_SECTION.unpack_from(view, _HEADER.size + i * _SECTION.size) for i in range(count)], table_end
    if _HEADER.size + count > end:  # every varint is at least one byte: bounds the loop by the file
        raise FormatError(f"section table ({count} entries) overruns the file")
    lengths, offset = [], _HEADER.size
    for _ in range(count):
        length, offset = get_varint(view, offset, "section table", end)
        lengths.append(length)
    return lengths, offset


def _manifest_json(stored: bytes, flags: int) -> bytes:
    if not flags & FLAG_ZSTD_MANIFEST:
        return stored
    limit = min(MAX_MANIFEST_BYTES, _MANIFEST_EXPANSION * len(stored) + (64 << 10))
    return bounded_zstd.decompress(stored, "compressed manifest", limit=limit)


def unpack(data: bytes) -> tuple[dict, list[memoryview]]:
    """Check the frame of a ``.jsz`` file and return ``(manifest, sections)``.

    Checks, in order: size, magic, version, flags, declared length (truncation), end marker,
    whole-file CRC, section table bounds (version 3: every varint complete), lengths adding up,
    manifest CRC and (versions 1 and 2) section CRCs, JSON syntax, and that an integer manifest
    ``version`` equals the header's.
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
    if version not in KNOWN_VERSIONS:
        known = ", ".join(str(v) for v in KNOWN_VERSIONS[:-1]) + f" and {KNOWN_VERSIONS[-1]}"
        raise FormatError(f"unknown .jsz version {version} (this reader knows versions {known})")
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
    payload_end = len(data) - _TRAILER.size
    entries, table_end = _read_table(view, count, version, payload_end)
    if table_end + manifest_length > payload_end:
        raise FormatError(f"section table ({count} entries) and manifest ({manifest_length} bytes) overrun the file")
    if manifest_length > MAX_MANIFEST_BYTES:
        raise FormatError(f"manifest of {manifest_length} bytes exceeds {MAX_MANIFEST_BYTES}")
    offset = table_end + manifest_length
    lengths = [entry[0] for entry in entries] if version < 3 else entries
    if sum(lengths) != payload_end - offset:
        raise FormatError("section lengths do not add up to the file size (inconsistent sizes)")
    manifest_bytes = view[table_end:offset]
    if zlib.crc32(manifest_bytes) != manifest_crc:
        raise FormatError("manifest checksum mismatch")
    sections = []
    for index, length in enumerate(lengths):
        section = view[offset : offset + length]
        if version < 3:
            _, crc, reserved = entries[index]
            if reserved != 0:
                raise FormatError(f"section {index}: reserved field is not zero")
            if zlib.crc32(section) != crc:
                raise FormatError(f"section {index}: checksum mismatch")
        sections.append(section)
        offset += length
    manifest = _parse_json(_manifest_json(bytes(manifest_bytes), flags))
    stated = manifest.get("version")
    if isinstance(stated, int) and not isinstance(stated, bool) and stated != version:
        raise FormatError(f"manifest: version {stated} differs from the header's {version}")
    return manifest, sections


def _reject_constant(name: str) -> None:
    raise FormatError(f"manifest contains non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e999" parses to inf without passing parse_constant
        raise FormatError(f"manifest contains the number {text[:40]}, which overflows a float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise FormatError("manifest has a duplicate key")
    return result


def _parse_json(raw: bytes) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys)
    except FormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FormatError(f"manifest is not valid JSON: {str(error).splitlines()[0][:200]}") from None
    if not isinstance(manifest, dict):
        raise FormatError("manifest is not a JSON object")
    return manifest
