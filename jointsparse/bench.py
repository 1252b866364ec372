"""Measured per-layer inference time of a decoded file in both domains against dense ``F.conv2d``.

Timings pin the thread count (2 threads on a 2-core machine are noisy), warm up, and report the
median of ``repeats`` runs. Every ratio is against the dense layer timed in the same run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .codecs import decode, read_manifest


def median_seconds(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layer_inputs(model: nn.Module, sample: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda mod, args, out, name=name: inputs.__setitem__(name, args[0].detach().clone()))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def bench_file(path: str, *, batch: int = 1, repeats: int = 20, threads: int = 1, input_size: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One row per compressed layer: dense, spatial-sparse and Winograd-sparse milliseconds."""
    if batch < 1 or repeats < 1 or threads < 1:
        raise ValueError("--batch, --repeats and --threads must be >= 1")
    manifest = read_manifest(path)
    size = list(input_size or ((manifest.get("provenance") or {}).get("data") or {}).get("input_size") or [])
    if len(size) != 3:
        raise ValueError("the file records no input size: pass --input-size C,H,W")
    dense = decode(path, domain="spatial", runtime=False)
    decoded = {domain: decode(path, domain=domain) for domain in ("spatial", "winograd")}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sample = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
        inputs = _layer_inputs(dense, sample)
        rows = []
        for name, x in inputs.items():
            dense_layer = dense.get_submodule(name)
            row: dict[str, Any] = {"name": name, "input": list(x.shape), "dense_ms": 1e3 * median_seconds(lambda: dense_layer(x), repeats)}
            for domain, model in decoded.items():
                layer = model.get_submodule(name)
                same = type(layer) is type(dense_layer)
                row[f"{domain}_module"] = type(layer).__name__
                row[f"{domain}_ms"] = None if same else 1e3 * median_seconds(lambda: layer(x), repeats)
                row[f"{domain}_speedup"] = None if same else row["dense_ms"] / row[f"{domain}_ms"]
            rows.append(row)
        return rows
    finally:
        torch.set_num_threads(previous)


def format_bench(rows: list[dict[str, Any]], *, threads: int, batch: int) -> str:
    lines = [f"median times, batch {batch}, {threads} thread(s); speedup = dense / sparse", ""]
    lines.append(f"{'layer':<20} {'dense ms':>9} {'spatial ms':>11} {'speedup':>8} {'winograd ms':>12} {'speedup':>8}")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for row in rows:
        lines.append(
            f"{row['name']:<20} {row['dense_ms']:>9.3f} {fmt(row['spatial_ms'], '.3f'):>11} {fmt(row['spatial_speedup'], '.2f'):>8}"
            f" {fmt(row['winograd_ms'], '.3f'):>12} {fmt(row['winograd_speedup'], '.2f'):>8}"
        )
    return "\n".join(lines)
