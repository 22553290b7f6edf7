"""The paper's tables (and a few it lacks) computed from stored result rows.

Every builder takes a :class:`~dmlcli.report.collect.Collection` and a dataset and returns a
:class:`Table`, or a :class:`Skip` saying which data is missing. Percentages are accuracies
over the stored evaluation samples; every table's notes state n, budgets, seeds and the
decision rule. Where the recipe holds the paper's published numbers, each of our columns is
followed by a ``paper`` column (``-`` where the paper has no number, or we have none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dmlcli.errors import DmlError
from dmlcli.report.collect import Collection, Result
from dmlcli.report.paper import paper_value, parse_column, split_label
from dmlcli.results import (
    REPORT_RADII,
    certified_accuracy,
    first,
    lr_rates_at_fpr,
    robust_accuracy,
    worst_case_undetected_wrong,
)
from dmlcli.units import eps_text

PAPER = "paper"


@dataclass
class Table:
    """A rendered-ready table: header, rows of cells (float -> 2 decimals), notes."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    paper_columns: set[int] = field(default_factory=set)

    def cell(self, row: str, column: str) -> Any:
        """The cell in the row whose first cell is ``row`` and the column named ``column``."""
        j = self.columns.index(column)
        for r in self.rows:
            if str(r[0]) == row:
                return r[j]
        raise KeyError(row)


@dataclass
class Skip:
    """A table or figure that could not be built, and why."""

    key: str
    title: str
    reason: str
    kind: str = ""  # "table" or "figure" (set by the report builder)


