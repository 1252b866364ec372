"""The field's other sparsity methods as trainer hooks, by name (SPEC section 8).

``build_method(name, model, **options)`` returns a hook for :func:`jointsparse.train.train`
(``hooks=[hook]``); after training, ``hook.finalize()`` ends the method's own updates and
returns the :class:`~jointsparse.sparsity.PruningMasks` it then holds, so the same hook can
drive fine-tuning. Methods: ``l1_prox`` and ``l0_budget`` (Collins & Kohli), ``channel_sparse``
(Changpinyo et al.), ``bridgeout`` (Khan & Stavness), ``group_prox`` (Zhou et al.),
``deep_compression`` (Han et al.). Model-side helpers: :func:`depth_multiplier` (the channel
baseline) and :func:`thin_model` (group sparsity's export). Coding: :func:`huffman_encode` /
:func:`huffman_decode` and the relative-index functions (Deep Compression's entropy stage).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from ._common import BaselineConfigError, BaselineHook, BaselineStateError
from .bridgeout import Bridgeout
from .channel_sparse import ChannelSparse, depth_multiplier, scale_channels
from .deep_compression import DEEP_COMPRESSION_BITS, INDEX_BITS, DeepCompression, deep_compression_bytes, layer_kind
from .group_prox import GroupProx, ThinningError, thin_model
from .huffman import HuffmanError, huffman_decode, huffman_encode
from .memory_bounded import L0Budget, L1Prox
from .relative_index import (
    RelativeIndexError,
    relative_index_decode,
    relative_index_encode,
    relative_index_layer_decode,
    relative_index_layer_encode,
)

#: Method name -> factory ``(model, **options) -> hook``.
METHODS: dict[str, Callable[..., BaselineHook]] = {
    "l1_prox": L1Prox,
    "l0_budget": L0Budget,
    "channel_sparse": ChannelSparse,
    "bridgeout": Bridgeout,
    "group_prox": GroupProx,
    "deep_compression": DeepCompression,
}


def method_options(name: str) -> dict[str, Any]:
    """The options method ``name`` accepts, with their defaults."""
    factory = _factory(name)
    parameters = list(inspect.signature(factory).parameters.values())[1:]  # after the model
    return {p.name: p.default for p in parameters}


def _factory(name: str) -> Callable[..., BaselineHook]:
    if name not in METHODS:
        raise BaselineConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(name: str, model: nn.Module, **options: Any) -> BaselineHook:
    """The hook of method ``name`` on ``model``; unknown names and options raise
    :class:`BaselineConfigError` (a ValueError) naming the known ones."""
    factory = _factory(name)
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BaselineConfigError(f"{name} does not accept option(s) {', '.join(unknown)}; it accepts {', '.join(known)}")
    return factory(model, **options)


__all__ = [
    "BaselineConfigError",
    "BaselineHook",
    "BaselineStateError",
    "Bridgeout",
    "ChannelSparse",
    "DEEP_COMPRESSION_BITS",
    "DeepCompression",
    "deep_compression_bytes",
    "GroupProx",
    "HuffmanError",
    "INDEX_BITS",
    "L0Budget",
    "L1Prox",
    "METHODS",
    "RelativeIndexError",
    "ThinningError",
    "build_method",
    "depth_multiplier",
    "huffman_decode",
    "huffman_encode",
    "layer_kind",
    "method_options",
    "relative_index_decode",
    "relative_index_encode",
    "relative_index_layer_decode",
    "relative_index_layer_encode",
    "scale_channels",
    "thin_model",
]
