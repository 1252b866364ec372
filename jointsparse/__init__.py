"""jointsparse: compress CNNs under joint spatial/Winograd sparsity into one file that decodes
to a sparse spatial or a sparse Winograd convolution."""

__version__ = "0.1.0"  # the one place; pyproject.toml reads it

from .codecs import decode, encode  # noqa: E402

__all__ = ["__version__", "decode", "encode"]
