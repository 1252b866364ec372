"""Per-layer choice of deployment by measurement: dense, sparse spatial or sparse Winograd.

A decoded file carries every layer in both domains. Which runtime form is fastest depends on the
layer's shape and density, the batch, the thread count and the machine, so ``choose`` times each
layer's candidates on its real input and keeps the fastest. Timings are cached in a JSON file
(``$XDG_CACHE_HOME/jointsparse/layer_timings.json``, or ``JOINTSPARSE_CACHE_DIR``) keyed on the
CPU model, the layer's shape and densities, the batch and the threads, so a second decode on the
same machine does not time again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..layers import LayerKeyError, resolve_per_layer
from ..provenance import cpu_model
from ..timing import time_interleaved
from ..utils import atomic_write_text
from . import _compiled

#: The runtime forms a compressed layer can take, in the order they are reported.
CANDIDATES = ("dense", "spatial", "winograd")
#: Bump when the kernels change enough that cached timings no longer describe them.
TIMING_VERSION = 2


def layer_inputs(model: nn.Module, sample: torch.Tensor, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The input each Conv2d/Linear (or each module in ``names``) sees when ``model`` runs ``sample``."""
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda mod, args, out, name=name: inputs.__setitem__(name, args[0].detach().clone()))
        for name, module in model.named_modules()
        if ((name in names) if names is not None else isinstance(module, (nn.Conv2d, nn.Linear)))
    ]
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


class ChoiceError(ValueError):
    """A forced choice that names no layer, no form, or a form the layer does not have."""


def forced_choices(force: Mapping[str, str] | None, names: list[str]) -> dict[str, str]:
    """``{layer: candidate}`` for the layers ``force`` names, by the project's one layer rule
    (:mod:`jointsparse.layers`: exact name, else the first matching glob; a key that matches no
    layer is an error). Raises :class:`ChoiceError` for an unknown candidate or an unmatched key."""

    def check(candidate: str, where: str) -> str:
        if candidate not in CANDIDATES:
            raise ChoiceError(f"cannot force {where} to {candidate!r}; use one of {CANDIDATES}")
        return candidate

    try:
        resolved = resolve_per_layer(dict(force or {}), names, "--force", default=None, check=check)
    except LayerKeyError as error:
        raise ChoiceError(str(error)) from None
    return {name: candidate for name, candidate in resolved.items() if candidate is not None}


def default_cache_path() -> Path:
    base = os.environ.get("JOINTSPARSE_CACHE_DIR")
    if base:
        return Path(base) / "layer_timings.json"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jointsparse" / "layer_timings.json"


class TimingCache:
    """Layer timings on disk, one JSON object; unreadable or foreign files are treated as empty."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.entries: dict[str, dict[str, float]] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("version") == TIMING_VERSION and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]
        except (OSError, ValueError):
            pass

    def get(self, key: str) -> dict[str, float] | None:
        return self.entries.get(key)

    def put(self, key: str, timings: dict[str, float]) -> None:
        self.entries[key] = timings

    def save(self) -> None:
        """Write atomically; a cache that cannot be written is skipped (it only saves time)."""
        try:
            atomic_write_text(self.path, json.dumps({"version": TIMING_VERSION, "entries": self.entries}, indent=0, sort_keys=True))
        except OSError:
            pass


def _describe(module: nn.Module) -> str:
    """Shape and density of one runtime form, for the cache key (extra_repr carries both)."""
    return f"{type(module).__name__}({module.extra_repr()})"


def timing_key(candidates: Mapping[str, nn.Module], x: torch.Tensor, threads: int) -> str:
    forms = ";".join(f"{kind}={_describe(module)}" for kind, module in sorted(candidates.items()))
    compiled = _compiled.describe()
    return f"{cpu_model()}|torch {torch.__version__}|{compiled}|threads={threads}|input={list(x.shape)}|{forms}"


def time_candidates(candidates: Mapping[str, nn.Module], x: torch.Tensor, repeats: int = 9, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Median and spread in ms of each candidate module on ``x``, interleaved round by round."""
    return time_interleaved({kind: (lambda module=module: module(x)) for kind, module in candidates.items()}, repeats, warmup)


def choose(
    candidates: Mapping[str, Mapping[str, nn.Module]],
    inputs: Mapping[str, torch.Tensor],
    *,
    threads: int | None = None,
    force: Mapping[str, str] | None = None,
    cache: TimingCache | None = None,
    repeats: int = 9,
) -> dict[str, dict[str, Any]]:
    """For each layer, ``{"choice": kind, "forced": bool, "cached": bool, "ms": {kind: mean CPU ms}}``.

    ``candidates[layer]`` maps candidate names (``CANDIDATES``) to ready modules; ``inputs[layer]``
    is the layer's input at the batch to optimise for. Timing runs at ``threads`` torch threads
    (default: the current setting). Forced layers are not timed.
    """
    threads = threads or torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    forced = forced_choices(force, list(candidates))
    for name, kind in forced.items():
        if kind not in candidates[name]:
            raise ChoiceError(f"layer {name!r} has no {kind} form (it has: {', '.join(candidates[name])})")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    result: dict[str, dict[str, Any]] = {}
    try:
        for name, forms in candidates.items():
            if name in forced:
                result[name] = {"choice": forced[name], "forced": True, "cached": False, "ms": {}}
                continue
            key = timing_key(forms, inputs[name], threads)
            ms = cache.get(key) if cache is not None else None
            cached = ms is not None
            if ms is None:
                # Process CPU time, not wall: on a shared machine the wall clock mostly measures
                # other jobs' time slices (medians of 25-90 ms for a 0.1 ms layer were seen).
                ms = {kind: stats["cpu_ms"] for kind, stats in time_candidates(forms, inputs[name], repeats).items()}
                if cache is not None:
                    cache.put(key, ms)
            result[name] = {"choice": min(ms, key=ms.__getitem__), "forced": False, "cached": cached, "ms": ms}
    finally:
        torch.set_num_threads(previous)
    if cache is not None:
        cache.save()
    return result


def format_choices(choices: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per layer: its choice and the timings it was chosen by."""
    lines = []
    for name, entry in choices.items():
        how = "forced" if entry["forced"] else ("cached timing" if entry["cached"] else "timed")
        times = ", ".join(f"{kind} {ms:.3f} ms" for kind, ms in entry["ms"].items())
        lines.append(f"{name}: {entry['choice']} ({how}{'; ' + times if times else ''})")
    return lines
