"""Build the report (tables + figures per dataset) and write it as markdown, HTML, LaTeX, JSON.

- markdown: ``report.md`` linking ``figures/*.png``;
- HTML: ``report.html``, one self-contained file (CSS inline, figures as base64 data URIs);
- LaTeX: ``report.tex`` (booktabs tables, ``\\includegraphics`` of ``figures/*.png``);
- JSON: ``robustbench.json``, RobustBench-style entries (clean_acc, autoattack_acc, eps,
  architecture, number_forward_passes, dataset, threat_model) per model and eps, and the
  same per model in ``robustbench/<run>.json``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlcli.data import DATASETS
from dmlcli.files import atomic_write_bytes, now
from dmlcli.report.collect import Collection, RunInfo
from dmlcli.report.figures import FIGURES, Figure
from dmlcli.report.paper import paper_value, split_label
from dmlcli.report.tables import TABLES, AttackCell, Skip, Table, attack_cells, fmt
from dmlcli.units import eps_text

FORMATS = {
    "markdown": "report.md",
    "html": "report.html",
    "latex": "report.tex",
    "json": "robustbench.json",
}
FIGURE_DIR = "figures"


@dataclass
class Section:
    dataset: str
    title: str
    intro: list[str] = field(default_factory=list)
    items: list[Table | Figure | Skip] = field(default_factory=list)

    @property
    def tables(self) -> list[Table]:
        return [i for i in self.items if isinstance(i, Table)]

    @property
    def figures(self) -> list[Figure]:
        return [i for i in self.items if isinstance(i, Figure)]

    @property
    def skipped(self) -> list[Skip]:
        return [i for i in self.items if isinstance(i, Skip)]


@dataclass
class Report:
    root: Path
    created: str
    sections: list[Section]
    problems: list[str] = field(default_factory=list)


def build(col: Collection, out: Path, figures: bool = True) -> Report:
    """Compute every table and (if ``figures``) draw every figure the results allow."""

    sections = []
    fig_dir = out / FIGURE_DIR
    for ds in col.datasets():
        sec = Section(ds, DATASETS[ds].title if ds in DATASETS else ds)
        recipe = col.recipe_for(ds)
        if recipe:
            line = f"Recipe `{recipe.get('name')}` ({recipe.get('source', '?')})"
            if recipe.get("description"):
                line += f": {recipe['description']}"
            sec.intro.append(line)
            if (recipe.get("paper") or {}).get("source"):
                sec.intro.append(f"Published numbers: {recipe['paper']['source']}.")
        runs = col.runs_of(ds)
        if runs:
            sec.intro.append(
                "Runs: "
                + "; ".join(
                    f"{r.label} = `{r.name}` ({r.members} x {r.backbone}, {r.head} head)"
                    for r in runs
                )
            )
        for _, builder, _ in TABLES:
            item = builder(col, ds)
            if isinstance(item, Skip):
                item.kind = "table"
            sec.items.append(item)
        if figures:
            for _, fig_builder, _ in FIGURES:
                fig = fig_builder(col, ds, fig_dir)
                if isinstance(fig, Skip):
                    fig.kind = "figure"
                sec.items.append(fig)
        sections.append(sec)
    if figures and fig_dir.is_dir():
        made = {f.path.name for s in sections for f in s.figures}
        for png in fig_dir.glob("*.png"):
            if png.name not in made:  # a figure whose data is gone: never leave it stale
                png.unlink()
    return Report(col.root, now(), sections, list(col.problems))


# -- markdown -------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown(report: Report) -> str:
    lines = [
        "# dml report",
        "",
        f"Store `{report.root}`, rendered {report.created}. Every number is read from the "
        "store's result files; nothing was recomputed.",
        "",
    ]
    for sec in report.sections:
        lines += [f"## {sec.title}", ""]
        lines += [f"{t}  " for t in sec.intro] + [""]
        for item in sec.items:
            if isinstance(item, Table):
                lines += [f"### {item.title}", ""]
                lines.append("| " + " | ".join(_md_escape(c) for c in item.columns) + " |")
                align = (
                    [
                        "---" if j == 0 or isinstance(item.rows[0][j], str) else "---:"
                        for j in range(len(item.columns))
                    ]
                    if item.rows
                    else []
                )
                lines.append("| " + " | ".join(align) + " |")
                for row in item.rows:
                    lines.append("| " + " | ".join(_md_escape(fmt(v)) for v in row) + " |")
                lines.append("")
                lines += [f"- {_md_escape(n)}" for n in item.notes] + [""]
            elif isinstance(item, Figure):
                rel = f"{FIGURE_DIR}/{item.path.name}"
                lines += [
                    f"### {item.title}",
                    "",
                    f"![{item.title}]({rel})",
                    "",
                    f"*{item.caption}*",
                    "",
                ]
        if sec.skipped:
            lines += ["### Not rendered (no data yet)", ""]
            lines += [f"- {s.title}: {s.reason}" for s in sec.skipped] + [""]
    if report.problems:
        lines += ["## Unreadable files", ""] + [f"- {p}" for p in report.problems] + [""]
    return "\n".join(lines)


# -- HTML -----------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1300px;padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #aaa}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{border-bottom:2px solid #444;background:#f4f4f4}td:first-child,th:first-child{text-align:left}
td.paper,th.paper{color:#666;font-style:italic;background:#fafafa}
td.txt{text-align:left}ul.notes{font-size:12px;color:#444;margin-top:0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:12px;color:#444}.skip{color:#777;font-size:13px}
.wrap{overflow-x:auto}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_report(report: Report) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>dml report</title><style>{_CSS}</style></head><body>",
        "<h1>dml report</h1>",
        f"<p>Store <code>{e(str(report.root))}</code>, rendered {e(report.created)}. Every "
        "number is read from the store's result files; nothing was recomputed.</p>",
        "<nav><ul>",
    ]
    for sec in report.sections:
        out.append(f'<li><a href="#{e(sec.dataset)}">{e(sec.title)}</a></li>')
    out.append("</ul></nav>")
    for sec in report.sections:
        out.append(f'<h2 id="{e(sec.dataset)}">{e(sec.title)}</h2>')
        out += [f"<p>{e(t).replace('`', '')}</p>" for t in sec.intro]
        for item in sec.items:
            if isinstance(item, Table):
                out.append(f'<h3 id="{e(sec.dataset)}-{e(item.key)}">{e(item.title)}</h3>')
                out.append('<div class="wrap"><table><thead><tr>')
                for j, c in enumerate(item.columns):
                    cls = ' class="paper"' if j in item.paper_columns else ""
                    out.append(f"<th{cls}>{e(c)}</th>")
                out.append("</tr></thead><tbody>")
                for row in item.rows:
                    out.append("<tr>")
                    for j, v in enumerate(row):
                        cls = (
                            "paper"
                            if j in item.paper_columns
                            else ("txt" if isinstance(v, str) else "")
                        )
                        attr = f' class="{cls}"' if cls else ""
                        out.append(f"<td{attr}>{e(fmt(v))}</td>")
                    out.append("</tr>")
                out.append("</tbody></table></div>")
                out.append(
                    '<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in item.notes) + "</ul>"
                )
            elif isinstance(item, Figure):
                out.append(f'<h3 id="{e(sec.dataset)}-fig-{e(item.key)}">{e(item.title)}</h3>')
                out.append(
                    f'<figure><img alt="{e(item.title)}" src="{_data_uri(item.path)}">'
                    f"<figcaption>{e(item.caption)}</figcaption></figure>"
                )
        if sec.skipped:
            out.append('<h3>Not rendered (no data yet)</h3><ul class="skip">')
            out += [f"<li>{e(s.title)}: {e(s.reason)}</li>" for s in sec.skipped]
            out.append("</ul>")
    if report.problems:
        out.append("<h2>Unreadable files</h2><ul>")
        out += [f"<li>{e(p)}</li>" for p in report.problems]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out)


# -- LaTeX ----------------------------------------------------------------------------------
_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    out = "".join(_TEX.get(ch, ch) for ch in str(text))
    return out.replace("eps=", r"$\epsilon$=").replace("kappa=", r"$\kappa$=")


def latex(report: Report) -> str:
    out = [
        r"\documentclass[10pt]{article}",
        r"\usepackage[margin=2cm,landscape]{geometry}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage[utf8]{inputenc}",
        r"\usepackage{booktabs,graphicx,xcolor}",
        r"\title{dml report}",
        r"\date{" + tex_escape(report.created) + "}",
        r"\begin{document}",
        r"\maketitle",
        "Every number is read from the store's result files ("
        + tex_escape(str(report.root))
        + "); nothing was recomputed.",
        "",
    ]
    for sec in report.sections:
        out += [r"\section{" + tex_escape(sec.title) + "}", ""]
        out += [tex_escape(t.replace("`", "")) + r"\\" for t in sec.intro] + [""]
        for item in sec.items:
            if isinstance(item, Table):
                spec = (
                    "l"
                    + "".join(
                        "l" if isinstance(item.rows[0][j], str) else "r"
                        for j in range(1, len(item.columns))
                    )
                    if item.rows
                    else "l" * len(item.columns)
                )
                out += [
                    r"\begin{table}[htbp]",
                    r"\centering\small",
                    r"\caption{" + tex_escape(item.title) + "}",
                    r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
                    r"\begin{tabular}{" + spec + "}",
                    r"\toprule",
                    " & ".join(
                        (r"\textit{" + tex_escape(c) + "}")
                        if j in item.paper_columns
                        else tex_escape(c)
                        for j, c in enumerate(item.columns)
                    )
                    + r" \\",
                    r"\midrule",
                ]
                for row in item.rows:
                    cells = []
                    for j, v in enumerate(row):
                        t = (
                            tex_escape(fmt(v)).replace("-", "--")
                            if fmt(v) == "-"
                            else tex_escape(fmt(v))
                        )
                        cells.append(
                            r"\textcolor{gray}{" + t + "}" if j in item.paper_columns else t
                        )
                    out.append(" & ".join(cells) + r" \\")
                out += [r"\bottomrule", r"\end{tabular}}", ""]
                out += [r"\par\footnotesize " + " ".join(tex_escape(n) for n in item.notes)]
                out += [r"\end{table}", ""]
            elif isinstance(item, Figure):
                out += [
                    r"\begin{figure}[htbp]",
                    r"\centering",
                    r"\includegraphics[width=\linewidth,height=0.8\textheight,keepaspectratio]{"
                    + f"{FIGURE_DIR}/{item.path.name}"
                    + "}",
                    r"\caption{" + tex_escape(item.title) + ". " + tex_escape(item.caption) + "}",
                    r"\end{figure}",
                    "",
                ]
        if sec.skipped:
            out += [r"\paragraph{Not rendered (no data yet)}", r"\begin{itemize}"]
            out += [r"\item " + tex_escape(f"{s.title}: {s.reason}") for s in sec.skipped]
            out += [r"\end{itemize}", ""]
        out.append(r"\clearpage")
    out.append(r"\end{document}")
    return "\n".join(out)


# -- JSON (RobustBench-style) ---------------------------------------------------------------
#: AutoAttack results RobustBench would accept: its standard (or rand) version at its budgets.
ROBUSTBENCH_VERSIONS = {"standard", "rand"}
ROBUSTBENCH_BUDGETS = {"steps": 100, "square_queries": 5000, "recheck": True}
PROTOCOL = (
    "AutoAttack {version} (pyautoattack) on the summed member logits, scored by the majority "
    "vote, + decision-checked APGD-CE/APGD-T on every sample whose vote it left right"
)


def _standard_autoattack(c: Any) -> bool:
    p = c.params
    return (
        split_label(c.label)[0] == "autoattack"
        and p.get("version") in ROBUSTBENCH_VERSIONS
        and all(p.get(k) == v for k, v in ROBUSTBENCH_BUDGETS.items())
        and c.decision == "vote"
        and not c.surrogate
    )


def robustbench_entries(col: Collection) -> list[dict[str, Any]]:
    """RobustBench model-info entries, one per model and eps of a standard (or rand)
    AutoAttack result at its default budgets (models without one: one entry with
    ``autoattack_acc`` null). The reduced AutoAttack of a quick recipe is never reported.

    ``clean_acc``/``autoattack_acc`` (strings, two decimals) are over the same evaluation
    samples; ``autoattack_acc`` is the decision-checked number and
    ``autoattack_acc_sum_scored`` AutoAttack alone as the paper scores it. ``reported`` is the
    paper's number only when the recipe's published numbers are for this dataset.
    ``number_forward_passes`` counts the forward passes a decision takes (the scoring draws of
    a randomized head); randomized heads are marked ``unreliable`` with a footnote, as
    RobustBench does for randomized defenses.
    """
    entries = []
    for ds in col.datasets():
        aa_paper = _paper_autoattack(col, ds)
        cells = [c for c in attack_cells(col, ds) if _standard_autoattack(c)]
        for run in col.runs_of(ds):
            mine = sorted((c for c in cells if c.result.run == run.name), key=lambda c: c.eps or 0)
            base = _model_info(run, ds)
            if not mine:
                entries.append(_entry_without_autoattack(base))
                continue
            numbers = aa_paper.get(run.role, {}) if isinstance(aa_paper, dict) else {}
            entries += [_autoattack_entry(base, c, numbers) for c in mine]
    for e in entries:
        _plain_values(e)
    return entries


def _paper_autoattack(col: Collection, ds: str) -> Any:
    """The paper's AutoAttack numbers from the recipe of dataset ``ds`` (role -> column ->
    number), or ``{}`` when the recipe's published numbers are for another dataset."""
    recipe = col.recipe_for(ds) or {}
    paper = recipe.get("paper") or {}
    same_data = str(paper.get("dataset", ds)) == ds
    return paper.get("autoattack", {}) if same_data else {}


