"""Running jobs: the cache, part files, resume, shards, merge and progress, for every evaluation.

While a :class:`~dmlcli.eval.jobs.Job` runs, every finished block of samples is written
atomically as a part file::

    results/<run>/.parts/<kind>-<key>/manifest.json              what the result is (JSON)
    results/<run>/.parts/<kind>-<key>/part-<start:06d>.parquet    rows of positions start..stop-1
    results/<run>/.parts/<kind>-<key>/<side>-<start:06d>.parquet  side rows (adv. examples)

``<kind>-<key>`` is the final result's file name, so a part folder belongs to exactly one
setting. A part is accepted only if it is a readable parquet with the expected columns and
exactly the expected ids; side files are written first, so a part file means its block is
done. Running the same job again reads the valid parts back and computes only the missing
blocks (every block's randomness derives from the seed and its first position, never from a
generator carried across blocks, so the result is identical to an uninterrupted run's).
``shard=Shard(i, n)`` computes only the i-th contiguous run of blocks; :func:`merge` (or an
unsharded rerun) writes the final result, exactly the file an uninterrupted run writes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli import results
from dmlcli.errors import DmlError
from dmlcli.eval.jobs import Job, Side
from dmlcli.files import atomic_write_bytes, read_parquet, write_parquet
from dmlcli.runtime import Shard
from dmlcli.store import Store

MANIFEST = "manifest.json"


class Reporter:
    """How long work reports itself. This one is silent; the CLI passes one that draws rich
    progress bars. ``task(label, total)`` starts a bar and returns ``update(done, info)``;
    ``note(text)`` says something worth knowing (e.g. that a training resumes)."""

    def task(self, label: str, total: int) -> Callable[[int, str], None]:
        return lambda done, info="": None

    def note(self, text: str) -> None:
        return None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a job ran; the message says what was kept and how to resume."""


@dataclass
class Outcome:
    """What running a job gave: its rows (this shard's only, for a shard), the final file,
    ``status`` (``new``, ``cached`` or ``shard i/n``) and the stored metadata."""

    job: Job
    path: Path
    status: str
    rows: pd.DataFrame
    meta: dict[str, Any]


