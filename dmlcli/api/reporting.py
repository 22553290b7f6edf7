"""``dml report`` and ``dml export``: stored results rendered as the paper's tables and
figures, or written in other tools' formats (nothing is rerun)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dmlcli import results
from dmlcli.api._common import PathLike, as_list
from dmlcli.errors import DmlError
from dmlcli.runs import open_run
from dmlcli.store import Store


# -- report ---------------------------------------------------------------------------------
def report(
    store_dir: PathLike | None = None,
    *,
    format: Sequence[str] | None = None,  # noqa: A002 - the CLI's --format
    out: PathLike | None = None,
    artifacts: PathLike | None = None,
) -> pd.DataFrame:
    """Render the paper's tables and figures from the stored results (nothing is rerun) as
    markdown, HTML, LaTeX and/or RobustBench JSON; returns one row per table or figure
    (dataset, item, what was rendered, where or why not). ``attrs['files']``: what it wrote;
    ``attrs['problems']``: files it could not read."""
    from dmlcli.report import Skip, Table, render_report

    if store_dir is not None and artifacts is not None and Path(store_dir) != Path(artifacts):
        raise DmlError(f"two stores given: {store_dir} and --artifacts {artifacts}; give one")
    store = Store(store_dir or artifacts)
    rep, files = render_report(store, out, as_list(format) or ["markdown"])
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
    df = pd.DataFrame(rows, columns=["dataset", "item", "rendered", "detail"])
    df.attrs.update(files=[str(f) for f in files], problems=list(rep.problems))
    return df


# -- export -----------------------------------------------------------------------------------
def export(
    run: str,
    *,
    format: str = "csv",  # noqa: A002 - the CLI's --format
    kind: str | None = None,
    attack: str | None = None,
    out: PathLike | None = None,
    artifacts: PathLike | None = None,
) -> pd.DataFrame:
    """Write ``run``'s current results (of its checkpoint; stale ones never) in ``format``
    (:mod:`dmlcli.report.export`: ``csv`` any result, ``autoattack-log`` AutoAttack results,
    ``cohen-tsv`` certify results, ``adversarials`` the stored adversarial images), one file
    per result in ``out`` (default ``ARTIFACTS/exports/<run>``), optionally only results of
    ``kind`` or of attack label ``attack``. Returns one row per file: ``kind, label, rows,
    path``."""
    from dmlcli.report import export as exp

    store = Store(artifacts)
    fmt = exp.check_format(format)
    if kind is not None and kind not in results.list_kinds():
        raise DmlError(
            f"unknown result kind {kind!r}; choose one of {', '.join(results.list_kinds())}"
        )
    r = open_run(run, store)
    kinds = exp.KINDS[fmt] or ((kind,) if kind else tuple(results.list_kinds()))
    chosen = []
    for k in kinds:
        for path in store.list_results(k, r.name):
            setting = store.result_meta(path).get("setting") or {}
            if setting.get("checkpoint") != r.checkpoint:
                continue
            if attack is not None and setting.get("attack") != attack:
                continue
            if fmt == "autoattack-log" and setting.get("attack_name") != "autoattack":
                continue
            chosen.append((k, path, setting))
    if not chosen:
        what = f"{fmt} ({', '.join(kinds)})" + (f", attack {attack}" if attack else "")
        raise DmlError(f"{r.name} has no current results to export as {what} (dml ls lists them)")
    out_dir = Path(out) if out is not None else store.export_dir(r.name)
    rows = []
    for k, path, setting in chosen:
        df, meta = store.read_result(path)
        target = exp.export_result(df, meta, fmt, out_dir / (path.stem + exp.SUFFIX[fmt]))
        rows.append({"kind": k, "label": str(setting.get("attack") or path.stem), "rows": len(df),
                     "path": str(target)})  # fmt: skip
    frame = pd.DataFrame(rows, columns=["kind", "label", "rows", "path"])
    frame.attrs["run"] = r.name
    return frame
