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

from dmlcli.attacks import attack_entry
from dmlcli.errors import DmlError
from dmlcli.report.collect import Collection, Result
from dmlcli.report.paper import paper_value, parse_column, split_label
from dmlcli.results import (
    REPORT_RADII,
    attack_rows,
    certified_accuracy,
    detect_attacks,
    detect_worst_case,
    first,
    flag_at_fpr,
    format_spread,
    paper_protocol,
    rates,
    robust_accuracy,
    sum_scored_robust,
    worst_case,
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


#: How a sample is scored: in the notes of every table of attack results.
TIE_NOTE = (
    "Scoring: an attack, targeted or not, succeeds when the decision is not the label. Ties: "
    "the vote gives a tie between the most voted classes to the larger summed logit "
    "(vote-strict counts such a tie as wrong); over the draws of a randomized head the label "
    "must strictly win the majority (a tie is wrong)."
)


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
def attack_title(label: str, eps: float | None, cw_c: float | None = None) -> str:
    """``('pgd-20x5', 0.3)`` -> ``'PGD-20x5 eps=0.3'``; fixed-c CW shows its constant c."""
    base, steps, restarts = split_label(label)
    name = attack_entry(base).display
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
    #: This attack's robust accuracy (%) alone; None for a cascaded result, whose accuracy
    #: is cumulative (it skipped the samples earlier attacks broke): never shown as its own.
    robust: float | None
    cumulative: float

    @property
    def params(self) -> dict[str, Any]:
        return self.result.setting.get("params", {}) or {}

    @property
    def sum_scored(self) -> float:
        """A re-checked AutoAttack's robust accuracy as the paper scores it (%)."""
        return sum_scored_robust(self.result.df, self.result.meta.get("counts"))

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
    for res in col.of("attack", dataset):
        df = res.df
        if not len(df):
            continue
        clean, robust = robust_accuracy(df)
        out.append(
            AttackCell(
                result=res,
                label=str(first(df, "attack")),
                eps=first(df, "eps"),
                suite=str(first(df, "suite")),
                surface=str(first(df, "surface")),
                decision=str(first(df, "decision")),
                targeted=bool(first(df, "targeted")),
                surrogate=first(df, "surrogate"),
                n=len(df),
                clean=clean,
                robust=None if first(df, "cascade") else robust,
                cumulative=robust,
            )
        )
    return out


@dataclass
class WorstCell:
    """A stored per-sample worst case (``worst-case`` result) of one run at one eps."""

    result: Result
    eps: float
    decision: str
    n: int
    seed: int
    clean: float
    robust: float
    attacks: int


def worst_cells(col: Collection, dataset: str) -> list[WorstCell]:
    """Every stored worst case of ``dataset``."""
    out = []
    for res in col.of("worst-case", dataset):
        df = res.df
        if not len(df):
            continue
        clean, robust = robust_accuracy(df)
        s = res.setting
        out.append(
            WorstCell(
                res,
                float(s["eps"]),
                str(s["decision"]),
                int(s["n"]),
                int(s["seed"]),
                clean,
                robust,
                int(first(df, "attacks")),
            )  # fmt: skip
        )
    return out


SampleSet = tuple[int, int]  # (n, seed): the seeded evaluation subset a result was run on


def sample_set(result: Result) -> SampleSet | None:
    """The evaluation samples of ``result`` as (n, seed); None if its setting lacks n."""
    s = result.setting
    if s.get("n") is None:
        return None
    return int(s["n"]), int(s.get("seed") or 0)


@dataclass
class SamplePick:
    """The one sample set a table (or a row of it) reads, why, and the sets left out."""

    chosen: SampleSet | None
    why: str = ""
    left_out: dict[SampleSet, int] = field(default_factory=dict)  # set -> results left out

    def keeps(self, result: Result) -> bool:
        return self.chosen is None or sample_set(result) == self.chosen

    def note(self, scope: str = "this table") -> str | None:
        """One sentence naming the set and the sets left out (None with a single set)."""
        if self.chosen is None or not self.left_out:
            return None
        n, seed = self.chosen
        other = "; ".join(
            f"n = {k[0]}, seed {k[1]} ({v} result{'s' if v != 1 else ''})"
            for k, v in sorted(self.left_out.items())
        )
        return (
            f"Samples of {scope}: n = {n}, seed {seed} ({self.why}); results on other sample "
            f"sets are left out: {other}."
        )


def pick_sample_set(
    col: Collection, dataset: str, results: Iterable[Result], run: str | None = None
) -> SamplePick:
    """The one place for the rule: which stored sample set a table compares numbers on, so
    results of different samples are never mixed in one number (a worst case over attacks
    needs the same samples). The recipe's (``n`` and ``seed`` of the dataset's stored recipe)
    when results on it exist; else the set the most runs of ``results`` were evaluated on,
    then the one with the most results, then the largest n, then the smallest seed
    (deterministic). With ``run``, the pick for that run's rows: the same ranking over all of
    ``results``, among the sets ``run`` has results on."""
    runs: dict[SampleSet, set[str]] = {}
    count: dict[SampleSet, int] = {}
    mine: dict[SampleSet, int] = {}
    for r in results:
        key = sample_set(r)
        if key is None:
            continue
        runs.setdefault(key, set()).add(r.run)
        count[key] = count.get(key, 0) + 1
        if run is None or r.run == run:
            mine[key] = mine.get(key, 0) + 1
    if not mine:
        return SamplePick(None)
    chosen, why = None, ""
    recipe = col.recipe_for(dataset) or {}
    if recipe.get("n") is not None:
        theirs = [k for k in mine if k[0] == int(recipe["n"])]
        if recipe.get("seed") is not None:
            theirs = [k for k in theirs if k[1] == int(recipe["seed"])]
        if len(theirs) == 1:
            chosen, why = theirs[0], f"the recipe {recipe.get('name', '?')}'s"
    if chosen is None:
        chosen = max(mine, key=lambda k: (len(runs[k]), count[k], k[0], -k[1]))
        why = "the set most runs were evaluated on, then most results, then largest n"
    left = {k: v for k, v in mine.items() if k != chosen}
    return SamplePick(chosen, why, left)


def _paper_protocol(c: AttackCell) -> bool:
    return c.decision == "vote" and paper_protocol(c.result.df)


def attack_sort_key(key: tuple[str, float | None]) -> tuple:
    """Where a (label, eps) setting goes among the report's rows: by the attack's registry
    order (:func:`~dmlcli.attacks.attack_entry`), then name, steps, restarts and eps."""
    base, steps, restarts = split_label(key[0])
    eps = -1.0 if key[1] is None else key[1]
    return (attack_entry(base).order, base, steps or 0, restarts or 0, eps)


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


def _cell(ours: float | None, paper: float | None) -> str:
    """One cell: our number, and the paper's beside it when there is one."""
    if ours is None and paper is None:
        return "-"
    text = "-" if ours is None else f"{ours:.2f}"
    return text if paper is None else f"{text} (paper {paper:.2f})"


def _variants(cells: list[AttackCell]) -> dict[int, str]:
    """A suffix for each cell whose (run, attack, surface) is shared by a result of another
    setting (other samples, seed, budgets, scoring draws): such results are kept apart as
    rows of their own, never merged or overwritten. Empty for unique ones."""

    def setting(c: AttackCell) -> dict[str, Any]:
        s = dict(c.result.setting)
        # eps and what scales with it (the default step size) vary along a row, not between rows
        s["params"] = {
            k: v for k, v in (s.get("params") or {}).items() if k not in ("eps", "step_size")
        }
        return s

    groups: dict[tuple, list[AttackCell]] = {}
    for c in cells:
        groups.setdefault((c.result.run, c.label, c.surface, c.surrogate), []).append(c)
    out: dict[int, str] = {}
    for members in groups.values():
        kinds = {json.dumps(setting(c), sort_keys=True, default=str) for c in members}
        if len(kinds) < 2:
            continue
        ordered = sorted(kinds)
        for c in members:
            s = setting(c)
            k = ordered.index(json.dumps(s, sort_keys=True, default=str)) + 1
            out[id(c)] = f" [n={s.get('n')}, seed {s.get('seed')}, setting {k}]"
    return out


def _published(numbers: dict[str, Any], label: str | None, eps: float | None) -> float | None:
    """The paper's number for attack ``label`` at ``eps`` (None for attacks not the paper's)."""
    return None if label is None else paper_value(numbers, label, eps)


def _row_title(c: AttackCell, suffix: str = "") -> str:
    title = attack_title(c.label, None, c.params.get("c"))
    if c.surrogate:
        title += f" from {c.surrogate}"
    elif c.surface != "sum":
        title += f" on {c.surface}"
    eot = first(c.result.df, "eot")
    if eot and int(eot) > 1:
        title += f", EOT {int(eot)}"
    if c.robust is None:
        title += " (in a cascade: no accuracy of its own; see the worst case)"
    return title + suffix


@dataclass
class _Grid:
    """The columns of an eps grid (:func:`_eps_grid`), shared by all of its rows."""

    eps_values: list[float]  # one column per eps (rounded to 9 decimals), ascending
    unbounded: bool  # a last column for the unbounded CW-L2
    suffix: dict[int, str]  # id(cell) -> its row title's suffix (see :func:`_variants`)
    paper_attacks: set[tuple[str, int | None]]  # (attack, steps) the paper has numbers for

    def header(self) -> list[str]:
        """Model, attack, one column per eps and the unbounded one if any."""
        return [
            "Model",
            "Attack",
            *[f"eps={eps_text(e)}" for e in self.eps_values],
            *(["L2 (unbounded)"] if self.unbounded else []),
        ]


def _eps_grid(
    col: Collection,
    key: str,
    title: str,
    cells: list[AttackCell],
    runs: list[str],
    paper: dict[str, Any],
    what: str,
    dataset: str,
) -> Table:
    """One row per (model, attack), one column per eps (and one for the unbounded CW-L2),
    the paper's number beside ours in the same cell; each model opens with its clean
    accuracy and closes with its stored worst case over every attack of its checkpoint."""
    roles = {r.name: r.role for r in col.runs_of(dataset)}
    paper_roles = {k: v for k, v in paper.items() if isinstance(v, dict)}
    grid = _grid_columns(cells, paper_roles)
    worst = [w for w in worst_cells(col, dataset) if w.decision == "vote"]
    rows: list[list[Any]] = []
    set_notes: list[str] = []
    for run in runs:
        mine = [c for c in cells if c.result.run == run]
        numbers = paper_roles.get(roles.get(run, ""), {})
        model = col.label(run)
        # the clean and worst-case rows are on one sample set; other sets' attacks keep rows
        # of their own ([n=..., seed ...])
        pick = pick_sample_set(col, dataset, [c.result for c in cells], run)
        if pick.note():
            set_notes.append(pick.note(f"{model}'s clean and worst-case rows") or "")
        rows.append(_clean_row(grid, model, [c for c in mine if pick.keeps(c.result)], numbers))
        by_attack, seen = _grid_attack_rows(grid, model, mine, numbers)
        rows += by_attack
        rows += _not_run_rows(grid, model, numbers, seen)
        mine_worst = {
            round(w.eps, 9): w for w in worst if w.result.run == run and pick.keeps(w.result)
        }
        if mine_worst:
            rows.append(_worst_row(grid, model, mine_worst))
    notes = _grid_notes(cells, what, grid, set_notes, paper)
    return Table(key, title, grid.header(), rows, notes)


def _grid_columns(cells: list[AttackCell], paper_roles: dict[str, dict]) -> _Grid:
    """The columns of an eps grid: every eps of ``cells`` or of the paper's numbers
    (``paper_roles``: role -> column -> number), and the unbounded CW-L2 when a cell or the
    paper has one."""
    paper_eps: set[float] = set()
    paper_attacks: set[tuple[str, int | None]] = set()
    for numbers in paper_roles.values():
        for name in numbers:
            try:
                pc = parse_column(name)
            except DmlError:
                continue
            if pc.attack != "benign":
                paper_attacks.add((pc.attack, pc.steps))
                if pc.eps is not None:
                    paper_eps.add(round(pc.eps, 9))
    eps_values = sorted({round(c.eps, 9) for c in cells if c.eps is not None} | paper_eps)
    unbounded = any(c.eps is None for c in cells) or any(
        a in ("cw", "cw-search") for a, _ in paper_attacks
    )
    return _Grid(eps_values, unbounded, _variants(cells), paper_attacks)


def _clean_row(
    grid: _Grid, model: str, picked: list[AttackCell], numbers: dict[str, Any]
) -> list[Any]:
    """A model's clean accuracy at each eps, from its results on the picked sample set
    (``picked``; any of them where none is at that eps), the paper's beside the first."""
    clean = {round(c.eps, 9): c.clean for c in picked if c.eps is not None}
    any_clean = picked[0].clean if picked else None
    row: list[Any] = [model, "clean (the same samples)"]
    row += [
        _cell(clean.get(e, any_clean), numbers.get("benign") if i == 0 else None)
        for i, e in enumerate(grid.eps_values)
    ]
    row += [_cell(any_clean, None)] if grid.unbounded else []
    return row


def _cells_by_row(grid: _Grid, mine: list[AttackCell]) -> dict[str, dict[float | None, AttackCell]]:
    """A model's cells by row title, then eps (None: unbounded), rows in the report's
    order (:func:`attack_sort_key`)."""
    by_row: dict[str, dict[float | None, AttackCell]] = {}
    order: dict[str, tuple] = {}
    for c in sorted(mine, key=lambda c: attack_sort_key(c.key)):
        name = _row_title(c, grid.suffix.get(id(c), ""))
        by_row.setdefault(name, {})[None if c.eps is None else round(c.eps, 9)] = c
        order.setdefault(name, attack_sort_key((c.label, -1.0)))
    return {name: by_row[name] for name in sorted(by_row, key=lambda n: order[n])}


def _grid_attack_rows(
    grid: _Grid, model: str, mine: list[AttackCell], numbers: dict[str, Any]
) -> tuple[list[list[Any]], set[tuple[str, int | None]]]:
    """A model's attack rows (robust accuracy per eps; the paper's number beside ours where
    the result follows the paper's protocol) and the (attack, steps) they cover."""
    rows: list[list[Any]] = []
    seen: set[tuple[str, int | None]] = set()
    for name, at in _cells_by_row(grid, mine).items():
        any_cell = next(iter(at.values()))
        base, steps, _ = split_label(any_cell.label)
        protocol = _paper_protocol(any_cell) and not grid.suffix.get(id(any_cell))
        seen.add((base, steps))
        label = any_cell.label if protocol else None
        row = [model, name]
        row += [
            _cell(at[e].robust if e in at else None, _published(numbers, label, e))
            for e in grid.eps_values
        ]
        if grid.unbounded:
            row.append(
                _cell(at[None].robust if None in at else None, _published(numbers, label, None))
            )
        rows.append(row)
    return rows, seen


def _not_run_rows(
    grid: _Grid, model: str, numbers: dict[str, Any], seen: set[tuple[str, int | None]]
) -> list[list[Any]]:
    """Rows with only the paper's numbers, for the paper's attacks a model has no result of
    (not in ``seen``; an attack the paper gives without steps counts as seen at any)."""
    missing = {
        (base, steps)
        for base, steps in grid.paper_attacks - seen
        if not (steps is None and any(b == base for b, _ in seen))
    }
    rows: list[list[Any]] = []
    for base, steps in sorted(missing, key=lambda a: (attack_entry(a[0]).order, str(a))):
        label = base + (f"-{steps}" if steps else "")
        if all(paper_value(numbers, label, e) is None for e in [*grid.eps_values, None]):
            continue
        row = [model, attack_title(label, None) + " (not run)"]
        row += [_cell(None, paper_value(numbers, label, e)) for e in grid.eps_values]
        row += [_cell(None, paper_value(numbers, label, None))] if grid.unbounded else []
        rows.append(row)
    return rows


def _worst_row(grid: _Grid, model: str, worst: dict[float, WorstCell]) -> list[Any]:
    """A model's stored worst case (``worst``: rounded eps -> cell) at each eps."""
    row: list[Any] = [model, "worst case (every stored attack, per sample)"]
    row += [_cell(worst[e].robust if e in worst else None, None) for e in grid.eps_values]
    row += ["-"] if grid.unbounded else []
    return row


def _grid_notes(
    cells: list[AttackCell], what: str, grid: _Grid, set_notes: list[str], paper: dict[str, Any]
) -> list[str]:
    """The notes of an eps grid: samples and budgets (:func:`_notes_common`), what clean and
    worst case mean, scoring, kept-apart settings, the sample sets picked (``set_notes``) and
    where the paper's numbers come from."""
    notes = _notes_common(cells, what)
    notes.append(
        "clean = accuracy on the evaluated samples; worst case = a sample counts as robust "
        "only if it survived every stored L-inf attack of the checkpoint at that eps or a "
        "smaller one (every suite and invocation: paper, AutoAttack, adaptive, transfer)."
    )
    notes.append(TIE_NOTE)
    if any(grid.suffix.values()):
        notes.append(
            "Results of the same attack with another setting (samples, seed, budgets) are "
            "kept apart as their own rows ([n=..., seed ..., setting k])."
        )
    notes += set_notes
    if any(isinstance(v, dict) for v in paper.values()):
        src = paper.get("table", "")
        notes.append(f"(paper X) = the published number{(' (' + src + ')') if src else ''}.")
    return notes


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
    """Tables 2, 3, 10: robust accuracy per model and attack (crafted on sum, scored by vote),
    and each model's stored worst case."""
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
    return _eps_grid(col, "whitebox", title, cells, runs, paper, what, dataset)


def rdml_table(col: Collection, dataset: str) -> Table | Skip:
    """Tables 6, 9: DML vs R-DML ensembles under the same attacks, the paper's protocol (one
    draw per step) beside the adaptive attacks with EOT, and each model's worst case."""
    title = "DML vs R-DML ensembles, robust accuracy (%) (paper Tables 6, 9)"
    runs_all = col.runs_of(dataset)
    rand = [
        r.name for r in runs_all if r.role in ("rdml", "augdml") or r.head in ("rdml", "augdml")
    ]
    if not rand:
        return Skip("rdml", title, "no R-DML run of this dataset (train [train.rdml] --head rdml)")
    cells = [c for c in attack_cells(col, dataset) if c.decision == "vote" and not c.targeted]
    on_rand = {(c.label, c.surface, c.surrogate) for c in cells if c.result.run in rand}
    if not on_rand:
        return Skip("rdml", title, "the R-DML run has no attack results")
    dml = [r.name for r in runs_all if r.head == "dml"]
    runs = [r for r in dml + rand if any(c.result.run == r for c in cells)]
    cells = [
        c for c in cells if (c.label, c.surface, c.surrogate) in on_rand and c.result.run in runs
    ]
    paper = col.paper(dataset).get("rdml", {})
    what = (
        "scored by majority vote; a randomized head's decision is the majority over several "
        "draws (the score_draws of each result), and attacks marked EOT average that many "
        "draws per gradient step (the paper's protocol uses one)."
    )
    return _eps_grid(col, "rdml", title, cells, runs, paper, what, dataset)


def autoattack_table(col: Collection, dataset: str) -> Table | Skip:
    """Tables 7, 8: AutoAttack robust accuracy per eps, as the paper scores it and re-checked
    on the decision."""
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
    roles = {r.name: r.role for r in col.runs_of(dataset)}
    eps_values = sorted({round(c.eps, 9) for c in cells if c.eps is not None})
    header = ["Model", "AutoAttack", *[f"eps={eps_text(e)}" for e in eps_values]]
    rows: list[list[Any]] = []
    rechecked = False
    for run in runs:
        mine = {round(c.eps, 9): c for c in cells if c.result.run == run and c.eps is not None}
        numbers = paper.get(roles.get(run, ""), {}) if isinstance(paper, dict) else {}
        numbers = numbers if isinstance(numbers, dict) else {}
        version = next(iter(mine.values())).params.get("version", "?")
        row = [col.label(run), f"{version}, on the sum, scored by the vote (the paper's)"]
        for e in eps_values:
            c = mine.get(e)
            row.append(_cell(c.sum_scored if c else None, paper_value(numbers, "autoattack", e)))
        rows.append(row)
        if any(c.params.get("recheck") for c in mine.values()):
            rechecked = True
            row = [col.label(run), "+ decision-checked APGD-CE/APGD-T"]
            row += [_cell(mine[e].robust if e in mine else None, None) for e in eps_values]
            rows.append(row)
    notes = _notes_common(cells, "AutoAttack (pyautoattack) on the summed logits, scored by "
                          "majority vote.")  # fmt: skip
    notes.append(
        "AutoAttack decides success on the summed logits: it skips samples whose sum is wrong "
        "but whose vote is right, and stops once the sum is fooled even if the vote is not."
    )
    if rechecked:
        notes.append(
            "+ decision-checked: every sample whose vote AutoAttack left right is attacked again "
            "by APGD-CE and APGD-T (top-9 targets) that check the vote itself; that row is the "
            "honest AutoAttack number."
        )
    return Table("autoattack", title, header, rows, notes)


def adaptive_table(col: Collection, dataset: str) -> Table | Skip:
    """What the paper lacks: per eps, the paper-protocol number beside AutoAttack (re-checked),
    the strongest adaptive attack and the stored worst case over every attack."""
    title = "Paper protocol vs adaptive evaluation, robust accuracy (%) per eps"
    cells = [c for c in attack_cells(col, dataset) if c.decision == "vote" and c.eps is not None]
    cells = [c for c in cells if first(c.result.df, "norm") == "linf"]
    worst = [w for w in worst_cells(col, dataset) if w.decision == "vote"]
    if not any(c.suite in ("adaptive", "autoattack") for c in cells):
        return Skip(
            "adaptive", title, "no adaptive or AutoAttack results (dml attack --suite adaptive)"
        )
    rows = []
    set_notes: list[str] = []
    for run in [r.name for r in col.runs_of(dataset)]:
        mine = [c for c in cells if c.result.run == run]
        mine_worst = [x for x in worst if x.result.run == run]
        # every number of a run's rows on one sample set, so "change vs paper" compares alike
        pick = pick_sample_set(
            col, dataset, [c.result for c in cells] + [w.result for w in worst], run
        )
        if pick.note():
            set_notes.append(pick.note(f"{col.label(run)}'s rows") or "")
        mine = [c for c in mine if pick.keeps(c.result)]
        mine_worst = [x for x in mine_worst if pick.keeps(x.result)]
        for eps in sorted({round(c.eps, 9) for c in mine}):
            at = [c for c in mine if round(c.eps, 9) == eps]
            paper = [c for c in at if _paper_protocol(c)]
            aa = [c for c in at if split_label(c.label)[0] == "autoattack"]
            adaptive = [c for c in at if c.suite == "adaptive" and c.robust is not None]
            w = [x for x in mine_worst if round(x.eps, 9) == eps]
            best_paper = min(paper, key=lambda c: (c.robust, c.label)) if paper else None
            best_adaptive = min(adaptive, key=lambda c: (c.robust, c.label)) if adaptive else None
            ref = best_paper.robust if best_paper else None
            wc = min(w, key=lambda x: x.robust) if w else None
            rows.append(
                [
                    col.label(run),
                    eps_text(eps),
                    ref,
                    attack_title(best_paper.label, None) if best_paper else "-",
                    min(c.robust for c in aa) if aa else None,
                    best_adaptive.robust if best_adaptive else None,
                    _row_title(best_adaptive) if best_adaptive else "-",
                    wc.robust if wc else None,
                    f"{wc.attacks} on n={wc.n}" if wc else "-",
                    None if ref is None or wc is None else wc.robust - ref,
                ]
            )
    cols = [
        "Model",
        "eps",
        "paper protocol",
        "its strongest attack",
        "AutoAttack (re-checked)",
        "strongest adaptive attack",
        "which",
        "worst case, all stored attacks",
        "attacks; samples",
        "change vs paper (pp)",
    ]
    notes = _notes_common(cells, "every decision scored by majority vote.")
    notes += [
        "paper protocol = the lowest robust accuracy among the paper's attacks (FGSM, BIM, PGD "
        "crafted on the summed logits).",
        "worst case = a sample counts as robust only if it survived every stored L-inf attack "
        "of the checkpoint at this eps or a smaller one (all suites and invocations, every "
        "surface and loss, EOT, transfer from a surrogate, AutoAttack): the stored worst-case "
        "result.",
        *set_notes,
    ]
    if any(c.robust is None for c in cells):
        notes.append(
            "The adaptive suite ran as a cascade (each attack only on the samples every earlier "
            "one left robust), so no single adaptive attack has an accuracy of its own here: "
            "its number is the worst case. dml attack --independent runs each on every sample."
        )
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
    """CLEVER score summary per run (Fig. 1, 7, 8 in numbers), every statistic of
    ``score_label`` (0 where the prediction is wrong), and the samples with a capped fit."""
    from dmlcli.results import CLEVER_THRESHOLD, score_quantiles

    title = "CLEVER scores (L2) per model"
    results = [r for r in col.of("clever", dataset) if "score" in r.df.columns]
    if not results:
        return Skip("clever", title, "no CLEVER results (dml clever)")
    rows = []
    for r in results:
        s = r.setting
        q = score_quantiles(r.df, "score_label")
        rows.append(
            [
                col.label(r.run),
                str(s.get("target", "sum")),
                q["n"],
                q["q50"],
                q["mean"],
                q["score_label>0"],
                q[f"score_label>{CLEVER_THRESHOLD:g}"],
                q["capped"],
                float(s.get("radius", math.nan)),
            ]
        )
    s = results[0].setting
    starts = " ".join(f"{v:g}" for v in s.get("c_init", [])) or "?"
    notes = [
        f"L{s.get('norm', '2')} ball of radius R={s.get('radius', '?')}; {s.get('nb_batches', '?')}"
        f" batches x {s.get('batch_size', '?')} points; seed {s.get('seed', '?')}. The score "
        "is capped at R. Every column is of score_label: the CLEVER score where the model's "
        "prediction is right, 0 where it is wrong (a wrong prediction is not robust). The "
        f"paper counts non-zero scores (Fig. 1, '> 0') and scores above {CLEVER_THRESHOLD:g} "
        f"(Fig. 7, 8, '> {CLEVER_THRESHOLD:g}').",
        f"Reverse Weibull fit of the batch maxima from shape starts {starts}, the best KS "
        "p-value kept (Weng et al.). capped: samples with a fit whose location (the estimated "
        f"maximum gradient norm) hit its cap, max + {s.get('max_offset', 1.0):g} x the range of "
        "the batch maxima: the fit wanted a larger norm, so their score may be too high.",
    ]
    cols = ["Model", "scored", "n", "median", "mean", "> 0", "> 0.2", "capped", "R"]
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


def detect_table(col: Collection, dataset: str) -> Table | Skip:
    """Detection by disagreement / uncertainty (A.4, A.5): AUC and unanimity rates, and the
    frozen uncertainty regression at a 5% benign FPR; one result per (model, method, eps,
    setting) holds every attack, and its worst case row is the worst case against that one
    detector."""
    title = "Adversary detection: ROC AUC and unanimity (nu = K) rates (A.4, A.5)"
    results = [r for r in col.of("detect", dataset) if {"kind", "attack"} <= set(r.df.columns)]
    if not results:
        return Skip("detect", title, "no detection results (dml detect)")
    rows: list[list[Any]] = []
    fit_notes: dict[str, list[str]] = {}
    for r in results:
        result_rows, fitted = _detect_rows(col, r)
        rows += result_rows
        if fitted is not None:
            fit, who = fitted
            fit_notes.setdefault(fit, []).append(who)
    rows.sort(
        key=lambda r: (r[0], not r[1].startswith("vote"), r[1], r[3], r[2] == "worst case", r[2])
    )
    notes = _detect_notes(results[0].setting, fit_notes)
    return Table("detect", title, list(_DETECT_COLUMNS), rows, notes)


_DETECT_COLUMNS = (
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
    "LR undetected+wrong @5% FPR",
)


def _detect_rows(col: Collection, r: Result) -> tuple[list[list[Any]], tuple[str, str] | None]:
    """The rows of one ``detect`` result (one model, method and eps): one per attack and,
    with several attacks, their per-sample worst case against the same detector. With a
    fitted uncertainty regression also (the attacks it was fit on, who it belongs to) for
    the notes; else None."""
    df, s = r.df, r.setting
    k = len([c for c in df.columns if c.startswith("pred_member_")]) or 1
    flag = f"flagged_nu_{k}"
    method = str(s["method"])
    model = col.label(r.run)
    mlabel = f"{method} ({s['head']} head)" if s.get("head") else method
    eps = eps_text(float(s["eps"]))
    ev = df[df["half"] != "fit"] if "half" in df.columns else df
    fitted = "lr_score" in df.columns and bool((df["half"] == "fit").any())
    at_fpr = flag_at_fpr(df, REPORT_FPR) if fitted else None
    aucs = r.meta.get("aucs", {})
    attacks = detect_attacks(df)
    rows: list[list[Any]] = []
    for attack in attacks:
        name = attack
        if attack == "adaptive" and s.get("adaptive_targets", 1) != 1:
            name += f" ({s['adaptive_targets']} targets)"
        auc = float(aucs.get(attack, math.nan))
        rows.append([model, mlabel, name, eps, *_detection_rates(ev, at_fpr, flag, attack, auc)])
    if len(attacks) > 1:  # per sample, whichever attack works, against the same detector
        worst = detect_worst_case(ev, flag) if flag in ev else None
        worst_fpr = detect_worst_case(at_fpr, "flagged_fpr") if at_fpr is not None else None
        blank = [None] * 4
        rows.append([model, mlabel, "worst case", eps, *blank, worst, None, None, worst_fpr])
    if not fitted:
        return rows, None
    fit = ", ".join(s.get("fit_attacks") or r.meta.get("fit_attacks") or ["?"])
    return rows, (fit, f"{model} ({mlabel}, eps {eps})")


def _detection_rates(
    ev: pd.DataFrame, at_fpr: pd.DataFrame | None, flag: str, attack: str, auc: float
) -> list[Any]:
    """The numbers of one attack's row (columns n to LR undetected+wrong): benign samples,
    ``auc``, the unanimity rates (``flag``) on the eval rows ``ev`` and, with a fitted
    regression, its rates at the 5% FPR threshold (``at_fpr``)."""
    part = attack_rows(ev, attack)
    nu = rates(part, flag) if flag in part.columns else {}
    op = rates(attack_rows(at_fpr, attack), "flagged_fpr") if at_fpr is not None else {}
    return [
        int((part["kind"] == "benign").sum()),
        auc,
        nu.get("fpr"),
        nu.get("detected"),
        nu.get("undetected_wrong"),
        nu.get("adv_vote_acc"),
        op.get("detected"),
        op.get("undetected_wrong"),
    ]


def _detect_notes(s: dict[str, Any], fit_notes: dict[str, list[str]]) -> list[str]:
    """The notes of the detection table: the protocol (seed and draws of setting ``s``),
    what the rates mean and, per set of fit attacks (``fit_notes``: fit attacks -> the
    detectors fit on them), how the uncertainty regression was fit and frozen."""
    notes = [
        "Negatives: correctly classified benign (and Gaussian-noisy) test samples; positives: "
        f"their adversarials. Seed {s.get('seed', '?')}; draws {s.get('draws', '?')}. "
        "AUC of the detector score (vote: number of dissenting members; uncertainty: logistic "
        "regression on the variance across members and draws, evaluated on held-out half).",
        "FPR / detected = share of benign / adversarial inputs rejected when all K members must "
        "agree (unanimity, Eq. 8 with nu = K); undetected+wrong = adversarials answered with a "
        "wrong label. Worst case: samples for which at least one of the attacks above gives "
        "an undetected wrong answer (an attacker keeps whichever attack works). LR @5% FPR: "
        "the uncertainty regression thresholded on its fit half to flag 5% of benign inputs, "
        "scored on the eval half.",
    ]
    for fit, who in fit_notes.items():
        notes.append(
            f"Uncertainty detector of {'; '.join(who)}: one logistic regression, fit once on "
            f"the fit half (benign + noisy inputs vs {fit} adversarials) and frozen; every "
            "attack above, the adaptive one included, is scored against that same detector "
            "(and the same 5% FPR threshold) on the eval half, never refit on its own "
            "adversarials."
        )
    return notes


def check_table(col: Collection, dataset: str) -> Table | Skip:
    """Sanity checks for gradient masking and failed attacks (``dml check``), per run."""
    title = "Sanity checks: gradient masking and attack failure (not in the paper)"
    found = [r for r in col.of("check", dataset) if {"check", "status"} <= set(r.df.columns)]
    if not found:
        return Skip("check", title, "no sanity-check results (dml check)")
    found, older = _newest_checks(found)
    rows = []
    for r in sorted(found, key=lambda r: (col.label(r.run), float(first(r.df, "eps")))):
        eps = eps_text(float(first(r.df, "eps")))
        for c in r.df.itertuples():
            rows.append([col.label(r.run), eps, c.check, c.status, c.value, c.threshold, c.detail])
    s = found[0].setting
    counts = {k: sum(str(row[3]) == k for row in rows) for k in ("pass", "warn", "fail")}
    notes = [
        f"n = {', '.join(sorted({str(first(r.df, 'n')) for r in found}))} test samples (the "
        f"seeded evaluation subset, seed {first(found[0].df, 'seed')}); decision "
        f"{first(found[0].df, 'decision')}. Attacks on the summed logits: FGSM, "
        f"PGD-{s.get('steps', '?')} (step 2.5 eps / steps, {s.get('restarts', '?')} "
        "restart(s)), the same PGD with twice the steps and restarts at the same step size, "
        "PGD over eps/4, eps/2, eps, halfway and the large eps, RayS on the decision "
        f"({s.get('queries', '?')} hard-label queries per sample) and, where given, "
        "APGD-CE transferred from a surrogate and the same attacks on a baseline.",
        "Following Carlini et al. 2019 (checklist), AutoAttack's checks (Croce & Hein 2020) "
        "and Pintor et al. 2022 (indicators of attack failure). value and threshold are "
        "points of robust accuracy or % of samples; a check passes at or below its threshold. "
        f"In all: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail.",
    ]
    if older:
        notes.append(
            f"{older} older sanity-check result(s) of the same run, eps and decision (other "
            "settings) are left out: each row is from the newest."
        )
    cols = ["Model", "eps", "check", "status", "value", "threshold", "detail"]
    return Table("check", title, cols, rows, notes)


def _newest_checks(found: list[Result]) -> tuple[list[Result], int]:
    """The newest check result per (run, eps, decision), and how many older ones there were
    (``dml check`` with other settings writes another file; listing both repeats each row)."""
    newest: dict[tuple, Result] = {}
    for r in found:
        key = (r.run, float(first(r.df, "eps")), str(first(r.df, "decision")))
        if key not in newest or r.meta.get("created", "") > newest[key].meta.get("created", ""):
            newest[key] = r
    chosen = {id(r) for r in newest.values()}
    kept = [r for r in found if id(r) in chosen]  # in the collection's order
    return kept, len(found) - len(kept)


# -- defenses side by side --------------------------------------------------------------------
def member_transfer_rate(df: pd.DataFrame) -> float:
    """Transfer rate between members (%) of one ``transfer`` result (one eps, untargeted)
    crafted on single members: over
    every ordered pair (source member i, scored member j != i) and every sample whose
    adversarial fooled i while j classified it correctly when clean, how often it fools j."""
    members = df[df["source"].str.startswith("member:") & df["scored"].str.startswith("member:")]
    own = members[members["source"] == members["scored"]].drop_duplicates(["source", "sample"])
    own = own.set_index(["source", "sample"])
    others = members[members["source"] != members["scored"]]
    if not len(others) or not len(own):
        return float("nan")
    index = pd.MultiIndex.from_arrays([others["source"], others["sample"]])
    source_fooled = ~own["adv_correct"].reindex(index).to_numpy(dtype=bool)
    keep = source_fooled & others["clean_correct"].to_numpy(dtype=bool)
    picked = others[keep]
    if not len(picked):
        return float("nan")
    return 100.0 * float((~picked["adv_correct"].astype(bool)).mean())


def _defense_metrics(
    col: Collection, dataset: str
) -> tuple[list[float], dict[str, dict], SamplePick]:
    """The eps values with a stored worst case, per run the numbers of the side-by-side
    table (clean, per eps paper protocol / AutoAttack / worst case, gradient cosine, member
    transfer rate, seconds per training epoch), and the one sample set (n, seed) every
    attack number is on (:func:`pick_sample_set`)."""
    cells = [c for c in attack_cells(col, dataset) if c.decision == "vote" and c.eps is not None]
    worst = [w for w in worst_cells(col, dataset) if w.decision == "vote"]
    pick = pick_sample_set(col, dataset, [c.result for c in cells] + [w.result for w in worst])
    cells = [c for c in cells if pick.keeps(c.result)]
    worst = [w for w in worst if pick.keeps(w.result)]
    eps_all = sorted({round(w.eps, 9) for w in worst})
    out: dict[str, dict] = {}
    for info in col.runs_of(dataset):
        run = info.name
        m: dict[str, Any] = {"defense": info.defense, "group": info.group}
        mine = [w for w in worst if w.result.run == run]
        if mine:
            m["clean"] = mine[0].clean
        for eps in eps_all:
            at = [c for c in cells if c.result.run == run and round(c.eps, 9) == eps]
            paper = [c.result.df for c in at if _paper_protocol(c)]
            if paper:
                m[f"paper@{eps}"] = 100.0 * float(worst_case(paper)["robust"].mean())
            aa = [c.robust for c in at if split_label(c.label)[0] == "autoattack"]
            if aa:
                m[f"aa@{eps}"] = min(aa)
            w = [x.robust for x in mine if round(x.eps, 9) == eps]
            if w:
                m[f"worst@{eps}"] = min(w)
        grads = [r.df for r in col.of("gradients", dataset) if r.run == run]
        if grads:
            m["cosine"] = float(pd.concat(grads)["cosine"].mean())
        rates_ = [member_transfer_rate(r.df) for r in col.of("transfer", dataset)
                  if r.run == run and len(r.df) and not first(r.df, "targeted")]  # fmt: skip
        rates_ = [x for x in rates_ if not math.isnan(x)]
        if rates_:
            m["transfer"] = float(np.mean(rates_))
        h = info.history
        if h is not None and "seconds" in h.columns and len(h):
            m["epoch_s"] = float(h["seconds"].mean())
        out[run] = m
    return eps_all, out, pick


def _defense_notes(pick: SamplePick) -> list[str]:
    if pick.chosen is None:
        return []
    n, seed = pick.chosen
    note = pick.note() or f"Samples: n = {n}, seed {seed} (every attack number of this table)."
    return [note]


def _defense_columns(eps_all: list[float]) -> list[tuple[str, str]]:
    cols = [("clean", "clean")]
    for e in eps_all:
        cols += [(f"paper@{e}", f"paper protocol {eps_text(e)}"),
                 (f"aa@{e}", f"AutoAttack {eps_text(e)}"),
                 (f"worst@{e}", f"worst case {eps_text(e)}")]  # fmt: skip
    return cols + [("cosine", "member grad cosine"), ("transfer", "member transfer %"),
                   ("epoch_s", "s / epoch")]  # fmt: skip


_DEFENSE_NOTES = [
    "Every number is over the same stored evaluation samples; paper protocol = a sample is "
    "robust if it survived every stored paper-protocol attack (crafted on the summed logits, "
    "scored by the vote); AutoAttack = re-checked on the decision; worst case = survived every "
    "stored L-inf attack of the checkpoint (all suites).",
    "member grad cosine = mean cosine of the members' input gradients (dml geometry "
    "--gradients); member transfer % = how often an adversarial crafted on one member fools "
    "another (among samples it fooled its source on and the other got right clean; dml "
    "transfer --source all); s / epoch = training time per epoch on the machine that trained "
    "it. dml compare GROUP_A GROUP_B tests the differences (per seed and over seeds).",
]


def _compares_defenses(metrics: dict[str, dict]) -> bool:
    """Whether the runs hold two defenses, one of them competing or trained on seeds."""
    defenses = {m["defense"] for m in metrics.values()}
    seeded = any(m["group"] != run for run, m in metrics.items())
    return len(defenses) >= 2 and bool(seeded or defenses - {"dml", "baseline"})


def defenses_table(col: Collection, dataset: str) -> Table | Skip:
    """One row per defense (a group of seed runs, or a single run): every measure as mean ±
    std over its seeds (the per-seed numbers are the next table)."""
    title = "Defenses side by side (mean ± std over seeds)"
    eps_all, metrics, pick = _defense_metrics(col, dataset)
    if not _compares_defenses(metrics):
        return Skip("defenses", title, "no competing defenses (dml train --defense, --seeds)")
    groups: dict[str, list[str]] = {}
    for run, m in metrics.items():
        groups.setdefault(m["group"], []).append(run)
    cols = _defense_columns(eps_all)
    rows = []
    for group, runs in groups.items():
        row: list[Any] = [metrics[runs[0]]["defense"], group, len(runs)]
        for key, _ in cols:
            values = [metrics[r][key] for r in runs if key in metrics[r]]
            digits = 3 if key == "cosine" else 1 if key == "epoch_s" else 2
            row.append(format_spread(values, digits) if values else None)
        rows.append(row)
    header = ["Defense", "group", "seeds", *[name for _, name in cols]]
    return Table("defenses", title, header, rows, [*_DEFENSE_NOTES, *_defense_notes(pick)])


def defenses_seed_table(col: Collection, dataset: str) -> Table | Skip:
    """The numbers behind :func:`defenses_table`, one row per run (seed)."""
    title = "Defenses side by side, every seed"
    eps_all, metrics, pick = _defense_metrics(col, dataset)
    if not _compares_defenses(metrics):
        return Skip("defenses_seeds", title, "no competing defenses (dml train --defense)")
    cols = _defense_columns(eps_all)
    rows = [[m["defense"], run, *[m.get(key) for key, _ in cols]] for run, m in metrics.items()]
    header = ["Defense", "run", *[name for _, name in cols]]
    return Table("defenses_seeds", title, header, rows, _defense_notes(pick))


#: Builders in report order (key, function, where the paper has it: T = table, F = figure).
TABLES: list[tuple[str, Callable[[Collection, str], Table | Skip], str]] = [
    ("benign", benign_table, "benign acc."),
    ("whitebox", whitebox_table, "T2, T3, T10"),
    ("transfer", transfer_table, "T4, T11; heat map"),
    ("cw_distortion", cw_distortion_table, "T5, T12"),
    ("rdml", rdml_table, "T6, T9"),
    ("autoattack", autoattack_table, "T7, T8"),
    ("adaptive", adaptive_table, "not in paper"),
    ("clever", clever_table, "F1, F7, F8"),
    ("certify", certify_table, "F14-F16"),
    ("detect", detect_table, "F3, F4, F6"),
    ("check", check_table, "not in paper"),
    ("defenses", defenses_table, "not in paper"),
    ("defenses_seeds", defenses_seed_table, "not in paper"),
]
