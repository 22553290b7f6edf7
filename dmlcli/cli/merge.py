"""``dml merge``: combine the shards (part files) of pending results into their final files."""

from __future__ import annotations

from typing import Annotated

import typer

from dmlcli.cli.common import ArtifactsOpt, console, open_store, summary
from dmlcli.errors import DmlError


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
    from dmlcli.eval.parts import FINISHERS, Parts, finalize, missing, pending
    from dmlcli.store import validate_name

    store = open_store(artifacts)
    for run in runs or []:
        validate_name(run)
    folders = pending(store, runs or [])
    all_parts = [Parts.open(f) for f in folders]
    todo = [p for p in all_parts if p.result.get("kind") in FINISHERS]
    skipped = [p for p in all_parts if p not in todo]
    if not todo:
        where = f" of {', '.join(runs)}" if runs else ""
        console.print(f"nothing to merge: no pending results{where} in {store.root}")
    for p in todo:  # check everything before writing anything
        gaps = missing(p)
        if gaps:
            raise DmlError(
                f"cannot merge {p.label} of {p.result['run']} ({p.folder}): {len(gaps)} of "
                f"{len(p.ranges)} batches missing, {p.missing_text(gaps)}; run the missing "
                "shard(s) again, then dml merge"
            )
    rows = []
    for p in todo:
        count = len(p.ranges)
        written = finalize(store, p)
        file = written[-1].relative_to(store.root)
        rows.append([f"{p.result['run']} {p.label}", len(p.ids), count, str(file)])
    for p in skipped:
        console.print(f"[yellow]{p.folder}[/yellow]: rerun dml detect to finish it")
    if rows:
        summary(
            f"merged {len(rows)} result(s) in {store.root}",
            ["result", "rows", "parts", "file"],
            rows,
        )
