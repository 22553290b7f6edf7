"""A job: one stored result, described by the evaluation that computes it.

Every ``eval`` module turns plain arguments (a run, data, settings) into :class:`Job` objects
that carry the result's identity (kind, run, setting) and a ``compute`` function for any
block of evaluation positions. :mod:`dmlcli.runner` runs them: it checks the cache, keeps
every finished block as a part file, resumes, shards, merges and reports progress, so no
evaluation repeats that machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dmlcli.models.io import Run

#: ``tick(fraction, info)``: how far the current block is (0..1), and a short phrase.
Tick = Callable[[float, str], None]
#: ``compute(start, stop, tick)`` -> (frames of positions start..stop-1, metadata of the part).
#: ``frames['rows']`` are the result rows; other keys are side frames (see :class:`Side`).
Compute = Callable[[int, int, Tick], tuple[dict[str, pd.DataFrame], dict[str, Any]]]
#: ``finish(rows)`` -> {result kind: (rows, metadata)} written instead of ``rows``.
Finish = Callable[[pd.DataFrame], dict[str, tuple[pd.DataFrame, dict[str, Any]]]]


@dataclass(frozen=True)
class Side:
    """Side rows kept per block and stored as their own result: the first ``head`` rows."""

    kind: str
    head: int = 10**12


@dataclass
class Job:
    """One result: ``kind`` (its schema), ``run``, ``setting`` (its identity, hashed into the
    file name) and how to compute it.

    ``ids`` are the values of ``id_column`` of the rows, in position order (one per
    evaluation sample); a block is ``size`` positions. ``label`` names the result in
    progress bars and messages; ``extra`` is stored with the final result. ``info`` turns the
    rows computed so far into the progress bar's text. A job with ``finish`` (e.g. detection,
    whose detector is fit on every sample) writes what ``finish`` returns, cannot be sharded
    and is finished only by rerunning it.
    """

    kind: str
    run: str
    setting: dict[str, Any]
    ids: Sequence[int]
    compute: Compute
    size: int
    label: str
    extra: dict[str, Any] = field(default_factory=dict)
    sides: dict[str, Side] = field(default_factory=dict)
    id_column: str = "sample"
    columns: Sequence[str] = ()
    info: Callable[[pd.DataFrame], str] | None = None
    finish: Finish | None = None

    @property
    def shardable(self) -> bool:
        return self.finish is None


def identity(run: Run, n: int, seed: int) -> dict[str, Any]:
    """What every result of ``run`` on a seeded subset of ``n`` samples is keyed by: the run,
    the SHA-256 of its weights, its dataset, ``n`` and ``seed``."""
    return {
        "run": run.name,
        "checkpoint": run.checkpoint,
        "dataset": run.dataset,
        "n": n,
        "seed": seed,
    }
