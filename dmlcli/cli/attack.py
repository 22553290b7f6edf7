"""``dml attack``: white-box suites (paper, AutoAttack, adaptive) -> per-sample parquet rows."""

from __future__ import annotations

from typing import Any

from dmlcli import api
from dmlcli.api import PathLike
from dmlcli.api.outcome import Outcome
from dmlcli.api.robustness import AttackOutcome, AttackSettings, SeedSpread
from dmlcli.cli.common import cached_note, command_of, console, shard_note, summary
from dmlcli.results import first, format_spread, robust_accuracy
from dmlcli.units import format_eps

HELP = """Attack runs with the paper's protocol, AutoAttack and the adaptive suite.

One parquet row per (sample, attack setting). Every batch is kept as a part file as soon
as it is done: after Ctrl-C or a kill, the same command computes only the missing
batches. '--shard i/n' computes the i-th block of batches only; 'dml merge' then writes
the results.
"""


def show(out: AttackOutcome, s: AttackSettings) -> None:
    """Each run's table, then each group of seeds' summary."""
    print_summary(out, s.n, s.seed, s.artifacts)
    print_groups(out.groups)


command = command_of(api.attack, show, help=HELP)


def print_groups(groups: list[SeedSpread]) -> None:
    """One table per group of seeds: mean ± std of every row, and every seed's number."""
    by_group: dict[str, list[SeedSpread]] = {}
    for g in groups:
        by_group.setdefault(g.group, []).append(g)
    for group, rows in by_group.items():
        runs = list(dict.fromkeys(r for g in rows for r in g.runs))
        table = []
        for g in rows:
            eps = "-" if g.eps is None else format_eps(float(g.eps))
            cells = [f"{g.runs[r]:.2f}" if r in g.runs else "-" for r in runs]
            spread = format_spread(list(g.runs.values()))
            table.append([g.attack, g.surface, g.decision, eps, spread, *cells])
        seeds = [r[len(group) + 1 :] if r.startswith(group + "-") else r for r in runs]
        columns = ["attack", "surface", "decision", "eps", "mean ± std %", *seeds]
        summary(f"{group}: accuracy over {len(runs)} seeds", columns, table, [])


def print_summary(out: Outcome, n: int, seed: int, artifacts: PathLike | None) -> None:
    """One table per run: clean accuracy per decision, every result's robust accuracy, and
    the stored worst case over everything attacked so far."""
    tables: dict[str, list[list[Any]]] = {}
    datasets: dict[str, str] = {}
    for r, rows in out:
        if not len(rows):
            continue
        table = tables.setdefault(r.run, [])
        datasets[r.run] = str(first(rows, "dataset"))
        decision = str(first(rows, "decision"))
        clean, robust = robust_accuracy(rows)
        e = first(rows, "eps")
        eps = "L2" if e is None else format_eps(float(e))
        if r.kind == "worst-case":
            what = f"{int(first(rows, 'attacks'))} results"
            table.append(["worst case", what, decision, eps, robust, "-", r.status])
            continue
        if not any(row[0] == "clean" and row[2] == decision for row in table):
            table.insert(0, ["clean", "-", decision, "-", clean, "-", ""])
        surface = first(rows, "surrogate") or str(first(rows, "surface"))
        seconds = f"{rows['seconds'].sum():.1f}"
        label = str(first(rows, "attack"))
        if first(rows, "cascade"):  # cumulative: never this attack's accuracy alone
            label += "*"
        table.append([label, surface, decision, eps, robust, seconds, r.status])
        for w in r.warnings:
            console.print(f"[yellow]autoattack warning[/yellow] {r.run} {r.label}: {w}")
        counts = r.meta.get("counts")
        if counts:
            console.print(
                f"{r.run} {r.label}: AutoAttack skipped {counts['aa_sum_wrong_vote_right']}"
                f" samples whose sum was wrong but whose {decision} was right; "
                f"{counts['rechecked']} samples it left robust were re-attacked by the "
                f"decision-checked APGD, which broke {counts['recheck_broke']}"
            )
    columns = ["attack", "surface", "decision", "eps", "acc %", "s", "status"]
    if any(r.meta.get("setting", {}).get("cascade") for r in out.results):
        console.print(
            "* cascade: the attack ran only on the samples every earlier stored attack left "
            "robust; its acc % is after it and all before it, not its own (dml attack "
            "--independent runs each alone)"
        )
    for i, (run, rows) in enumerate(tables.items()):
        title = f"{run}: robust accuracy on {n} {datasets[run]} test samples (seed {seed})"
        summary(title, columns, rows, out.new_files if i == len(tables) - 1 else [])
    if not shard_note(out, artifacts):
        cached_note(out, artifacts)
