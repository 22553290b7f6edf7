"""Shared by the benchmark scripts: time several pipelines in interleaved rounds, and the
compute floor (the bare forward+backward a pipeline cannot do without) it is compared to."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def interleaved_rounds(
    pipelines: dict[str, Callable[[], float]], rounds: int
) -> dict[str, list[float]]:
    """Run every pipeline once per round, round after round; each one's value per round.

    Interleaving makes drifting machine load hit every pipeline alike; each callable returns
    its own rate (or time) for one round.
    """
    values: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, fn in pipelines.items():
            values[name].append(fn())
    return values


def interleaved_medians(pipelines: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """:func:`interleaved_rounds`, then each pipeline's median."""
    return {n: statistics.median(v) for n, v in interleaved_rounds(pipelines, rounds).items()}


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], calls: int, device: str, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` over ``calls`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def floor_fraction(floor: list[float], measured: list[float]) -> float:
    """Median over rounds of ``floor / measured`` (two times, or two rates swapped), so the
    same round's load divides out."""
    return statistics.median(f / m for f, m in zip(floor, measured, strict=True))


def floor_line(fraction: float, floor_s: float, measured_s: float, unit: str = "batch") -> str:
    """``compute floor: 87% (floor 12.3 ms/batch, measured 14.1 ms/batch)``."""
    return (
        f"compute floor: {100 * fraction:.0f}% (floor {1e3 * floor_s:.1f} ms/{unit}, "
        f"measured {1e3 * measured_s:.1f} ms/{unit})"
    )
