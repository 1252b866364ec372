"""Unsigned LEB128 varints: the one helper for every varint in a ``.jsz`` file (the version-3
section table, ANS count tables)."""

from __future__ import annotations

from .errors import FormatError

__all__ = ["MAX_VARINT_BYTES", "put_varint", "get_varint", "varint_bytes"]

#: Ten 7-bit groups hold any 64-bit value; a longer varint is refused rather than read on, so a
#: hostile run of continuation bytes cannot make the reader build a huge integer.
MAX_VARINT_BYTES = 10


def put_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (>= 0) to ``out``, 7 bits a byte, least significant group first."""
    if value < 0:
        raise ValueError(f"a varint is unsigned, got {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def varint_bytes(value: int) -> bytes:
    """``value`` as a varint on its own."""
    out = bytearray()
    put_varint(out, value)
    return bytes(out)


def get_varint(data: bytes | memoryview, offset: int, what: str = "varint", end: int | None = None) -> tuple[int, int]:
    """The varint at ``data[offset]`` and the offset after it; it must end before ``end`` (default:
    the end of ``data``). ``what`` names the table in the :class:`FormatError` for a truncated or
    over-long varint."""
    stop = len(data) if end is None else min(end, len(data))
    value = shift = 0
    for index in range(offset, min(offset + MAX_VARINT_BYTES, stop)):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    raise FormatError(f"{what} is truncated or has an over-long varint")
