"""``dml ls``: the runs and results in the store."""

from __future__ import annotations

from dmlcli import api
from dmlcli.api.listing import LsOutcome, LsSettings
from dmlcli.cli.common import command_of, console, summary
from dmlcli.store import Store

HELP = """List runs: name, dataset, K, head, defense, benign vote accuracy, date, results.

A result is stale when it was computed from another checkpoint of the run (e.g. before
'dml train --force') or by a dml of another result schema: the worst case and the
report never use it.
"""


def show(out: LsOutcome, s: LsSettings) -> None:
    """The runs table, then (``--stale``/``--remove-stale``) every stale file."""
    rows = [
        (r.run, r.dataset, r.members, r.head, r.defense,
         "" if r.vote is None else f"{r.vote:.2f}", r.saved, r.results, r.stale)
        if not r.problem else (r.run, "?", "?", "unreadable", "", "", r.problem[:40], "", "")
        for r in out.rows.itertuples()
    ]  # fmt: skip
    columns = ["run", "dataset", "K", "head", "defense", "vote %", "saved", "results", "stale"]
    summary(f"runs in {Store(s.artifacts).root}", columns, rows)
    for path in out.stale if s.stale or s.remove_stale else []:
        console.print(f"[dim]{'removed' if out.removed else 'stale'}[/dim] {path}")


command = command_of(api.ls, show, help=HELP)
