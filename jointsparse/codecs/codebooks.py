"""The codebook section of a version-3 or -4 ``.jsz`` file (docs/format.md section 2.1): every
layer's codebook in one binary section instead of text in the manifest, as float32 (version 3, and
version 4's default) or float16 (version 4, ``codebook_dtype``: half the bytes, which on a small
net at 7 or 8 bits is a tenth of the file).

The values are stored byte plane by byte plane (the first byte of every little-endian value,
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

__all__ = ["CODEBOOK_DTYPES", "ZSTD_LEVEL", "narrow_codebook", "pack_codebooks", "unpack_codebooks"]

#: What a version-4 manifest's ``codebook_dtype`` may name, as little-endian numpy types.
CODEBOOK_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}

ZSTD_LEVEL = 19
#: A zstd codebook section may declare at most this many times its own length (plus 64 KiB),
#: and never more than 64 MiB: the same bound as the manifest, whose text held the codebooks
#: before version 3, so no file can ask the reader for more than it could then.
_EXPANSION = 256
_MAX_BYTES = 64 << 20


def narrow_codebook(codebook: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """``codebook`` as the float32 values ``dtype`` stores: each within half a float16 step of its
    value (2^-11 of it, relative, above float16's subnormals). Two entries closer than that may
    become one, which changes no weight by more than the rounding does (k-means at 7 bits on a layer
    of 120 weights has such entries). Refused (ValueError, one line) where a value overflows."""
    values = np.asarray(codebook, dtype=np.float32)
    if dtype == "float32":
        return values
    with np.errstate(over="ignore"):
        narrow = values.astype(CODEBOOK_DTYPES[dtype]).astype(np.float32)
    if not np.isfinite(narrow).all():
        raise ValueError(f"{name}: a codebook value outside {dtype}'s range (largest |value| {float(np.abs(values).max()):.4g}); use codebook_dtype float32")
    return narrow


def pack_codebooks(codebooks: Sequence[np.ndarray], dtype: str = "float32") -> bytes:
    """The section for these codebooks, in layer order (empty when they hold no value), each value
    as ``dtype`` (see :func:`narrow_codebook` for what it refuses)."""
    kind = CODEBOOK_DTYPES[dtype]
    values = np.concatenate([np.asarray(c, dtype=np.float32).ravel() for c in codebooks]).astype(kind) if codebooks else np.zeros(0, kind)
    if values.size == 0:
        return b""
    planes = values.view(np.uint8).reshape(-1, kind.itemsize).T.tobytes()
    packed = bounded_zstd.compress(planes, level=ZSTD_LEVEL)
    # A section exactly one value's size a value long is the planes as they are: so zstd is kept only
    # when strictly shorter, and the reader tells the two forms apart by the length alone.
    return packed if len(packed) < len(planes) else planes


def unpack_codebooks(section: bytes | memoryview, sizes: Sequence[int], dtype: str = "float32") -> list[np.ndarray]:
    """The codebooks of ``sizes[i]`` values each from the section, stored as ``dtype``, widened to
    float32 (checked: its length, the zstd frame's declared size and its bound); finiteness is the
    caller's check."""
    kind = CODEBOOK_DTYPES[dtype]
    total = sum(sizes)
    raw_length = kind.itemsize * total
    if total == 0:
        if len(section):
            raise FormatError(f"codebook section has {len(section)} bytes for no codebook value")
        return [np.zeros(0, dtype=np.float32) for _ in sizes]
    if len(section) == raw_length:
        planes = bytes(section)
    else:
        limit = min(_MAX_BYTES, _EXPANSION * len(section) + (64 << 10))
        if raw_length > limit:  # before decompressing anything
            raise FormatError(f"codebook section of {len(section)} bytes for {total} values (limit {limit // kind.itemsize})")
        planes = bounded_zstd.decompress(bytes(section), "codebook section", size=raw_length)
    values = np.frombuffer(planes, dtype=np.uint8).reshape(kind.itemsize, total).T.copy().view(kind).ravel()
    bounds = np.cumsum([0, *sizes])
    return [values[start:stop].astype(np.float32) for start, stop in zip(bounds[:-1], bounds[1:])]
