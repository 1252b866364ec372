"""Timing helpers for benchmarks: medians after warm-up, and callables timed round by round."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

__all__ = ["median_seconds", "time_interleaved"]


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


def time_interleaved(runners: dict[str, Callable[[], Any]], repeats: int = 20, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Wall-clock median and spread (min, max) in ms of each callable, and its mean process CPU
    time (``cpu_ms``: excludes time the scheduler gave to other jobs, counts every thread), run
    round by round (every callable once per round) so that load bursts hit all of them alike.
    The CPU clock ticks coarsely in some VMs, so its mean, not its median, is reported."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, float] = {name: 0.0 for name in runners}
    with torch.no_grad():
        for _ in range(warmup):
            for run in runners.values():
                run()
        for _ in range(repeats):
            for name, run in runners.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                cpu[name] += time.process_time() - start_cpu
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "cpu_ms": 1e3 * cpu[name] / repeats}
            for name, t in times.items()}