_HEAD_NAMES = {
    "linear": "linear heads",
    "dml": "DML heads",
    "rdml": "R-DML heads",
    "augdml": "AUG-DML heads",
}


_RANDOMIZED_FOOTNOTE = (
    "Randomized head: AutoAttack rand (EOT) and a decision scored by the majority over "
    "several draws; RobustBench lists randomized defenses as unreliable."
)


def _model_info(run: RunInfo, ds: str) -> dict[str, Any]:
    """What every entry of ``run`` shares: the model (name, architecture, head, decision),
    the threat model, its clean accuracy on the whole test split and, for a randomized
    head, the ``unreliable`` mark and its footnote."""
    head = _HEAD_NAMES.get(run.head, run.head)
    randomized = run.head in ("rdml", "augdml")
    return {
        "name": run.name,
        "label": run.label,
        "dataset": ds,
        "threat_model": "Linf",
        "architecture": f"ensemble of {run.members} x {run.backbone} with {head}",
        "additional_data": False,
        "members": run.members,
        "head": run.head,
        "decision": "vote",
        "clean_acc_full_test": f"{run.benign['vote']:.2f}" if "vote" in run.benign else None,
        "unreliable": randomized,
        "footnote": _RANDOMIZED_FOOTNOTE if randomized else None,
    }


