"""``dml report``: render the paper's tables and figures from the store (nothing is rerun)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dmlcli.cli.common import ArtifactsOpt, console, summary


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
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default ARTIFACTS/report).")
    ] = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Tables (Tables 2-12 and the adaptive worst case) and figures (Fig. 1-21) per dataset."""
    from rich.markup import escape

    from dmlcli.errors import DmlError
    from dmlcli.report import render_report
    from dmlcli.report.tables import Skip, Table
    from dmlcli.store import default_root

    if store_dir is not None and artifacts is not None and store_dir != artifacts:
        raise DmlError(f"two stores given: {store_dir} and --artifacts {artifacts}; give one")
    root = store_dir or artifacts or default_root()
    report, files = render_report(root, out, format or ["markdown"])
    out_dir = files[0].parent if files else root / "report"
    rows = []
    for sec in report.sections:
        for item in sec.items:
            name = f"{item.key} ({REFS.get(item.key, '-')})"
            if isinstance(item, Skip):
                rows.append((sec.dataset, name, f"{item.kind}: skipped", escape(item.reason)))
            elif isinstance(item, Table):
                rows.append((sec.dataset, name, "table", f"{len(item.rows)} rows"))
            else:
                rows.append((sec.dataset, name, "figure", escape(_rel(item.path, out_dir))))
    if not report.sections:
        console.print(f"[yellow]{root} holds no runs or results yet; the report is empty[/yellow]")
    for problem in report.problems:
        console.print(f"[yellow]skipped unreadable file[/yellow] {problem}")
    summary(
        f"report of {root}", ["dataset", "item (paper)", "rendered", "where / why not"], rows, files
    )


#: Where each item stands in the paper (T = table, F = figure).
REFS = {
    "benign": "benign acc.",
    "whitebox": "T2, T3, T10",
    "transfer": "T4, T11; heat map",
    "cw_distortion": "T5, T12",
    "rdml": "T6, T9",
    "autoattack": "T7, T8",
    "adaptive": "not in paper",
    "clever": "F1, F7, F8",
    "certify": "F14-F16",
    "detect": "F3, F4, F6",
    "surfaces": "F2, F17",
    "roc": "F3, F4, F6",
    "uncertainty": "F5",
    "gradients": "F9-F11",
    "training": "F12, F13",
    "distortion": "F18",
    "examples": "F19-F21",
}


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
