"""``dml ls``: the runs and results in the store."""

from __future__ import annotations

from dmlcli.cli.common import ArtifactsOpt, open_store, summary
from dmlcli.errors import DmlError


def command(artifacts: ArtifactsOpt = None) -> None:
    """List runs: name, dataset, K, head, benign vote accuracy, date, results."""
    from dmlcli.store import read_tensors

    store = open_store(artifacts)
    rows = []
    for run in store.list_runs():
        try:
            _, meta, _ = read_tensors(store.model_path(run))
        except DmlError as exc:
            rows.append((run, "?", "?", "unreadable", "", str(exc)[:40], ""))
            continue
        cfg = meta.get("config", {})
        vote = meta.get("benign", {}).get("vote")
        n_results = len(list((store.root / "results" / run).glob("*.parquet")))
        rows.append(
            (
                run,
                cfg.get("dataset"),
                cfg.get("members"),
                cfg.get("head"),
                f"{vote:.2f}" if vote is not None else "",
                meta.get("saved", "")[:19],
                n_results,
            )
        )
    summary(
        f"runs in {store.root}", ["run", "dataset", "K", "head", "vote %", "saved", "results"], rows
    )
