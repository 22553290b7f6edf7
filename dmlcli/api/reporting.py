"""``dml report`` and ``dml export``: stored results rendered as the paper's tables and
figures, or written in other tools' formats (nothing is rerun)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli import results
from dmlcli.api.settings import InStore, argument, entry_point, option
from dmlcli.errors import DmlError
from dmlcli.models.io import Run
from dmlcli.runs import open_run
from dmlcli.store import Store


# -- report ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ReportSettings(InStore):
    """The options of ``dml report`` / :func:`report` (each field is one option)."""

    store_dir: str | Path | None = argument(
        "Artifacts directory (default --artifacts or ./artifacts).", None, metavar="ARTIFACTS"
    )
    format: list[str] | None = option(
        None, "markdown, html, latex or json (repeatable; default markdown).",
        flags=("--format", "-f"),
    )  # fmt: skip
    out: str | Path | None = option(None, "Output folder (default ARTIFACTS/report).")

    def check(self) -> None:
        given = (self.store_dir, self.artifacts)
        if None not in given and Path(given[0]) != Path(given[1]):
            raise DmlError(f"two stores given: {given[0]} and --artifacts {given[1]}; give one")


@dataclass
class ReportOutcome:
    """What :func:`report` rendered: ``rows``, one per table or figure (columns ``dataset,
    item, rendered, detail``: what was rendered, where or why not); ``files``, the files it
    wrote; ``problems``, the stored files it could not read (left out of the report)."""

    rows: pd.DataFrame = field(repr=False)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@entry_point(ReportSettings)
def report(s: ReportSettings) -> ReportOutcome:
    """Render the paper's tables and figures from the stored results (nothing is rerun) as
    markdown, HTML, LaTeX and/or RobustBench JSON (``format``, default markdown) into ``out``
    (default ``ARTIFACTS/report``). Options: :class:`ReportSettings`.

    Returns a :class:`ReportOutcome`: one row per table or figure, the files written and the
    files that could not be read."""
    from dmlcli.report import Skip, Table, render_report

    rep, files = render_report(Store(s.store_dir or s.artifacts), s.out, s.format or ["markdown"])
    rows = []
    for sec in rep.sections:
        for item in sec.items:
            if isinstance(item, Skip):
                rendered, detail = f"{item.kind}: skipped", item.reason
            elif isinstance(item, Table):
                rendered, detail = "table", f"{len(item.rows)} rows"
            else:
                rendered, detail = "figure", str(item.path)
            rows.append({"dataset": sec.dataset, "item": item.key, "rendered": rendered,
                         "detail": detail})  # fmt: skip
    frame = pd.DataFrame(rows, columns=["dataset", "item", "rendered", "detail"])
    return ReportOutcome(frame, [Path(f) for f in files], list(rep.problems))


# -- export -----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ExportSettings(InStore):
    """The options of ``dml export`` / :func:`export` (each field is one option)."""

    run: str = argument("Run name, run folder, checkpoint or model spec (.toml).")
    format: str = option(
        "csv", "csv, autoattack-log, cohen-tsv or adversarials.", flags=("--format", "-f")
    )
    kind: str | None = option(None, "csv: only results of this kind (attack, certify, ...).")
    attack: str | None = option(None, "Only results of this attack label (e.g. pgd-10).")
    out: str | Path | None = option(None, "Output folder (default ARTIFACTS/exports/RUN).")

    def check(self) -> None:
        from dmlcli.report import export as exp

        exp.check_format(self.format)
        if self.kind is not None and self.kind not in results.list_kinds():
            raise DmlError(
                f"unknown result kind {self.kind!r}; choose one of "
                f"{', '.join(results.list_kinds())}"
            )


@dataclass
class ExportOutcome:
    """What :func:`export` wrote: ``run``, the run exported (its name in the store), and
    ``rows``, one per file written (columns ``kind, label, rows, path``)."""

    run: str
    rows: pd.DataFrame = field(repr=False)

    @property
    def files(self) -> list[Path]:
        """The files written, in order."""
        return [Path(p) for p in self.rows["path"]]


@entry_point(ExportSettings)
def export(s: ExportSettings) -> ExportOutcome:
    """Write ``run``'s current results (of its checkpoint; stale ones never) in ``format``
    (:mod:`dmlcli.report.export`: ``csv`` any result, ``autoattack-log`` AutoAttack results,
    ``cohen-tsv`` certify results, ``adversarials`` the stored adversarial images), one file
    per result in ``out`` (default ``ARTIFACTS/exports/<run>``), optionally only results of
    ``kind`` or of attack label ``attack``. Options: :class:`ExportSettings`.

    Returns an :class:`ExportOutcome`: the run's name and one row per file written."""
    from dmlcli.report import export as exp

    store = Store(s.artifacts)
    r = open_run(s.run, store)
    out_dir = Path(s.out) if s.out is not None else store.export_dir(r.name)
    rows = []
    for k, path, setting in _exported(store, r, s):
        df, meta = store.read_result(path)
        target = exp.export_result(df, meta, s.format, out_dir / (path.stem + exp.SUFFIX[s.format]))
        rows.append({"kind": k, "label": str(setting.get("attack") or path.stem), "rows": len(df),
                     "path": str(target)})  # fmt: skip
    return ExportOutcome(r.name, pd.DataFrame(rows, columns=["kind", "label", "rows", "path"]))


def _exported(store: Store, r: Run, s: ExportSettings) -> list[tuple[str, Path, dict[str, Any]]]:
    """(kind, path, setting) of every current result of ``r`` that ``s`` exports; none is
    one :class:`DmlError` line."""
    from dmlcli.report import export as exp

    kinds = exp.KINDS[s.format] or ((s.kind,) if s.kind else tuple(results.list_kinds()))
    chosen = []
    for k in kinds:
        for path in store.list_results(k, r.name):
            setting = store.result_meta(path).get("setting") or {}
            if setting.get("checkpoint") != r.checkpoint:
                continue
            if s.attack is not None and setting.get("attack") != s.attack:
                continue
            if s.format == "autoattack-log" and setting.get("attack_name") != "autoattack":
                continue
            chosen.append((k, path, setting))
    if not chosen:
        what = f"{s.format} ({', '.join(kinds)})" + (f", attack {s.attack}" if s.attack else "")
        raise DmlError(f"{r.name} has no current results to export as {what} (dml ls lists them)")
    return chosen
