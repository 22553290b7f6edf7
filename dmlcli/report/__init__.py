"""``dml report``: the paper's tables and figures, rendered from the artifacts store.

``collect`` reads the store, ``tables`` and ``figures`` compute the content per dataset,
``render`` writes markdown, self-contained HTML, LaTeX (booktabs) and RobustBench JSON.
:func:`render_report` does all of it.
"""

from __future__ import annotations

from pathlib import Path

from dmlcli.errors import DmlError
from dmlcli.report.collect import Collection, collect
from dmlcli.report.figures import FIGURES, Figure
from dmlcli.report.render import FORMATS, Report, build, write
from dmlcli.report.tables import TABLES, Skip, Table
from dmlcli.store import Store


def paper_ref(key: str) -> str:
    """Where the paper has report item ``key`` (``T2, T3``: tables, ``F9-F11``: figures),
    from its :data:`TABLES` or :data:`FIGURES` entry; ``-`` for an unknown key."""
    for name, _, ref in [*TABLES, *FIGURES]:
        if name == key:
            return ref
    return "-"


def list_formats() -> list[str]:
    """Names accepted as report formats."""
    return list(FORMATS)


def render_report(
    store: Store | str | Path,
    out: str | Path | None = None,
    formats: list[str] | tuple = ("markdown",),
) -> tuple[Report, list[Path]]:
    """Read the store, build every table and figure, write ``formats`` into ``out``
    (default ``ARTIFACTS/report``). Returns the report and the files written."""
    store = store if isinstance(store, Store) else Store(store)
    formats = list(dict.fromkeys(formats))
    for f in formats:
        if f not in FORMATS:
            raise DmlError(f"unknown report format {f!r}; choose from {', '.join(FORMATS)}")
    out = Path(out) if out is not None else store.report_dir()
    if out.exists() and not out.is_dir():
        raise DmlError(f"--out {out} exists and is not a directory")
    col = collect(store)
    needs_figures = any(f != "json" for f in formats)
    report = build(col, out, figures=needs_figures)
    files = write(report, col, out, formats)
    return report, files


__all__ = [
    "paper_ref",
    "FIGURES",
    "FORMATS",
    "TABLES",
    "Collection",
    "Figure",
    "Report",
    "Skip",
    "Table",
    "collect",
    "list_formats",
    "render_report",
]
