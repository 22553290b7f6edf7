"""``dml report``: render the paper's tables and figures from the store (nothing is rerun)."""

from __future__ import annotations

from rich.markup import escape

from dmlcli import api
from dmlcli.api.reporting import ReportOutcome, ReportSettings
from dmlcli.cli.common import command_of, console, summary
from dmlcli.report import paper_ref

HELP = "Tables (Tables 2-12 and the adaptive worst case) and figures (Fig. 1-21) per dataset."


def show(out: ReportOutcome, s: ReportSettings) -> None:
    """The files it could not read, then one line per table or figure (with its place in
    the paper) and the files written."""
    if out.rows.empty:
        console.print(
            "[yellow]the store holds no runs or results yet; the report is empty[/yellow]"
        )
    for problem in out.problems:
        console.print(f"[yellow]skipped unreadable file[/yellow] {escape(problem)}")
    rows = [
        (r.dataset, f"{r.item} ({paper_ref(r.item)})", r.rendered, escape(r.detail))
        for r in out.rows.itertuples()
    ]
    columns = ["dataset", "item (paper)", "rendered", "where / why not"]
    summary("report", columns, rows, out.files)


command = command_of(api.report, show, help=HELP)
