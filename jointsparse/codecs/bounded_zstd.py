"""zstd frames whose decoded size is known before decoding: the only way a file's bytes reach
``zstandard``, so no stream can make the reader allocate more than its caller allows."""

from __future__ import annotations

from typing import Optional

import zstandard

from .errors import FormatError

__all__ = ["compress", "decompress"]


def compress(raw: bytes, level: int) -> bytes:
    """One zstd frame that records its content size (which :func:`decompress` requires)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)


def decompress(data: bytes, what: str, *, size: Optional[int] = None, limit: Optional[int] = None) -> bytes:
    """Decode one zstd frame that declares exactly ``size`` bytes, or at most ``limit`` bytes.

    The declared size is checked before anything is allocated; ``what`` names the stream in the
    :class:`FormatError` raised for anything wrong.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as error:
        raise FormatError(f"{what} is not a zstd frame: {error}") from None
    if size is not None and declared != size:
        raise FormatError(f"{what} declares {declared} bytes, expected {size}")
    if limit is not None and not 0 <= declared <= limit:
        raise FormatError(f"{what} declares {declared} bytes (limit {limit})")
    if declared < 0:
        raise FormatError(f"{what} does not declare its size")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=declared)
    except zstandard.ZstdError as error:
        raise FormatError(f"corrupt {what}: {error}") from None
    if len(raw) != declared:
        raise FormatError(f"{what} decoded to {len(raw)} bytes, not the {declared} it declares")
    return raw
