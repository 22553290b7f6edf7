"""``dml merge``: combine the shards (part files) of pending results into their final files."""

from __future__ import annotations

from dmlcli import api
from dmlcli.api.robustness import MergeOutcome, MergeSettings
from dmlcli.cli.common import command_of, console, summary
from dmlcli.store import Store

HELP = """Write the final result of every pending attack/clever/certify result from its parts.

Every sample must be present exactly once; otherwise one 'error:' line names the
missing batches and nothing is written. Detection parts are not merged here (its
logistic regression needs every sample): rerun 'dml detect' to finish them.
"""


def show(out: MergeOutcome, s: MergeSettings) -> None:
    """The results written, and each part folder left to its own command."""
    df, root = out.rows, Store(s.artifacts).root
    done = df[df["path"] != ""]
    if done.empty:
        where = f" of {', '.join(s.runs)}" if s.runs else ""
        console.print(f"nothing to merge: no pending results{where} in {root}")
    for r in df[df["path"] == ""].itertuples():
        console.print(f"[yellow]{r.run} {r.result}[/yellow]: rerun dml detect to finish it")
    if not done.empty:
        rows = [[f"{r.run} {r.result}", r.rows, r.parts, str(r.path)] for r in done.itertuples()]
        summary(
            f"merged {len(rows)} result(s) in {root}", ["result", "rows", "parts", "file"], rows
        )


command = command_of(api.merge, show, help=HELP)
