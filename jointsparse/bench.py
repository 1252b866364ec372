"""Measured per-layer inference time of a decoded file in both domains against dense ``F.conv2d``.

Timings pin the thread count (2 threads on a 2-core machine are noisy), warm up, and report the
median of ``repeats`` runs. Every ratio is against the dense layer timed in the same run.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .codecs import decode, read_manifest
from .nn import LINEAR_SPARSE_THRESHOLD, SPATIAL_SPARSE_THRESHOLD, WINOGRAD_SPARSE_THRESHOLD, SparseConv2d, SparseLinear, WinogradConv2d, _compiled
from .nn.choice import layer_inputs
from .timing import median_seconds, time_interleaved


def _slow_reason(kind: str, layer: nn.Module, x: torch.Tensor) -> str:
    """Why a sparse form lost to dense here, from what the layer is (the usual causes, SPEC 10-11)."""
    if not _compiled.available():
        return f"pure-PyTorch sparse path ({_compiled.UNAVAILABLE_REASON})"
    if isinstance(layer, WinogradConv2d):
        if layer.winograd_density > WINOGRAD_SPARSE_THRESHOLD:
            return f"Winograd density {layer.winograd_density:.2f} too high (sparse pays below about {WINOGRAD_SPARSE_THRESHOLD})"
        if (layer.m, layer.r) != (2, 3):
            return f"F({layer.m}, {layer.r}) runs the generic tile transforms (only F(2, 3)'s are hand-vectorised)"
        if x.shape[2] * x.shape[3] >= 28 * 28:
            return f"{x.shape[2]}x{x.shape[3]} map: the tile transforms cost as much as the sparse products"
        return "too few non-zeros per call to amortise the tile transforms"
    if isinstance(layer, (SparseConv2d, SparseLinear)):
        threshold = SPATIAL_SPARSE_THRESHOLD if isinstance(layer, SparseConv2d) else LINEAR_SPARSE_THRESHOLD
        if layer.density > threshold:
            return f"density {layer.density:.2f} too high (a dense GEMM wins above about {threshold})"
        if isinstance(layer, SparseLinear) and x.shape[0] >= 8:
            return f"batch {x.shape[0]}: dense GEMM reuses each weight {x.shape[0]} times"
        if isinstance(layer, SparseConv2d) and layer.in_channels // layer.groups <= 4:
            return "few input channels: short sparse rows, little to skip"
        return "short output rows: per-non-zero overhead dominates"
    return ""


def _check_bench_args(batch: int, repeats: int, threads: int) -> None:
    if batch < 1 or repeats < 1 or threads < 1:
        raise ValueError("--batch, --repeats and --threads must be >= 1")


def _input_size(path: str, input_size: Sequence[int] | None) -> list[int]:
    manifest = read_manifest(path)
    size = list(input_size or manifest.get("input_size") or ((manifest.get("provenance") or {}).get("data") or {}).get("input_size") or [])
    if len(size) != 3:
        raise ValueError("the file records no input size: pass --input-size C,H,W")
    return size


def bench_file(path: str, *, batch: int = 1, repeats: int = 20, threads: int = 1, input_size: Sequence[int] | None = None,
               allow_imports: bool = False) -> list[dict[str, Any]]:
    """One row per compressed layer: dense, spatial-sparse and Winograd-sparse milliseconds, and
    for a sparse form slower than dense, the likely reason."""
    _check_bench_args(batch, repeats, threads)
    size = _input_size(path, input_size)
    dense = decode(path, domain="spatial", runtime=False, allow_imports=allow_imports)
    decoded = {domain: decode(path, domain=domain, allow_imports=allow_imports) for domain in ("spatial", "winograd")}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sample = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
        inputs = layer_inputs(dense, sample)
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
                slow = row[f"{domain}_speedup"] is not None and row[f"{domain}_speedup"] < 1.0
                row[f"{domain}_why_slower"] = _slow_reason(domain, layer, x) if slow else None
            rows.append(row)
        return rows
    finally:
        torch.set_num_threads(previous)


def bench_model(path: str, *, batch: int = 1, repeats: int = 20, threads: int = 1, input_size: Sequence[int] | None = None,
                timing_cache: Any = None, allow_imports: bool = False) -> dict[str, Any]:
    """Whole decoded model: dense, spatial, Winograd and auto (chosen for this batch and thread
    count), each with median and spread, and the auto model's per-layer choices."""
    _check_bench_args(batch, repeats, threads)
    size = _input_size(path, input_size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = {"dense": decode(path, domain="spatial", runtime=False, allow_imports=allow_imports)}
        models.update({domain: decode(path, domain=domain, allow_imports=allow_imports) for domain in ("spatial", "winograd")})
        models["auto"] = decode(path, domain="auto", batch=batch, threads=threads, input_size=size, timing_cache=timing_cache,
                                allow_imports=allow_imports)
        sample = torch.randn(batch, *size, generator=torch.Generator().manual_seed(1))
        timings = time_interleaved({name: (lambda model=model: model(sample)) for name, model in models.items()}, repeats)
    finally:
        torch.set_num_threads(previous)
    dense_ms = timings["dense"]["median_ms"]
    for entry in timings.values():
        entry["speedup"] = dense_ms / entry["median_ms"]
    return {"batch": batch, "threads": threads, "input_size": size, "models": timings,
            "auto_choices": {name: entry["choice"] for name, entry in models["auto"].deployment_choices.items()}}


def format_bench(rows: list[dict[str, Any]], *, threads: int, batch: int, whole: dict[str, Any] | None = None) -> str:
    lines = [f"median times, batch {batch}, {threads} thread(s); speedup = dense / sparse", ""]
    lines.append(f"{'layer':<20} {'dense ms':>9} {'spatial ms':>11} {'speedup':>8} {'winograd ms':>12} {'speedup':>8}")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for row in rows:
        lines.append(
            f"{row['name']:<20} {row['dense_ms']:>9.3f} {fmt(row['spatial_ms'], '.3f'):>11} {fmt(row['spatial_speedup'], '.2f'):>8}"
            f" {fmt(row['winograd_ms'], '.3f'):>12} {fmt(row['winograd_speedup'], '.2f'):>8}"
        )
    notes = [f"  {row['name']} {domain}: {row[f'{domain}_why_slower']}" for row in rows for domain in ("spatial", "winograd") if row.get(f"{domain}_why_slower")]
    if notes:
        lines += ["", "where sparse is slower than dense, and why:", *notes]
    if whole:
        lines += ["", f"whole model, batch {whole['batch']}, {whole['threads']} thread(s): wall median ms [min-max] and speedup vs dense; "
                  "mean process CPU ms (what a loaded machine's wall clock hides)"]
        cpu_dense = whole["models"]["dense"]["cpu_ms"]
        for name, entry in whole["models"].items():
            lines.append(f"  {name:<9} {entry['median_ms']:>9.3f} [{entry['min_ms']:.3f}-{entry['max_ms']:.3f}] {entry['speedup']:>6.2f}x"
                         f"   cpu {entry['cpu_ms']:>9.3f} {cpu_dense / entry['cpu_ms'] if entry['cpu_ms'] else float('nan'):>6.2f}x")
        lines.append("  auto chose: " + ", ".join(f"{name}={choice}" for name, choice in whole["auto_choices"].items()))
    return "\n".join(lines)
