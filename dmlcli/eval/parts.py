"""Part files: long evaluations written batch by batch, resumable, shardable, mergeable.

While ``dml attack``, ``dml clever``, ``dml certify`` or ``dml detect`` computes a result,
every finished batch of samples is written atomically as a part file::

    results/<run>/.parts/<kind>-<key>/manifest.json           what the result is (JSON)
    results/<run>/.parts/<kind>-<key>/part-<start:06d>.parquet rows of positions start..stop-1
    results/<run>/.parts/<kind>-<key>/<side>-<start:06d>.parquet  side rows (adv examples)

``<kind>-<key>`` is the final result's file name (:meth:`dmlcli.store.Store.result_path`),
so a part folder belongs to exactly one setting. Positions index the seeded evaluation
samples (``eval_indices``); batch ``b`` covers positions ``[b * size, (b + 1) * size)``. A
part is accepted only if it is a readable parquet with the expected columns and exactly the
expected sample ids; side files are written first, so a part file means its batch is done.

Running the same command again reads the valid parts back and computes only the missing
batches. ``--shard i/n`` computes only the i-th contiguous block of batches (torchrun's
``RANK``/``WORLD_SIZE`` when set), and ``dml merge`` (or an unsharded rerun) turns a
complete folder into the final result, exactly the file an uninterrupted unsharded run
writes (it goes through the same :func:`finalize`), then removes the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli.errors import DmlError
from dmlcli.store import Store, atomic_write_bytes, read_parquet, setting_key, write_parquet

PARTS_DIR = ".parts"
MANIFEST = "manifest.json"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a part-wise evaluation; the message says what was kept and how to resume."""


@contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """For CLI commands: print an :class:`Interrupted` message as one line, exit code 130.

    (Typer turns a ``KeyboardInterrupt`` escaping a command into a silent exit code, so the
    command itself must print the line and raise ``SystemExit``.)
    """
    try:
        yield
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(130) from None


# -- sharding -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def block(self, batches: int) -> range:
        """This shard's contiguous block of batch numbers out of ``batches``."""
        lo = (self.index - 1) * batches // self.count
        hi = self.index * batches // self.count
        return range(lo, hi)


