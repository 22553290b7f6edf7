"""Shared by the benchmark scripts: time several pipelines in interleaved rounds."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def interleaved_medians(pipelines: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run every pipeline once per round, round after round, and return each one's median.

    Interleaving makes drifting machine load hit every pipeline alike; each callable returns
    its own rate (or time) for one round.
    """
    values: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, fn in pipelines.items():
            values[name].append(fn())
    return {name: statistics.median(v) for name, v in values.items()}