class Parts:
    """The part folder of one result: a manifest, then one file (+ side files) per block.

    ``manifest`` holds what :func:`finalize` needs without the job's code: the result's
    kind, run, setting, extra metadata, sides, ids, block size and columns.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.ids = [int(i) for i in manifest["ids"]]
        self.size = int(manifest["size"])
        self.id_column = str(manifest["id_column"])
        self.columns = list(dict.fromkeys([self.id_column, *manifest["columns"]]))
        self.sides = {k: Side(**v) for k, v in manifest["sides"].items()}
        self.label = str(manifest["label"])
        n = len(self.ids)
        self.ranges = [(s, min(s + self.size, n)) for s in range(0, n, self.size)]

    @classmethod
    def of(cls, store: Store, job: Job) -> Parts:
        manifest = {
            "kind": job.kind,
            "run": job.run,
            "setting": job.setting,
            "extra": job.extra,
            "ids": [int(i) for i in job.ids],
            "size": int(job.size),
            "id_column": job.id_column,
            "columns": list(job.columns),
            "sides": {k: {"kind": s.kind, "head": s.head} for k, s in job.sides.items()},
            "label": job.label,
            "mergeable": job.shardable,
        }
        return cls(store.parts_dir(job.kind, job.run, job.setting), manifest)

    @classmethod
    def open(cls, folder: Path) -> Parts:
        """The part folder ``folder`` as its manifest describes it."""
        try:
            return cls(folder, json.loads((folder / MANIFEST).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            raise DmlError(f"{folder / MANIFEST} is missing or unreadable") from None

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def run(self) -> str:
        return str(self.manifest["run"])

    @property
    def mergeable(self) -> bool:
        return bool(self.manifest.get("mergeable", True))

    def prepare(self, force: bool, mine: Sequence[int]) -> None:
        """Write the manifest; check kept parts were made with the same blocks. ``force``
        discards the kept parts of blocks ``mine``."""
        path = self.folder / MANIFEST
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = None
            if old is not None and (old.get("ids"), old.get("size")) != (self.ids, self.size):
                if not force:
                    raise DmlError(
                        f"{self.folder} holds parts of {old.get('size')} samples per batch "
                        f"from another run; rerun with the same batch size "
                        f"({old.get('size')}) to resume, or --force to start over"
                    )
                shutil.rmtree(self.folder, ignore_errors=True)
        if force:
            for b in mine:
                for name in ["part", *self.sides]:
                    self._file(name, self.ranges[b][0]).unlink(missing_ok=True)
        data = json.dumps(self.manifest, sort_keys=True).encode()
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    def blocks_of(self, shard: Shard | None) -> list[int]:
        """The block numbers ``shard`` computes (every block when unsharded)."""
        every = range(len(self.ranges))
        return list(every if shard is None else shard.block(len(self.ranges)))

    def rows_of(self, blocks: Sequence[int]) -> int:
        return sum(self.ranges[b][1] - self.ranges[b][0] for b in blocks)

    def _file(self, name: str, start: int) -> Path:
        return self.folder / f"{name}-{start:06d}.parquet"

    def load(self, b: int) -> tuple[dict[str, pd.DataFrame], dict[str, Any]] | None:
        """Block ``b``'s frames (``rows`` and the sides) and part metadata, if valid."""
        start, stop = self.ranges[b]
        path = self._file("part", start)
        if not path.is_file():
            return None
        try:
            df, meta = read_parquet(path)
            frames = {"rows": df}
            for side in self.sides:
                frames[side], _ = read_parquet(self._file(side, start))
        except DmlError:
            return None
        if meta.get("part") != [start, stop] or any(c not in df.columns for c in self.columns):
            return None
        if _ids(df[self.id_column]) != self.ids[start:stop]:
            return None
        return frames, meta

    def write(self, b: int, frames: dict[str, pd.DataFrame], meta: dict[str, Any]) -> None:
        """Atomically store block ``b``: side frames first, the rows last."""
        start, stop = self.ranges[b]
        rows = frames["rows"]
        if _ids(rows[self.id_column]) != self.ids[start:stop]:
            raise ValueError(f"block {b} rows do not hold positions {start}..{stop - 1}")
        for side in self.sides:
            write_parquet(self._file(side, start), frames[side], {"part": [start, stop]})
        write_parquet(self._file("part", start), rows, {**meta, "part": [start, stop]})

    def missing(self) -> list[int]:
        return [b for b in range(len(self.ranges)) if self.load(b) is None]

    def missing_text(self, missing: Sequence[int]) -> str:
        """``'positions 10-19 (part-000010), ...'`` for the first few missing blocks."""
        spans = [
            f"positions {self.ranges[b][0]}-{self.ranges[b][1] - 1} (part-{self.ranges[b][0]:06d})"
            for b in missing[:3]
        ]
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return ", ".join(spans) + more

    def remove(self) -> None:
        """Delete the folder (``.parts`` above it stays: another process may write there)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _ids(column: pd.Series) -> list[int]:
    """The ids of a block's rows in order of first appearance (a sample may have several
    rows, e.g. one per scored member)."""
    return list(dict.fromkeys(int(v) for v in column))


def _assemble(parts: Parts) -> tuple[pd.DataFrame, list[dict], dict[str, pd.DataFrame]]:
    """Every block's rows in position order, part metadata and side frames; a
    :class:`DmlError` names the missing blocks (nothing is written then)."""
    frames, metas = [], []
    sides: dict[str, list[pd.DataFrame]] = {s: [] for s in parts.sides}
    gaps = []
    for b in range(len(parts.ranges)):
        got = parts.load(b)
        if got is None:
            gaps.append(b)
            continue
        frames.append(got[0]["rows"])
        metas.append(got[1])
        for s in parts.sides:
            sides[s].append(got[0][s])
    if gaps:
        raise DmlError(
            f"{parts.label} ({parts.folder.name}) of {parts.run}: {len(gaps)} of "
            f"{len(parts.ranges)} batches missing: {parts.missing_text(gaps)}; run the "
            "missing shard(s) or the same command again"
        )
    df = pd.concat(frames, ignore_index=True)
    joined = {
        s: pd.concat(v, ignore_index=True).head(parts.sides[s].head) for s, v in sides.items()
    }
    return df, metas, joined


def finalize(store: Store, parts: Parts, finish: Callable | None = None) -> Path:
    """Write the final result (and its side results) of a complete part folder, then remove
    the folder. Returns the result's path."""
    m = parts.manifest
    df, metas, sides = _assemble(parts)
    extra = {**m.get("extra", {}), **results.summary_meta(m["kind"], df, metas)}
    for name, side in parts.sides.items():
        store.write_result(side.kind, m["run"], m["setting"], sides[name], extra)
    outputs = finish(df) if finish is not None else {m["kind"]: (df, {})}
    for kind, (rows, more) in outputs.items():
        store.write_result(kind, m["run"], m["setting"], rows, {**extra, **more})
    parts.remove()
    return store.result_path(m["kind"], m["run"], m["setting"])


