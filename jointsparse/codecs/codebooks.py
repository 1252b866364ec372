"""The codebook section of a version-3 ``.jsz`` file (docs/format.md section 2.1): every layer's
codebook as float32, in one binary section instead of text in the manifest.

The values are stored byte plane by byte plane (the first byte of every little-endian float32,
then the second, ...), as they are or as one zstd frame, whichever is smaller. The planes are what
makes zstd worth it: a layer's codebook spans a narrow range, so the top plane (sign and high
exponent bits) holds a handful of distinct bytes. On the demo's vgg_small the 740 bytes of
float32 take 634 this way, where base64 text inside the zstd manifest took about 820.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import bounded_zstd
from .errors import FormatError

__all__ = ["ZSTD_LEVEL", "pack_codebooks", "unpack_codebooks"]

ZSTD_LEVEL = 19
#: A zstd codebook section may declare at most this many times its own length (plus 64 KiB),
#: and never more than 64 MiB: the same bound as the manifest, whose text held the codebooks
#: before version 3, so no file can ask the reader for more than it could then.
_EXPANSION = 256
_MAX_BYTES = 64 << 20


def pack_codebooks(codebooks: Sequence[np.ndarray]) -> bytes:
    """The section for these codebooks, in layer order (empty when they hold no value)."""
    values = np.concatenate([np.asarray(c, dtype="<f4").ravel() for c in codebooks]) if codebooks else np.zeros(0, "<f4")
    if values.size == 0:
        return b""
    planes = values.view(np.uint8).reshape(-1, 4).T.tobytes()
    packed = bounded_zstd.compress(planes, level=ZSTD_LEVEL)
    # A section exactly 4 bytes a value long is the planes as they are: so zstd is kept only
    # when strictly shorter, and the reader tells the two forms apart by the length alone.
    return packed if len(packed) < len(planes) else planes


def unpack_codebooks(section: bytes | memoryview, sizes: Sequence[int]) -> list[np.ndarray]:
    """The float32 codebooks of ``sizes[i]`` values each from the section (checked: its length,
    the zstd frame's declared size and its bound); finiteness is the caller's check."""
    total = sum(sizes)
    raw_length = 4 * total
    if total == 0:
        if len(section):
            raise FormatError(f"codebook section has {len(section)} bytes for no codebook value")
        return [np.zeros(0, dtype=np.float32) for _ in sizes]
    if len(section) == raw_length:
        planes = bytes(section)
    else:
        limit = min(_MAX_BYTES, _EXPANSION * len(section) + (64 << 10))
        if raw_length > limit:  # before decompressing anything
            raise FormatError(f"codebook section of {len(section)} bytes for {total} values (limit {limit // 4})")
        planes = bounded_zstd.decompress(bytes(section), "codebook section", size=raw_length)
    values = np.frombuffer(planes, dtype=np.uint8).reshape(4, total).T.copy().view("<f4").ravel()
    bounds = np.cumsum([0, *sizes])
    return [values[start:stop].astype(np.float32) for start, stop in zip(bounds[:-1], bounds[1:])]
