"""``dml ls``: the runs in the store, their results and which of those are stale."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli.api.settings import InStore, entry_point, flag
from dmlcli.errors import DmlError
from dmlcli.files import read_tensor_digest
from dmlcli.models.io import checkpoint_config
from dmlcli.models.spec import read_spec, spec_digest
from dmlcli.store import Store


@dataclass(kw_only=True)
class LsSettings(InStore):
    """The options of ``dml ls`` / :func:`ls` (each field is one option)."""

    stale: bool = flag("List the stale result files.")
    remove_stale: bool = flag("Delete the stale result files.")


@dataclass
class LsOutcome:
    """What :func:`ls` found. ``rows``: one per run (``run``, ``dataset``, ``members``,
    ``head``, ``defense``, ``vote``: benign vote accuracy %, ``saved``: date, ``results``,
    ``stale``: how many of its results are stale, ``problem``: why an unreadable run could
    not be read, else empty)."""

    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Every stale result file (of every run).
    stale: list[Path] = field(default_factory=list)
    #: Whether the stale files were deleted (``remove_stale``).
    removed: bool = False


@entry_point(LsSettings)
def ls(s: LsSettings) -> LsOutcome:
    """The runs in the store (trained ones, and users' ensembles used through a model spec):
    name, dataset, K, head, defense, benign vote accuracy, date, results, and how many of those
    results are stale (computed from another checkpoint of the run, e.g. before a ``train
    --force`` or a changed weight of a spec, or of another schema version; never used by the
    worst case or the report). ``remove_stale`` deletes the stale files.

    Returns an :class:`LsOutcome`: ``rows`` (one per run), ``stale`` (the stale files) and
    ``removed``.
    """
    store = Store(s.artifacts)
    old: list[Path] = []
    rows = _trained_rows(store, old) + _spec_rows(store, old)
    if s.remove_stale:
        for path in old:
            path.unlink(missing_ok=True)
    cols = ["run", "dataset", "members", "head", "defense", "vote", "saved", "results", "stale",
            "problem"]  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    df["problem"] = df["problem"].astype(object).fillna("")
    return LsOutcome(rows=df, stale=old, removed=s.remove_stale)


def _row(store: Store, name: str, digest: str, old: list[Path], **info: Any) -> dict[str, Any]:
    """The row of run ``name`` whose checkpoint is ``digest``: its results, those of another
    checkpoint counted as stale (and added to ``old``)."""
    files = store.list_results(run=name)
    mine = [p for p in files if _checkpoint_of(store, p) != digest]
    old.extend(mine)
    return {"run": name, **info, "results": len(files) - len(mine), "stale": len(mine)}


def _trained_rows(store: Store, old: list[Path]) -> list[dict[str, Any]]:
    """A row per trained run (an unreadable checkpoint: its ``problem``)."""
    rows: list[dict[str, Any]] = []
    for name in store.list_runs():
        try:
            config, meta = checkpoint_config(store.checkpoint_path(name))
            digest = read_tensor_digest(store.checkpoint_path(name))
        except DmlError as exc:
            rows.append({"run": name, "problem": str(exc)})
            continue
        benign = meta.get("benign", {}).get("vote")
        saved = str(meta.get("saved", ""))[:19]
        rows.append(_row(store, name, digest, old, dataset=config.dataset,
                         members=config.members, head=config.head, defense=config.defense,
                         vote=benign, saved=saved))  # fmt: skip
    return rows


def _spec_rows(store: Store, old: list[Path]) -> list[dict[str, Any]]:
    """A row per user's ensemble used through a model spec: its identity from the files as
    they are now (an unreadable spec: its ``problem``)."""
    rows: list[dict[str, Any]] = []
    for name in store.list_spec_runs():
        record = store.spec_record(name) or {}
        try:
            digest = spec_digest(read_spec(record.get("spec", store.spec_record_path(name))))
        except DmlError as exc:
            rows.append({"run": name, "problem": str(exc)})
            continue
        saved = str(record.get("recorded", ""))[:19]
        rows.append(_row(store, name, digest, old, dataset=record.get("dataset"),
                         members=record.get("members"), head="user", defense="", vote=None,
                         saved=saved))  # fmt: skip
    return rows


def _checkpoint_of(store: Store, path: Path) -> str | None:
    """The checkpoint digest a stored result was computed from (None if unreadable or of
    another schema version)."""
    try:
        return store.result_meta(path)["setting"].get("checkpoint")
    except DmlError:
        return None