def run_job(
    store: Store,
    job: Job,
    *,
    force: bool = False,
    shard: Shard | None = None,
    progress: Reporter | None = None,
) -> Outcome:
    """Compute ``job`` (or read its stored result): see the module docstring."""
    path = store.result_path(job.kind, job.run, job.setting)
    if path.is_file() and not force:
        df, meta = store.read_result(path)
        return Outcome(job, path, "cached", df, meta)
    if shard is not None and not job.shardable:
        raise DmlError(f"{job.label} cannot be sharded: it needs every sample in one process")
    parts = Parts.of(store, job)
    mine = parts.blocks_of(shard)
    parts.prepare(force, mine)
    update = (progress or Reporter()).task(f"{job.run} {job.label}", parts.rows_of(mine))
    frames: list[pd.DataFrame] = []
    done = kept = 0
    try:
        for b in mine:
            start, stop = parts.ranges[b]
            got = parts.load(b)
            if got is None:

                def tick(fraction: float, info: str, base: int = done, rows: int = stop - start):
                    update(base + int(round(min(max(fraction, 0.0), 1.0) * rows)), info)

                block, meta = job.compute(start, stop, tick)
                parts.write(b, block, meta)
                rows = block["rows"]
            else:
                rows = got[0]["rows"]
            frames.append(rows)
            kept += 1
            done += len(rows)
            update(done, job.info(pd.concat(frames, ignore_index=True)) if job.info else "")
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        where = "" if shard is None else f" (shard {shard})"
        raise Interrupted(
            f"interrupted: {kept} of {len(mine)} batches{where} of {job.label} kept in "
            f"{parts.folder}; run the same command again to resume"
        ) from None
    if shard is not None:
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return Outcome(job, parts.folder, f"shard {shard}", rows, {})
    path = finalize(store, parts, job.finish)
    df, meta = store.read_result(path)
    return Outcome(job, path, "new", df, meta)


def run_jobs(
    store: Store,
    jobs: Sequence[Job],
    *,
    force: bool = False,
    shard: Shard | None = None,
    progress: Reporter | None = None,
) -> list[Outcome]:
    """:func:`run_job` for each job, in order."""
    return [run_job(store, j, force=force, shard=shard, progress=progress) for j in jobs]


@dataclass
class Merged:
    """A result :func:`merge` wrote (or, ``path`` None, a folder it cannot finish)."""

    run: str
    kind: str
    label: str
    rows: int
    blocks: int
    path: Path | None
    note: str = ""


def merge(store: Store, runs: Sequence[str] = ()) -> list[Merged]:
    """Write the final result of every complete part folder of ``runs`` (all when empty).

    Every folder is checked before anything is written: a missing block is one
    :class:`DmlError` naming it. Folders of jobs that cannot be merged (detection) are
    reported with a note and left alone.
    """
    all_parts = [Parts.open(f) for f in store.pending_parts(tuple(runs))]
    todo = [p for p in all_parts if p.mergeable]
    for p in todo:
        gaps = p.missing()
        if gaps:
            raise DmlError(
                f"cannot merge {p.label} of {p.run} ({p.folder}): {len(gaps)} of "
                f"{len(p.ranges)} batches missing, {p.missing_text(gaps)}; run the missing "
                "shard(s) again, then dml merge"
            )
    out = []
    for p in all_parts:
        if p not in todo:
            out.append(
                Merged(p.run, p.kind, p.label, len(p.ids), len(p.ranges), None, "rerun to finish")
            )
            continue
        path = finalize(store, p)
        out.append(Merged(p.run, p.kind, p.label, len(p.ids), len(p.ranges), path))
    return out