def fmt(value: Any) -> str:
    """A cell as text: floats with two decimals, missing values as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{float(value):.2f}"
    return str(value)


# -- attack labels and settings ----------------------------------------------------------------
_DISPLAY = {
    "fgsm": "FGSM",
    "bim": "BIM",
    "pgd": "PGD",
    "cw": "CW",
    "cw-search": "CW (c searched)",
    "autoattack": "AutoAttack",
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "transfer-apgd-ce": "transfer APGD-CE",
    "worst-case": "worst case",
}


def attack_title(label: str, eps: float | None, cw_c: float | None = None) -> str:
    """``('pgd-20x5', 0.3)`` -> ``'PGD-20x5 eps=0.3'``; fixed-c CW shows its constant c."""
    base, steps, restarts = split_label(label)
    name = _DISPLAY.get(base, base)
    if steps is not None:
        name += f"-{steps}"
    if restarts is not None:
        name += f"x{restarts}"
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return name + (f" c={cw_c:g}" if cw_c is not None and base == "cw" else "")
    return f"{name} eps={eps_text(float(eps))}"


@dataclass
class AttackCell:
    """One stored attack setting on one run: label, eps, budgets and accuracies."""

    result: Result
    label: str
    eps: float | None
    suite: str
    surface: str
    decision: str
    targeted: bool
    surrogate: str | None
    n: int
    clean: float
    robust: float

    @property
    def params(self) -> dict[str, Any]:
        return self.result.setting.get("params", {}) or {}

    @property
    def key(self) -> tuple[str, float | None]:
        return self.label, None if self.eps is None else round(self.eps, 9)

    def budget(self) -> str:
        """Steps, restarts, step size, EOT and (CW) c/lr/kappa as one phrase."""
        p, df = self.params, self.result.df
        base, _, _ = split_label(self.label)
        parts = []
        if base in ("cw", "cw-search"):
            c = f"c={p.get('c', '?')}"
            if p.get("search_steps"):
                c = f"binary search over c from {p.get('c', '?')} ({p['search_steps']} rounds)"
            parts.append(
                f"{c}, {p.get('steps', '?')} Adam steps, lr {p.get('lr', '?')}, "
                f"kappa {p.get('kappa', 0)}"
            )
        elif base == "autoattack":
            parts.append(f"version {p.get('version', '?')}")
            if p.get("attacks"):
                parts.append("attacks " + "+".join(p["attacks"]))
            if p.get("steps"):
                parts.append(f"{p['steps']} APGD steps")
        elif base == "fgsm":
            parts.append("1 step")
        else:
            steps = p.get("steps", first(df, "steps"))
            if steps:
                parts.append(f"{steps} steps")
            ss = p.get("step_size", first(df, "step_size"))
            if ss and self.eps:  # relative to eps, so one phrase holds for every eps
                parts.append(f"step {float(ss) / self.eps:.3g} x eps")
            elif ss:
                parts.append(f"step {float(ss):.4g}")
            r = p.get("restarts", first(df, "restarts"))
            if r:
                parts.append(f"{r} restart{'s' if r != 1 else ''}")
            if p.get("loss"):
                parts.append(f"{p['loss']} loss")
        eot = first(df, "eot")
        if eot and int(eot) > 1:
            parts.append(f"EOT {int(eot)}")
        return ", ".join(parts)


def attack_cells(col: Collection, dataset: str) -> list[AttackCell]:
    """Every stored ``attack`` result of ``dataset`` as accuracy cells (one per file)."""
    out = []
    for res in col.of("attack", dataset) + col.of("worst-case", dataset):
        df = res.df
        if not len(df):
            continue
        out.append(
            AttackCell(
                result=res,
                label=str(first(df, "attack")),
                eps=first(df, "eps"),
                suite=str(first(df, "suite")),
                surface=str(first(df, "surface") or "-"),
                decision=str(first(df, "decision")),
                targeted=bool(first(df, "targeted")),
                surrogate=first(df, "surrogate"),
                n=len(df),
                clean=robust_accuracy(df)[0],
                robust=robust_accuracy(df)[1],
            )
        )
    return out


def _paper_protocol(c: AttackCell) -> bool:
    return (
        c.surface == "sum"
        and c.decision == "vote"
        and not c.targeted
        and not c.surrogate
        and c.suite in ("paper", "custom")
    )


_ORDER = {
    "fgsm": 0,
    "bim": 1,
    "pgd": 2,
    "apgd-ce": 3,
    "apgd-dlr": 4,
    "cw": 5,
    "cw-search": 6,
    "autoattack": 7,
}


def _col_sort(key: tuple[str, float | None]) -> tuple:
    base, steps, restarts = split_label(key[0])
    eps = -1.0 if key[1] is None else key[1]
    return (_ORDER.get(base, 9), base, steps or 0, restarts or 0, eps)


def _notes_common(cells: Iterable[AttackCell], what: str) -> list[str]:
    cells = list(cells)
    ns = sorted({c.n for c in cells})
    seeds = sorted({int(first(c.result.df, "seed") or 0) for c in cells})
    notes = [
        f"n = {', '.join(map(str, ns))} test samples (the seeded evaluation subset, seed "
        f"{', '.join(map(str, seeds))}); {what}",
        "Robust accuracy = correct on the clean input and on the adversarial one (%).",
    ]
    budgets: dict[str, str] = {}
    for c in cells:
        title = attack_title(c.label, None)
        budgets.setdefault(title, c.budget())
    text = "; ".join(f"{k}: {v}" for k, v in budgets.items() if v)
    if text:
        notes.append("Budgets: " + text + ".")
    eots = {int(first(c.result.df, "eot") or 1) for c in cells}
    if eots <= {1}:
        notes.append("EOT: 1 draw per step (deterministic heads, or the paper's protocol).")
    return notes


def _grid_table(
    col: Collection,
    dataset: str,
    key: str,
    title: str,
    cells: list[AttackCell],
    runs: list[str],
    paper: dict[str, Any],
    what: str,
    benign: bool = True,
) -> Table:
    """Rows = runs, columns = attack settings, cells = robust accuracy; paper beside ours."""
    columns_keys = sorted({c.key for c in cells}, key=_col_sort)
    roles = {r.name: r.role for r in col.runs_of(dataset)}
    paper_roles = {k: v for k, v in paper.items() if isinstance(v, dict)}
    with_paper = bool(paper_roles)
    # Paper columns we did not run are shown too, so the comparison is complete.
    ours = {(split_label(k[0])[0], k[1]) for k in columns_keys}
    extra: list[tuple[str, float | None]] = []
    for numbers in paper_roles.values():
        for name in numbers:
            try:
                pc = parse_column(name)
            except DmlError:
                continue
            if pc.attack == "benign":
                continue
            k = (pc.attack + (f"-{pc.steps}" if pc.steps else ""), pc.eps)
            if (pc.attack, None if pc.eps is None else round(pc.eps, 9)) not in ours and (
                k not in extra
            ):
                if not any(
                    split_label(c[0])[0] == pc.attack and c[1] == pc.eps for c in columns_keys
                ):
                    extra.append(k)
    header = ["Model"]
    paper_idx: set[int] = set()

    plabel = str(paper.get("label", PAPER))

    def add(name: str) -> None:
        header.append(name)
        if with_paper:
            header.append(plabel)
            paper_idx.add(len(header) - 1)

    if benign:
        add("Benign")
    cw_c = {c.key: c.params.get("c") for c in cells}
    for k in columns_keys:
        add(attack_title(k[0], k[1], cw_c.get(k)))
    for k in extra:
        add(attack_title(k[0], k[1]) + " (not run)")
    rows = []
    for run in runs:
        mine = {c.key: c for c in cells if c.result.run == run}
        numbers = paper_roles.get(roles.get(run, ""), {})
        row: list[Any] = [col.label(run)]
        if benign:
            row.append(col.runs[run].benign.get("vote") if run in col.runs else None)
            if with_paper:
                row.append(numbers.get("benign"))
        for k in columns_keys:
            c = mine.get(k)
            row.append(c.robust if c else None)
            if with_paper:
                row.append(paper_value(numbers, k[0], k[1]))
        for k in extra:
            row.append(None)
            if with_paper:
                row.append(paper_value(numbers, k[0], k[1]))
        rows.append(row)
    notes = _notes_common(cells, what)
    if benign:
        notes.insert(0, "Benign = majority-vote accuracy on the whole test split (checkpoint).")
    if with_paper:
        src = paper.get("table", "")
        notes.append(
            f"'{plabel}' columns: the published numbers{(' (' + src + ')') if src else ''}."
        )
    return _drop_empty_paper(Table(key, title, header, rows, notes, paper_idx))


def _drop_empty_paper(table: Table) -> Table:
    """Remove the paper columns in which the paper has no number for any row."""
    empty = {j for j in table.paper_columns if all(r[j] is None for r in table.rows)}
    keep = [j for j in range(len(table.columns)) if j not in empty]
    table.columns = [table.columns[j] for j in keep]
    table.rows = [[r[j] for j in keep] for r in table.rows]
    table.paper_columns = {i for i, j in enumerate(keep) if j in table.paper_columns}
    return table


def _recipe_roles(col: Collection, dataset: str, exclude: set[str]) -> list[str]:
    return [r.name for r in col.runs_of(dataset) if r.role not in exclude]


# -- tables --------------------------------------------------------------------------------
def benign_table(col: Collection, dataset: str) -> Table | Skip:
    """Benign accuracy per run and decision rule (checkpoint metadata, whole test split)."""
    runs = col.runs_of(dataset)
    if not runs:
        return Skip("benign", "Benign accuracy", "no trained run of this dataset")
    decisions = ["vote", "meta-vote", "sum", "mean-softmax"]
    rows = []
    for r in runs:
        members = [v for k, v in r.benign.items() if k.startswith("member:")]
        rows.append(
            [
                r.label,
                r.name,
                f"{r.members} x {r.backbone}",
                r.head,
                *[r.benign.get(d) for d in decisions],
                float(np.mean(members)) if members else None,
                f"{min(members):.2f}-{max(members):.2f}" if members else "-",
            ]
        )
    seeds = sorted({str(r.config.seed) for r in runs})
    epochs = sorted({str((r.config.training or {}).get("epochs", "?")) for r in runs})
    notes = [
        "Accuracy (%) on the whole test split after the last epoch (stored with the checkpoint).",
        f"Seeds {', '.join(seeds)}; epochs {', '.join(epochs)}. vote = majority of members' "
        "top-1 (the paper's rule); meta-vote ignores member k's votes for its own classes I_k.",
    ]
    cols = [
        "Model",
        "run",
        "members",
        "head",
        "vote",
        "meta-vote",
        "sum",
        "mean-softmax",
        "member mean",
        "member range",
    ]
    return Table("benign", "Benign accuracy (%) per decision rule", cols, rows, notes)


def whitebox_table(col: Collection, dataset: str) -> Table | Skip:
    """Tables 2, 3, 10: robust accuracy per model and attack (crafted on sum, scored by vote)."""
    title = "White-box robust accuracy (%) (paper Tables 2, 3, 10)"
    cells = [c for c in attack_cells(col, dataset) if _paper_protocol(c)]
    runs = [
        r
        for r in _recipe_roles(col, dataset, {"rdml", "augdml"})
        if any(c.result.run == r for c in cells)
    ]
    if not runs:
        return Skip(
            "whitebox", title, "no paper-protocol attack results (dml attack --suite paper)"
        )
    cells = [c for c in cells if c.result.run in runs]
    paper = col.paper(dataset).get("whitebox", {})
    what = "crafted on the summed member logits, scored by majority vote (the paper's protocol)."
    return _grid_table(col, dataset, "whitebox", title, cells, runs, paper, what)


def rdml_table(col: Collection, dataset: str) -> Table | Skip:
    """Tables 6, 9: DML vs R-DML ensembles under the same attacks."""
    title = "DML vs R-DML ensembles, robust accuracy (%) (paper Tables 6, 9)"
    runs_all = col.runs_of(dataset)
    rand = [
        r.name for r in runs_all if r.role in ("rdml", "augdml") or r.head in ("rdml", "augdml")
    ]
    if not rand:
        return Skip("rdml", title, "no R-DML run of this dataset (train [train.rdml] --head rdml)")
    cells = [c for c in attack_cells(col, dataset) if _paper_protocol(c)]
    on_rand = {c.key for c in cells if c.result.run in rand}
    if not on_rand:
        return Skip("rdml", title, "the R-DML run has no paper-protocol attack results")
    dml = [r.name for r in runs_all if r.head == "dml"]
    runs = [r for r in dml + rand if any(c.result.run == r for c in cells)]
    cells = [c for c in cells if c.key in on_rand and c.result.run in runs]
    paper = col.paper(dataset).get("rdml", {})
    what = "crafted on the summed logits (EOT over the R-DML head's draws where stated), voted."
    return _grid_table(col, dataset, "rdml", title, cells, runs, paper, what)


def autoattack_table(col: Collection, dataset: str) -> Table | Skip:
    """Tables 7, 8: AutoAttack robust accuracy per eps."""
    title = "AutoAttack robust accuracy (%) (paper Tables 7, 8)"
    cells = [
        c
        for c in attack_cells(col, dataset)
        if split_label(c.label)[0] == "autoattack" and c.decision == "vote" and not c.surrogate
    ]
    runs = [r.name for r in col.runs_of(dataset) if any(c.result.run == r.name for c in cells)]
    if not runs:
        return Skip("autoattack", title, "no AutoAttack results (dml attack --suite autoattack)")
    paper = col.paper(dataset).get("autoattack", {})
    what = "AutoAttack on the summed logits, scored by majority vote."
    return _grid_table(col, dataset, "autoattack", title, cells, runs, paper, what)


def _aligned_worst(cells: list[AttackCell]) -> tuple[float, int, str]:
    """Per-sample worst case over ``cells`` (same samples): (robust %, n, weakest attack)."""
    frames = [c.result.df[["sample", "robust"]].set_index("sample")["robust"] for c in cells]
    joined = pd.concat(frames, axis=1, join="inner")
    robust = joined.all(axis=1)
    return 100.0 * float(robust.mean()), len(joined), ""


def adaptive_table(col: Collection, dataset: str) -> Table | Skip:
    """What the paper lacks: per eps, the paper-protocol number beside AutoAttack and the
    per-sample worst case over every stored L-inf attack (adaptive suite included)."""
    title = "Paper protocol vs adaptive evaluation, robust accuracy (%) per eps"
    cells = [c for c in attack_cells(col, dataset) if c.decision == "vote" and c.eps is not None]
    cells = [c for c in cells if first(c.result.df, "norm") == "linf"]
    if not any(c.suite in ("adaptive", "worst-case", "autoattack") for c in cells):
        return Skip(
            "adaptive", title, "no adaptive or AutoAttack results (dml attack --suite adaptive)"
        )
    rows = []
    for run in [r.name for r in col.runs_of(dataset)]:
        mine = [c for c in cells if c.result.run == run]
        for eps in sorted({round(c.eps, 9) for c in mine}):
            at = [c for c in mine if round(c.eps, 9) == eps]
            paper = [c for c in at if _paper_protocol(c)]
            aa = [c for c in at if split_label(c.label)[0] == "autoattack"]
            suite_wc = [c for c in at if c.label == "worst-case"]
            attacks = [c for c in at if c.label != "worst-case"]
            best_paper = min(paper, key=lambda c: c.robust) if paper else None
            worst, n, _ = _aligned_worst(attacks) if attacks else (None, 0, "")
            weakest = min(attacks, key=lambda c: c.robust) if attacks else None
            ref = best_paper.robust if best_paper else None
            rows.append(
                [
                    col.label(run),
                    eps_text(eps),
                    ref,
                    attack_title(best_paper.label, None) if best_paper else "-",
                    min(c.robust for c in aa) if aa else None,
                    suite_wc[0].robust if suite_wc else None,
                    worst,
                    f"{len(attacks)} on n={n}; {weakest.label} on {weakest.surface}"
                    if weakest
                    else "-",
                    None if ref is None or worst is None else worst - ref,
                ]
            )
    cols = [
        "Model",
        "eps",
        "paper protocol",
        "its strongest attack",
        "AutoAttack",
        "adaptive suite worst case",
        "worst case, all stored attacks",
        "attacks; strongest single",
        "change vs paper (pp)",
    ]
    notes = _notes_common(cells, "every decision scored by majority vote.")
    notes += [
        "paper protocol = the lowest robust accuracy among the paper's attacks (FGSM, BIM, PGD "
        "crafted on the summed logits).",
        "worst case = a sample counts as robust only if it survived every stored L-inf attack "
        "at this eps (all surfaces, losses, EOT, transfer from a surrogate, AutoAttack).",
    ]
    return Table("adaptive", title, cols, rows, notes)


def transfer_table(col: Collection, dataset: str) -> Table | Skip:
    """Tables 4, 11: accuracy of every member and the ensemble under attacks on one member."""
    title = "Transfer of attacks crafted on Model 1, accuracy (%) (paper Tables 4, 11)"
    results = [r for r in col.of("transfer", dataset) if "scored" in r.df.columns]
    results = [r for r in results if (r.df["source"] == "member:1").any()]
    if not results:
        return Skip("transfer", title, "no transfer results from member:1 (dml transfer)")
    paper = col.paper(dataset).get("transfer", {})
    roles = {r.name: r.role for r in col.runs_of(dataset)}
    plabel = str(paper.get("label", PAPER))
    with_paper = any(isinstance(v, dict) for v in paper.values())
    # One block per (run, eps); rows benign / untargeted / targeted.
    blocks: dict[tuple[str, float], dict[str, Result]] = {}
    for r in results:
        df = r.df
        eps = float(first(df, "eps"))
        mode = "targeted" if bool(first(df, "targeted")) else "untargeted"
        blocks.setdefault((r.run, round(eps, 9)), {})[mode] = r
    k = max(col.runs[run].members if run in col.runs else 0 for run, _ in blocks)
    scored = ["ensemble", *[f"member:{i}" for i in range(1, k + 1)]]
    header = ["Model", "eps", "Accuracy"]
    paper_idx: set[int] = set()
    for s in scored:
        header.append("Ensemble" if s == "ensemble" else f"Model {s.split(':')[1]}")
        if with_paper:
            header.append(plabel)
            paper_idx.add(len(header) - 1)
    rows = []
    notes_cells = []
    for (run, eps), modes in blocks.items():
        head = next(iter(modes.values()))
        d1 = head.df[head.df["source"] == "member:1"]
        benign = d1.groupby("scored")["clean_correct"].mean() * 100.0
        lines = [("Benign", benign)]
        for mode in ("untargeted", "targeted"):
            if mode in modes:
                d = modes[mode].df
                d = d[d["source"] == "member:1"]
                lines.append((mode.capitalize(), d.groupby("scored")["adv_correct"].mean() * 100))
                notes_cells.append(modes[mode])
        for name, series in lines:
            row: list[Any] = [col.label(run), eps_text(eps), name]
            mine = paper.get(roles.get(run, ""), {})
            published = mine.get(name.lower(), []) if isinstance(mine, dict) else []
            for i, s in enumerate(scored):
                row.append(float(series[s]) if s in series.index else None)
                if with_paper:
                    row.append(float(published[i]) if i < len(published) else None)
            rows.append(row)
    params = notes_cells[0].setting.get("params", {}) if notes_cells else {}
    n = len(notes_cells[0].df[notes_cells[0].df["scored"] == "ensemble"]) if notes_cells else 0
    seed = notes_cells[0].setting.get("seed", "?") if notes_cells else "?"
    attack = notes_cells[0].setting.get("attack", "pgd") if notes_cells else "pgd"
    notes = [
        f"n = {n} test samples (seed {seed}); adversarials crafted on Model 1 alone with "
        f"{attack.upper()} ({params.get('steps', '?')} steps, {params.get('restarts', 1)} "
        f"restart(s), highest-loss iterate kept), scored on every member and on the ensemble "
        "(majority vote).",
        "Accuracy = adversarial input classified correctly (targeted: at random wrong labels "
        "drawn with the seed). Low transfer = high accuracy on models 2..K.",
    ]
    if with_paper:
        notes.append(f"'{plabel}' columns: {paper.get('table', 'the published numbers')}.")
    return Table("transfer", title, header, rows, notes, paper_idx)


def cw_distortion_table(col: Collection, dataset: str) -> Table | Skip:
    """Tables 5, 12: adaptive CW-L2 accuracy and mean L2 distortion, ensemble vs members."""
    title = "Adaptive CW-L2: accuracy (%) and mean L2 distortion (paper Tables 5, 12)"
    results = [r for r in col.of("cw-distortion", dataset) if "fooled" in r.df.columns]
    if not results:
        return Skip(
            "cw_distortion", title, "no CW distortion results (dml transfer --cw-distortion)"
        )
    paper = col.paper(dataset).get("cw_distortion", {})
    roles = {r.name: r.role for r in col.runs_of(dataset)}
    plabel = str(paper.get("label", PAPER))
    with_paper = any(isinstance(v, dict) for v in paper.values())
    by_run: dict[str, list[Result]] = {}
    for r in results:
        by_run.setdefault(r.run, []).append(r)
    rows = []
    header: list[str] = []
    paper_idx: set[int] = set()
    for run, res in by_run.items():
        cols: list[tuple[str, pd.DataFrame]] = []
        ens = sorted(
            (r for r in res if first(r.df, "source") == "ensemble"),
            key=lambda r: float(first(r.df, "kappa") or 0.0),
        )
        for r in ens:
            cols.append((f"Ensemble kappa={float(first(r.df, 'kappa') or 0.0):g}", r.df))
        members = sorted(
            (r for r in res if str(first(r.df, "source")).startswith("member:")),
            key=lambda r: (
                int(str(first(r.df, "source")).split(":")[1]),
                float(first(r.df, "kappa") or 0.0),
            ),
        )
        seen = set()
        for r in members:
            src = str(first(r.df, "source"))
            if src in seen:
                continue
            seen.add(src)
            cols.append((f"Model {src.split(':')[1]}", r.df))
        if not header:
            header = ["Model", "Quantity"]
            for name, _ in cols:
                header.append(name)
                if with_paper:
                    header.append(plabel)
                    paper_idx.add(len(header) - 1)
        acc_row: list[Any] = [col.label(run), "Adversarial accuracy"]
        dist_row: list[Any] = [col.label(run), "Average distortion"]
        mine = paper.get(roles.get(run, ""), {})
        mine = mine if isinstance(mine, dict) else {}
        p_acc, p_dist = mine.get("accuracy", []), mine.get("distortion", [])
        for i, (_, df) in enumerate(cols):
            acc_row.append(100.0 * float(df["adv_correct"].mean()))
            fooled = df["fooled"].astype(bool)
            dist_row.append(float(df.loc[fooled, "l2"].mean()) if fooled.any() else None)
            if with_paper:
                acc_row.append(float(p_acc[i]) if i < len(p_acc) else None)
                dist_row.append(float(p_dist[i]) if i < len(p_dist) else None)
        rows += [acc_row, dist_row]
    head = results[0]
    p = head.setting.get("params", {})
    notes = [
        f"n = {len(head.df)} test samples (seed {head.setting.get('seed', '?')}); CW-L2 with "
        f"c={p.get('c', '?')}, {p.get('steps', '?')} Adam steps, lr {p.get('lr', '?')}; the "
        "ensemble is attacked on its summed logits and scored by majority vote, each member "
        "on its own logits.",
        "Average distortion = mean L2 norm of the perturbation over the samples CW fooled "
        "(pixel units, [0, 1] scale); accuracy = adversarial input still classified correctly.",
    ]
    if with_paper:
        notes.append(f"'{plabel}' columns: {paper.get('table', 'the published numbers')}.")
    return Table("cw_distortion", title, header, rows, notes, paper_idx)


def clever_table(col: Collection, dataset: str) -> Table | Skip:
    """CLEVER score summary per run (Fig. 1, 7, 8 in numbers)."""
    title = "CLEVER scores (L2) per model"
    results = [r for r in col.of("clever", dataset) if "score" in r.df.columns]
    if not results:
        return Skip("clever", title, "no CLEVER results (dml clever)")
    rows = []
    for r in results:
        s = r.setting
        scores = r.df["score"].to_numpy(dtype=float)
        rows.append(
            [
                col.label(r.run),
                str(s.get("target", "sum")),
                len(scores),
                float(np.median(scores)),
                float(np.mean(scores)),
                int((scores > 0).sum()),
                int((scores > 0.2).sum()),
                float(s.get("radius", math.nan)),
            ]
        )
    s = results[0].setting
    notes = [
        f"L{s.get('norm', '2')} ball of radius R={s.get('radius', '?')}; {s.get('nb_batches', '?')}"
        f" batches x {s.get('batch_size', '?')} points; seed {s.get('seed', '?')}. The score "
        "is capped at R. The paper counts non-zero scores (Fig. 1) and scores above 0.2 "
        "(Fig. 7, 8).",
    ]
    cols = ["Model", "scored", "n", "median", "mean", "> 0", "> 0.2", "R"]
    return Table("clever", title, cols, rows, notes)


def certified_curve(df: pd.DataFrame, radii: Iterable[float]) -> list[float]:
    """Certified accuracy (%) at each radius (:func:`dmlcli.results.certified_accuracy`)."""
    return [100.0 * a for a in certified_accuracy(df, list(radii))["accuracy"]]


def certify_table(col: Collection, dataset: str) -> Table | Skip:
    """Randomized-smoothing certified accuracy at a few radii (Fig. 14-16 in numbers)."""
    title = "Certified accuracy (%) of the smoothed ensemble (A.9)"
    results = [r for r in col.of("certify", dataset) if {"radius", "correct"} <= set(r.df.columns)]
    if not results:
        return Skip("certify", title, "no certification results (dml certify)")
    rows = []
    for r in results:
        s = r.setting
        rows.append(
            [
                col.label(r.run),
                str(s.get("head", "?")),
                f"{s.get('sigma', '?')}",
                str(s.get("decision", "vote")),
                len(r.df),
                *certified_curve(r.df, REPORT_RADII),
            ]
        )
    rows.sort(key=lambda r: (r[0], r[1] != "dml", r[1], r[2]))
    s = results[0].setting
    notes = [
        f"Cohen et al. CERTIFY with n0={s.get('n0', '?')}, n={s.get('n', '?')} noise draws, "
        f"alpha={s.get('alpha', '?')}; seed {s.get('seed', '?')}. Certified accuracy at r = "
        "correct and certified with radius >= r (L2, pixel units).",
    ]
    cols = ["Model", "head", "sigma", "base decision", "n", *[f"r={r:g}" for r in REPORT_RADII]]
    return Table("certify", title, cols, rows, notes)


REPORT_FPR = 0.05  # operating point of the uncertainty regression in the detection table
#: Setting keys of one detection attack; the rest say which detector and samples it faced.
_DETECT_ATTACK_KEYS = {
    "attack",
    "steps",
    "step_size",
    "keep",
    "adaptive_loss",
    "adaptive_targets",
    "var_weight",
    "eot",
}


def detect_table(col: Collection, dataset: str) -> Table | Skip:
    """Detection by disagreement / uncertainty (A.4, A.5): AUC and unanimity rates."""
    title = "Adversary detection: ROC AUC and unanimity (nu = K) rates (A.4, A.5)"
    results = [r for r in col.of("detect", dataset) if "kind" in r.df.columns]
    if not results:
        return Skip("detect", title, "no detection results (dml detect)")
    rows = []
    groups: dict[tuple, list[pd.DataFrame]] = {}
    for r in results:
        df, s = r.df, r.setting
        k = len([c for c in df.columns if c.startswith("pred_member_")]) or 1
        flag = f"flagged_nu_{k}"
        ev = df[df["half"] != "fit"] if "half" in df.columns else df
        b, a = ev[ev["kind"] == "benign"], ev[ev["kind"] == "adversarial"]
        method = str(s["method"])
        attack = str(s["attack"])
        if s.get("adaptive_targets", 1) != 1:
            attack += f" ({s['adaptive_targets']} targets)"
        key = [
            col.label(r.run),
            f"{method} ({s['head']} head)" if s.get("head") else method,
            attack,
            eps_text(float(s["eps"])),
        ]
        u_w = worst_case_undetected_wrong([ev], flag) if flag in a else None
        at_fpr = None
        if "lr_score" in df.columns and (df["half"] == "fit").any():
            at_fpr = lr_rates_at_fpr(df, REPORT_FPR)["detected"]
        rows.append(
            [
                *key,
                len(b),
                float(r.meta.get("auc", math.nan)),
                100.0 * float(b[flag].mean()) if flag in b else None,
                100.0 * float(a[flag].mean()) if flag in a else None,
                u_w,
                100.0 * float((a["vote"] == a["label"]).mean()) if len(a) else None,
                at_fpr,
            ]
        )
        other = {n: v for n, v in s.items() if n not in _DETECT_ATTACK_KEYS}
        group = (key[0], key[1], key[3], json.dumps(other, sort_keys=True, default=str), flag)
        if flag in a:
            groups.setdefault(group, []).append(ev)
    for (model, method, eps, _, flag), frames in groups.items():
        if len(frames) > 1:  # per sample, whichever attack works
            worst = worst_case_undetected_wrong(frames, flag)
            blank = [None] * 4
            rows.append([model, method, "worst case", eps, *blank, worst, None, None])
    rows.sort(
        key=lambda r: (r[0], not r[1].startswith("vote"), r[1], r[3], r[2] == "worst case", r[2])
    )
    s = results[0].setting
    notes = [
        "Negatives: correctly classified benign (and Gaussian-noisy) test samples; positives: "
        f"their adversarials. Seed {s.get('seed', '?')}; draws {s.get('draws', '?')}. "
        "AUC of the detector score (vote: number of dissenting members; uncertainty: logistic "
        "regression on the variance across members and draws, evaluated on held-out half).",
        "FPR / detected = share of benign / adversarial inputs rejected when all K members must "
        "agree (unanimity, Eq. 8 with nu = K); undetected+wrong = adversarials answered with a "
        "wrong label. Worst case: samples for which at least one of the attacks above gives "
        "an undetected wrong answer (an attacker keeps whichever attack works). LR detected "
        "@5% FPR: the uncertainty regression thresholded on its fit half to flag 5% of benign "
        "inputs, scored on the eval half.",
    ]
    cols = [
        "Model",
        "method",
        "attack",
        "eps",
        "n",
        "AUC",
        "FPR nu=K",
        "detected nu=K",
        "undetected+wrong nu=K",
        "vote acc on adv",
        "LR detected @5% FPR",
    ]
    return Table("detect", title, cols, rows, notes)


#: Builders in report order (key, function).
TABLES: list[tuple[str, Callable[[Collection, str], Table | Skip]]] = [
    ("benign", benign_table),
    ("whitebox", whitebox_table),
    ("transfer", transfer_table),
    ("cw_distortion", cw_distortion_table),
    ("rdml", rdml_table),
    ("autoattack", autoattack_table),
    ("adaptive", adaptive_table),
    ("clever", clever_table),
    ("certify", certify_table),
    ("detect", detect_table),
]
