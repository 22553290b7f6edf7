"""``dml ls``: the runs and results in the store."""

from __future__ import annotations

from dmlcli import api
from dmlcli.cli.common import ArtifactsOpt, summary
from dmlcli.store import Store


def command(artifacts: ArtifactsOpt = None) -> None:
    """List runs: name, dataset, K, head, benign vote accuracy, date, results."""
    df = api.ls(artifacts=artifacts)
    rows = [
        (r.run, r.dataset, r.members, r.head, "" if r.vote is None else f"{r.vote:.2f}", r.saved,
         r.results) if not r.problem else (r.run, "?", "?", "unreadable", "", r.problem[:40], "")
        for r in df.itertuples()
    ]  # fmt: skip
    columns = ["run", "dataset", "K", "head", "vote %", "saved", "results"]
    summary(f"runs in {Store(artifacts).root}", columns, rows)