def _entry_without_autoattack(base: dict[str, Any]) -> dict[str, Any]:
    """The one entry of a model with no standard/rand AutoAttack result at its default
    budgets (``base``: :func:`_model_info`): no eps, ``autoattack_acc`` null."""
    return {
        **base,
        "eps": None,
        "clean_acc": base["clean_acc_full_test"],
        "autoattack_acc": None,
        "n_eval": None,
        "number_forward_passes": 1,
        "note": "no standard/rand AutoAttack result at its default budgets",
    }


def _autoattack_entry(base: dict[str, Any], c: AttackCell, numbers: Any) -> dict[str, Any]:
    """The entry of one AutoAttack result ``c`` of a model (``base``: :func:`_model_info`;
    ``numbers``: the paper's AutoAttack numbers for its role, column -> number)."""
    reported = paper_value(numbers, "autoattack", c.eps) if isinstance(numbers, dict) else None
    draws = int(c.result.df["score_draws"].iloc[0])
    return {
        **base,
        "eps": eps_text(c.eps) if c.eps is not None else None,
        "eps_value": c.eps,
        "clean_acc": f"{c.clean:.2f}",
        "autoattack_acc": f"{c.robust:.2f}",
        "autoattack_acc_sum_scored": f"{c.sum_scored:.2f}",
        "protocol": PROTOCOL.format(version=c.params.get("version")),
        "n_eval": c.n,
        "number_forward_passes": draws,
        "autoattack_version": c.params.get("version"),
        "eot": int(c.result.df["eot"].iloc[0] or 1),
        "seed": c.result.setting.get("seed"),
        "reported": None if reported is None else f"{reported:.2f}",
    }


def _plain_values(entry: dict[str, Any]) -> None:
    """Make ``entry`` JSON-ready in place: NaN floats become None, numpy scalars Python
    ones."""
    for k, v in list(entry.items()):
        if isinstance(v, float) and math.isnan(v):
            entry[k] = None
        elif hasattr(v, "item"):
            entry[k] = v.item()


def write(report: Report, col: Collection, out: Path, formats: list[str]) -> list[Path]:
    """Write the chosen formats into ``out`` atomically; returns the files written."""
    files = []
    for f in formats:
        path = out / FORMATS[f]
        if f == "markdown":
            text = markdown(report)
        elif f == "html":
            text = html_report(report)
        elif f == "latex":
            text = latex(report)
        else:
            entries = robustbench_entries(col)
            text = json.dumps({"entries": entries}, indent=1)
            for name in dict.fromkeys(e["name"] for e in entries):  # one file per model too
                mine = [e for e in entries if e["name"] == name]
                model_file = out / "robustbench" / f"{name}.json"
                atomic_write_bytes(model_file, json.dumps(mine, indent=1).encode("utf-8"))
                files.append(model_file)
        atomic_write_bytes(path, text.encode("utf-8"))
        files.append(path)
    return files
