"""``dml ls``: the runs and results in the store."""

from __future__ import annotations

from typing import Annotated

from dmlcli import api
from dmlcli.cli.common import ArtifactsOpt, console, defaults, flag, summary
from dmlcli.store import Store

D = defaults(api.ls)


def command(
    stale: Annotated[bool, flag("List the stale result files.", "--stale")] = D["stale"],
    remove_stale: Annotated[bool, flag("Delete the stale result files.", "--remove-stale")] = D[
        "remove_stale"
    ],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """List runs: name, dataset, K, head, defense, benign vote accuracy, date, results.

    A result is stale when it was computed from another checkpoint of the run (e.g. before
    'dml train --force') or by a dml of another result schema: the worst case and the
    report never use it.
    """
    df = api.ls(stale=stale, remove_stale=remove_stale, artifacts=artifacts)
    rows = [
        (r.run, r.dataset, r.members, r.head, r.defense,
         "" if r.vote is None else f"{r.vote:.2f}", r.saved, r.results, r.stale)
        if not r.problem else (r.run, "?", "?", "unreadable", "", "", r.problem[:40], "", "")
        for r in df.itertuples()
    ]  # fmt: skip
    columns = ["run", "dataset", "K", "head", "defense", "vote %", "saved", "results", "stale"]
    summary(f"runs in {Store(artifacts).root}", columns, rows)
    for path in df.attrs["stale"] if stale or remove_stale else []:
        console.print(f"[dim]{'removed' if remove_stale else 'stale'}[/dim] {path}")
