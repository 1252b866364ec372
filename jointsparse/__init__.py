"""jointsparse: compress CNNs under joint spatial/Winograd sparsity into one file that decodes
to a sparse spatial or a sparse Winograd convolution."""

from .codecs import decode, encode

__all__ = ["decode", "encode"]
