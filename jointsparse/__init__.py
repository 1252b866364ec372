from .codecs import decode, encode  # noqa: F401  (jointsparse.encode / jointsparse.decode)
