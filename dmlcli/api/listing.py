"""``dml ls``: the runs in the store, their results and which of those are stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli.api._common import PathLike
from dmlcli.errors import DmlError
from dmlcli.files import (
    read_tensor_digest,
)
from dmlcli.models.io import checkpoint_config
from dmlcli.models.spec import read_spec, spec_digest
from dmlcli.store import Store


def ls(
    *, stale: bool = False, remove_stale: bool = False, artifacts: PathLike | None = None
) -> pd.DataFrame:
    """The runs in the store (trained ones, and users' ensembles used through a model spec):
    name, dataset, K, head, defense, benign vote accuracy, date, results, and how many of those
    results are stale (computed from another checkpoint of the run, e.g. before a ``train
    --force`` or a changed weight of a spec, or of another schema version; never used by the
    worst case or the report).
    ``attrs['stale']`` lists the stale files; ``remove_stale`` deletes them."""
    store = Store(artifacts)
    rows: list[dict[str, Any]] = []
    old: list[Path] = []

    def row(name: str, digest: str, **info: Any) -> dict[str, Any]:
        files = store.list_results(run=name)
        mine = [p for p in files if _checkpoint_of(store, p) != digest]
        old.extend(mine)
        return {"run": name, **info, "results": len(files) - len(mine), "stale": len(mine)}

    for name in store.list_runs():
        try:
            config, meta = checkpoint_config(store.checkpoint_path(name))
            digest = read_tensor_digest(store.checkpoint_path(name))
        except DmlError as exc:
            rows.append({"run": name, "problem": str(exc)})
            continue
        benign = meta.get("benign", {}).get("vote")
        saved = str(meta.get("saved", ""))[:19]
        rows.append(row(name, digest, dataset=config.dataset, members=config.members,
                        head=config.head, defense=config.defense, vote=benign,
                        saved=saved))  # fmt: skip
    for name in store.list_spec_runs():  # users' ensembles: identity from the files now
        record = store.spec_record(name) or {}
        try:
            digest = spec_digest(read_spec(record.get("spec", store.spec_record_path(name))))
        except DmlError as exc:
            rows.append({"run": name, "problem": str(exc)})
            continue
        saved = str(record.get("recorded", ""))[:19]
        rows.append(row(name, digest, dataset=record.get("dataset"), members=record.get("members"),
                        head="user", defense="", vote=None, saved=saved))  # fmt: skip
    if remove_stale:
        for path in old:
            path.unlink(missing_ok=True)
    cols = ["run", "dataset", "members", "head", "defense", "vote", "saved", "results", "stale",
            "problem"]  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    df["problem"] = df["problem"].astype(object).fillna("")
    df.attrs.update(stale=[str(p) for p in old], removed=remove_stale)
    return df


def _checkpoint_of(store: Store, path: Path) -> str | None:
    """The checkpoint digest a stored result was computed from (None if unreadable or of
    another schema version)."""
    try:
        return store.result_meta(path)["setting"].get("checkpoint")
    except DmlError:
        return None
