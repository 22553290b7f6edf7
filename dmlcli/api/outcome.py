"""What an API call returns: its rows and, as named fields, what it wrote or read.

Every evaluation call returns an :class:`Outcome` (or a subclass adding the command's own
fields): ``rows`` is the per-sample DataFrame of every result (their schemas are in
:mod:`dmlcli.results`), ``results`` says which stored result each block of rows came from
and whether it was computed now (``new``), read back (``cached``) or kept as the parts of a
shard (``shard i/n``). Printing one shows the fields, not a table dump.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli.runner import Outcome as JobOutcome


@dataclass(frozen=True)
class StoredResult:
    """One stored result behind an outcome's rows: ``rows[start:stop]`` are its rows."""

    kind: str  # the result schema: attack, worst-case, transfer, clever, ...
    run: str
    label: str
    path: Path
    status: str  # new, cached or "shard i/n"
    start: int
    stop: int
    warnings: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, repr=False)  # the result's metadata


@dataclass
class Outcome:
    """The rows an evaluation returned and the stored results they came from."""

    rows: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    results: list[StoredResult] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[StoredResult, pd.DataFrame]]:
        """(stored result, its rows) for each result, in order."""
        for r in self.results:
            yield r, self.rows.iloc[r.start : r.stop]

    def of_kind(self, kind: str) -> list[tuple[StoredResult, pd.DataFrame]]:
        """(stored result, its rows) for each result of schema ``kind`` (``attack``,
        ``worst-case``, ...)."""
        return [(r, rows) for r, rows in self if r.kind == kind]

    @property
    def new_files(self) -> list[Path]:
        """The results this call computed (not read from the store)."""
        return [r.path for r in self.results if r.status == "new"]

    @property
    def cached(self) -> list[StoredResult]:
        """The results read back from the store (``--force`` recomputes them)."""
        return [r for r in self.results if r.status == "cached"]

    @property
    def shards(self) -> list[StoredResult]:
        """The results kept as parts of one shard (``dml merge`` writes them)."""
        return [r for r in self.results if r.status.startswith("shard")]

    @classmethod
    def of(cls, outcomes: Sequence[JobOutcome], **fields: Any) -> Outcome:
        """One outcome from the runner's per-job outcomes (rows concatenated in order)."""
        frames, results, at = [], [], 0
        for o in outcomes:
            frames.append(o.rows)
            results.append(
                StoredResult(
                    kind=o.job.kind,
                    run=o.job.run,
                    label=o.job.label,
                    path=Path(o.path),
                    status=o.status,
                    start=at,
                    stop=at + len(o.rows),
                    warnings=tuple(o.meta.get("warnings", [])),
                    meta=o.meta,
                )
            )
            at += len(o.rows)
        nonempty = [f for f in frames if len(f.columns)]
        rows = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame()
        return cls(rows=rows, results=results, **fields)
