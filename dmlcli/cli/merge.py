"""``dml merge``: combine the shards (part files) of pending results into their final files."""

from __future__ import annotations

from typing import Annotated

import typer

from dmlcli import api
from dmlcli.cli.common import ArtifactsOpt, console, summary
from dmlcli.store import Store


def command(
    runs: Annotated[
        list[str] | None, typer.Argument(help="Runs whose pending results to merge (default all).")
    ] = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Write the final result of every pending attack/clever/certify result from its parts.

    Every sample must be present exactly once; otherwise one 'error:' line names the
    missing batches and nothing is written. Detection parts are not merged here (its
    logistic regression needs every sample): rerun 'dml detect' to finish them.
    """
    df = api.merge(runs, artifacts=artifacts)
    root = Store(artifacts).root
    done = df[df["path"] != ""]
    if done.empty:
        where = f" of {', '.join(runs)}" if runs else ""
        console.print(f"nothing to merge: no pending results{where} in {root}")
    for r in df[df["path"] == ""].itertuples():
        console.print(f"[yellow]{r.run} {r.result}[/yellow]: rerun dml detect to finish it")
    if not done.empty:
        rows = [[f"{r.run} {r.result}", r.rows, r.parts, str(r.path)] for r in done.itertuples()]
        summary(
            f"merged {len(rows)} result(s) in {root}", ["result", "rows", "parts", "file"], rows
        )
