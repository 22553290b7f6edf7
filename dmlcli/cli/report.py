"""``dml report``: render the paper's tables and figures from the store (nothing is rerun)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dmlcli import api
from dmlcli.cli.common import ArtifactsOpt, console, defaults, summary
from dmlcli.report import paper_ref

D = defaults(api.report)

#: Where each item stands in the paper (T = table, F = figure).


def command(
    store_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="ARTIFACTS", help="Artifacts directory (default --artifacts or ./artifacts)."
        ),
    ] = None,
    format: Annotated[  # noqa: A002 - the flag is --format
        list[str] | None,
        typer.Option(
            "--format", "-f", help="markdown, html, latex or json (repeatable; default markdown)."
        ),
    ] = D["format"],
    out: Annotated[Path | None, typer.Option(help="Output folder (default ARTIFACTS/report).")] = D[
        "out"
    ],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Tables (Tables 2-12 and the adaptive worst case) and figures (Fig. 1-21) per dataset."""
    df = api.report(store_dir, format=format, out=out, artifacts=artifacts)
    if df.empty:
        console.print(
            "[yellow]the store holds no runs or results yet; the report is empty[/yellow]"
        )
    for problem in df.attrs["problems"]:
        console.print(f"[yellow]skipped unreadable file[/yellow] {escape(problem)}")
    rows = [
        (r.dataset, f"{r.item} ({paper_ref(r.item)})", r.rendered, escape(r.detail))
        for r in df.itertuples()
    ]
    columns = ["dataset", "item (paper)", "rendered", "where / why not"]
    summary("report", columns, rows, df.attrs["files"])
