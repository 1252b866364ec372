"""The layers the toolkit compresses, and per-layer settings chosen by module name or glob.

One rule everywhere a setting is given per layer (sparsity targets, baseline options, quantizer
bits, Winograd targets): a key is a module name (``"features.0"``) or an ``fnmatch`` glob over
module names (``"fc*"``); an exact name wins over every glob; among globs the first in the
mapping's order wins; a key that matches no layer is an error that lists the layers, so a typo
never passes silently.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, Mapping, TypeVar

from torch import nn

from .transforms import has_winograd_form

__all__ = ["LayerKeyError", "prunable_layers", "winograd_layers", "select_key", "resolve_per_layer"]

V = TypeVar("V")


class LayerKeyError(ValueError):
    """A per-layer setting whose key matches no layer, or whose value is out of range."""


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear, by module name: the layers whose weights the toolkit compresses."""
    return {name: module for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}


def winograd_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The prunable layers that have a Winograd form (stride 1, square odd kernel >= 3, no dilation)."""
    return {name: module for name, module in prunable_layers(model).items() if has_winograd_form(module)}


def select_key(name: str, keys: Iterable[str]) -> str | None:
    """The key that sets ``name``'s value: ``name`` itself, else the first glob that matches it."""
    keys = list(keys)
    if name in keys:
        return name
    return next((key for key in keys if fnmatch.fnmatchcase(name, key)), None)


def resolve_per_layer(
    spec: V | Mapping[str, V],
    names: Iterable[str],
    what: str,
    *,
    default: Any = 0.0,
    check: Callable[[Any, str], V] | None = None,
) -> dict[str, V]:
    """Per-layer values: ``spec`` is one value for every layer, or a mapping of module names and
    globs to values (see the module's rule). A layer no key matches gets ``default`` (unchecked).
    ``check(value, where)`` validates and converts each given value; it raises on a bad one."""
    names = list(names)
    convert = check or (lambda value, where: value)
    if not isinstance(spec, Mapping):
        value = convert(spec, what)
        return {name: value for name in names}
    unmatched = [key for key in spec if not any(key == name or fnmatch.fnmatchcase(name, key) for name in names)]
    if unmatched:
        raise LayerKeyError(f"{what}: {', '.join(map(repr, unmatched))} match no layer; layers are {', '.join(names) or '(none)'}")
    resolved: dict[str, Any] = {}
    for name in names:
        key = select_key(name, spec)
        resolved[name] = default if key is None else convert(spec[key], f"{what}[{key!r}]")
    return resolved
