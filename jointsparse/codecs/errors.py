"""The one exception the decoder raises for a bad ``.jsz`` file."""

from __future__ import annotations

__all__ = ["FormatError"]


class FormatError(ValueError):
    """A ``.jsz`` file (or one of its streams) is malformed, truncated, corrupted or inconsistent.

    Decoding raises only this for bad input, so callers can catch one class for untrusted files.
    """