def parse_shard(text: str | None) -> Shard | None:
    """``'2/4'`` -> shard 2 of 4; ``None`` -> torchrun's ``RANK``/``WORLD_SIZE`` if
    ``WORLD_SIZE > 1``, else unsharded (``None``)."""
    if text is None:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
        except ValueError:
            raise DmlError("WORLD_SIZE and RANK must be integers") from None
        if world <= 1:
            return None
        if not 0 <= rank < world:
            raise DmlError(f"RANK {rank} is outside 0..{world - 1} (WORLD_SIZE {world})")
        return Shard(rank + 1, world)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DmlError(f"cannot read --shard {text!r}; write i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise DmlError(f"--shard {text}: i must lie in 1..n")
    return Shard(i, n) if n > 1 else None


def parse_part_options(shard: str | None, part_size: int) -> Shard | None:
    """Check ``--part-size`` and read ``--shard`` (see :func:`parse_shard`)."""
    if part_size < 1:
        raise DmlError(f"--part-size must be at least 1; got {part_size}")
    return parse_shard(shard)


def rank_device(device: str) -> str:
    """``--device auto`` under torchrun with GPUs: ``cuda:<LOCAL_RANK>``, one GPU per rank."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    if device != "auto" or local is None or not torch.cuda.is_available():
        return device
    try:
        return f"cuda:{int(local) % torch.cuda.device_count()}"
    except ValueError:
        return device


# -- one result's part folder ---------------------------------------------------------------
def parts_dir(store: Store, kind: str, run: str, setting: dict[str, Any]) -> Path:
    """``results/<run>/.parts/<kind>-<key>`` of the result ``store.result_path(...)``."""
    return store.root / "results" / run / PARTS_DIR / f"{kind}-{setting_key(setting)}"


class Parts:
    """The part folder of one result: a manifest, then one file (+ side files) per batch.

    ``ids`` ``[n]`` are the sample ids in position order (the id column ``id_column`` of
    every row); ``size`` positions form a batch; ``columns`` must be in every part;
    ``sides`` name side frames stored per batch (e.g. ``examples``); ``result`` is what
    :func:`finalize` needs (kind, run, setting, extra metadata, ...); ``label`` names the
    result in messages (``pgd-10 eps 0.1``).
    """

    def __init__(
        self,
        folder: Path,
        ids: Sequence[int],
        size: int,
        result: dict[str, Any],
        *,
        id_column: str = "sample",
        columns: Sequence[str] = (),
        sides: Sequence[str] = (),
        label: str = "",
    ) -> None:
        self.folder = folder
        self.ids = [int(i) for i in ids]
        self.size = int(size)
        self.id_column = id_column
        self.columns = list(dict.fromkeys([id_column, *columns]))
        self.sides = list(sides)
        self.result = result
        self.label = label or result.get("kind", "result")
        n = len(self.ids)
        self.ranges = [(s, min(s + self.size, n)) for s in range(0, n, self.size)]

    @classmethod
    def for_result(
        cls,
        store: Store,
        kind: str,
        run: str,
        setting: dict[str, Any],
        ids: Sequence[int],
        size: int,
        extra: dict[str, Any] | None = None,
        **options: Any,
    ) -> Parts:
        """The part folder of the result ``store.result_path(kind, run, setting)``;
        ``extra`` is stored with the final result, ``options`` as in the constructor plus
        ``result_sides`` (side results, see :func:`finalize`)."""
        result: dict[str, Any] = {"kind": kind, "run": run, "setting": setting}
        if extra:
            result["extra"] = extra
        if "result_sides" in options:
            result["sides"] = options.pop("result_sides")
        return cls(parts_dir(store, kind, run, setting), ids, size, result, **options)

    # -- manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "size": self.size,
            "id_column": self.id_column,
            "columns": self.columns,
            "sides": self.sides,
            "result": self.result,
            "label": self.label,
        }

    @classmethod
    def open(cls, folder: Path) -> Parts:
        """The part folder ``folder`` as described by its manifest."""
        try:
            m = json.loads((folder / MANIFEST).read_text())
            return cls(
                folder,
                m["ids"],
                m["size"],
                m["result"],
                id_column=m["id_column"],
                columns=m["columns"],
                sides=m["sides"],
                label=m.get("label", ""),
            )
        except (OSError, ValueError, KeyError, TypeError):
            raise DmlError(f"{folder / MANIFEST} is missing or unreadable") from None

    def prepare(self, force: bool = False, mine: Sequence[int] | None = None) -> None:
        """Write the manifest; check kept parts were made with the same batches.

        ``force`` discards the kept parts of batches ``mine`` (all when ``None``).
        """
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
            for b in range(len(self.ranges)) if mine is None else mine:
                for name in ["part", *self.sides]:
                    self._file(name, self.ranges[b][0]).unlink(missing_ok=True)
        data = json.dumps(self.manifest(), sort_keys=True).encode()
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    def batches_of(self, shard: Shard | None) -> list[int]:
        """The batch numbers ``shard`` computes (every batch when unsharded)."""
        every = range(len(self.ranges))
        return list(every if shard is None else shard.block(len(self.ranges)))

    def rows_of(self, batches: Sequence[int]) -> int:
        """How many samples the batches ``batches`` hold."""
        return sum(self.ranges[b][1] - self.ranges[b][0] for b in batches)

    def shard_note(self, shard: Shard, store: Store) -> str:
        """The closing line of a shard: what it kept and how to finish the result."""
        mine = self.batches_of(shard)
        return (
            f"shard {shard}: {len(mine)} batches ({self.rows_of(mine)} samples) of "
            f"{self.label} kept in {self.folder}; run `dml merge --artifacts {store.root}` "
            "once every shard is done"
        )

    # -- parts ------------------------------------------------------------------------------
    def _file(self, name: str, start: int) -> Path:
        return self.folder / f"{name}-{start:06d}.parquet"

    def read(self, b: int) -> dict[str, pd.DataFrame] | None:
        """Batch ``b``'s frames (``part`` and the sides) if its files are valid, else None."""
        got = self.load(b)
        return None if got is None else got[0]

    def load(self, b: int) -> tuple[dict[str, pd.DataFrame], dict[str, Any]] | None:
        """Batch ``b``'s frames and the metadata of its part, if its files are valid."""
        start, stop = self.ranges[b]
        path = self._file("part", start)
        if not path.is_file():
            return None
        try:
            df, meta = read_parquet(path)
            frames = {"part": df}
            for side in self.sides:
                frames[side], _ = read_parquet(self._file(side, start))
        except DmlError:
            return None
        if meta.get("part") != [start, stop] or any(c not in df.columns for c in self.columns):
            return None
        if [int(v) for v in df[self.id_column]] != self.ids[start:stop]:
            return None
        return frames, meta

    def done(self) -> list[int]:
        """Batch numbers whose parts are valid."""
        return [b for b in range(len(self.ranges)) if self.read(b) is not None]

    def write(self, b: int, frames: dict[str, pd.DataFrame], meta: dict | None = None) -> None:
        """Atomically store batch ``b``: side frames first, the ``part`` frame last."""
        start, stop = self.ranges[b]
        part = frames["part"]
        if [int(v) for v in part[self.id_column]] != self.ids[start:stop]:
            raise ValueError(f"batch {b} rows do not hold samples {start}..{stop - 1}")
        for side in self.sides:
            write_parquet(self._file(side, start), frames[side], {"part": [start, stop]})
        write_parquet(self._file("part", start), part, {**(meta or {}), "part": [start, stop]})

    def missing_text(self, missing: Sequence[int]) -> str:
        """``'positions 10-19 (part-000010), ...'`` for the first few missing batches."""
        spans = [
            f"positions {self.ranges[b][0]}-{self.ranges[b][1] - 1} (part-{self.ranges[b][0]:06d})"
            for b in missing[:3]
        ]
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return ", ".join(spans) + more

    def remove(self) -> None:
        """Delete the folder (``.parts`` above it stays: another process may be writing there)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def run_batches(
    parts: Parts,
    compute: Callable[[int, int, int], tuple[dict[str, pd.DataFrame], dict[str, Any]]],
    *,
    shard: Shard | None = None,
    on_batch: Callable[[int, dict[str, pd.DataFrame]], None] | None = None,
) -> list[int]:
    """Compute and store every missing batch of this shard (all batches if unsharded).

    ``compute(b, start, stop)`` returns batch ``b``'s frames (``part`` + sides) and the
    metadata stored with its part; ``on_batch(b, frames)`` is called for every batch, kept
    or new (progress). Ctrl-C raises :class:`Interrupted` with one line saying what was
    kept and how to resume. Returns this shard's batch numbers.
    """
    mine = parts.batches_of(shard)
    kept = 0
    try:
        for b in mine:
            frames = parts.read(b)
            if frames is None:
                start, stop = parts.ranges[b]
                frames, meta = compute(b, start, stop)
                parts.write(b, frames, meta)
            kept += 1
            if on_batch is not None:
                on_batch(b, frames)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        where = "" if shard is None else f" (shard {shard})"
        raise Interrupted(
            f"interrupted: {kept} of {len(mine)} batches{where} of {parts.label} kept in "
            f"{parts.folder}; run the same command again to resume"
        ) from None
    return mine


# -- finishing a result ---------------------------------------------------------------------------
def _finish_attack(df: pd.DataFrame, metas: list[dict], result: dict) -> dict[str, Any]:
    warnings: list[str] = []
    for m in metas:
        warnings += [w for w in m.get("warnings", []) if w not in warnings]
    return {"warnings": warnings}


def _finish_clever(df: pd.DataFrame, metas: list[dict], result: dict) -> dict[str, Any]:
    from dmlcli.eval.clever import score_quantiles

    return {"quantiles": score_quantiles(df["score"].to_numpy())}


def _finish_certify(df: pd.DataFrame, metas: list[dict], result: dict) -> dict[str, Any]:
    from dmlcli.eval.certify import certified_accuracy, fine_radii

    curve = certified_accuracy(df, fine_radii(df))
    return {"curve": {"radius": curve["radius"].tolist(), "accuracy": curve["accuracy"].tolist()}}


FINISHERS: dict[str, Callable[[pd.DataFrame, list[dict], dict], dict[str, Any]]] = {
    "attack": _finish_attack,
    "clever": _finish_clever,
    "certify": _finish_certify,
}


def missing(parts: Parts) -> list[int]:
    """Batch numbers without a valid part."""
    have = set(parts.done())
    return [b for b in range(len(parts.ranges)) if b not in have]


def finalize(store: Store, parts: Parts) -> list[Path]:
    """Write the final result(s) of a complete part folder, then remove the folder.

    The rows are the parts in position order (every sample exactly once, checked); side
    frames become their own results (``result['sides'][name] = {'kind', 'head'}``: the
    first ``head`` rows). Returns the written paths; a :class:`DmlError` names what is
    missing if the folder is incomplete (nothing is written then).
    """
    result = parts.result
    frames, metas = [], []
    sides: dict[str, list[pd.DataFrame]] = {s: [] for s in parts.sides}
    gaps = []
    for b in range(len(parts.ranges)):
        got = parts.load(b)
        if got is None:
            gaps.append(b)
            continue
        frames.append(got[0]["part"])
        metas.append(got[1])
        for s in parts.sides:
            sides[s].append(got[0][s])
    if gaps:
        raise DmlError(
            f"{parts.label} ({parts.folder.name}) of {result['run']}: {len(gaps)} of "
            f"{len(parts.ranges)} batches missing: {parts.missing_text(gaps)}; run the "
            "missing shard(s) or the same command again"
        )
    df = pd.concat(frames, ignore_index=True)
    ids = [int(v) for v in df[parts.id_column]]
    if ids != parts.ids or len(set(ids)) != len(ids):  # pragma: no cover - read() checks
        raise DmlError(f"{parts.folder}: parts do not hold every sample exactly once")
    extra = dict(result.get("extra", {}))
    finisher = FINISHERS.get(result["kind"])
    if finisher is not None:
        extra.update(finisher(df, metas, result))
    written = []
    for s, spec in result.get("sides", {}).items():
        side = pd.concat(sides[s], ignore_index=True).head(int(spec.get("head", 10**12)))
        written.append(
            store.write_result(spec["kind"], result["run"], result["setting"], side, extra)
        )
    written.append(store.write_result(result["kind"], result["run"], result["setting"], df, extra))
    parts.remove()
    return written


def pending(store: Store, runs: Sequence[str] = ()) -> list[Path]:
    """Part folders (with a manifest) under ``results/<run>/.parts`` of ``runs`` (all if empty)."""
    base = store.root / "results"
    found = sorted(base.glob(f"*/{PARTS_DIR}/*/{MANIFEST}")) if base.is_dir() else []
    folders = [p.parent for p in found]
    if runs:
        folders = [f for f in folders if f.parent.parent.name in runs]
    return folders
