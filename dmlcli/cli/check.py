"""``dml check``: sanity checks for gradient masking and failed attacks -> one table."""

from __future__ import annotations

import math
from typing import Any

from rich.markup import escape
from rich.table import Table

from dmlcli import api
from dmlcli.api.checks import CheckOutcome, CheckSettings
from dmlcli.cli.common import cached_note, command_of, console
from dmlcli.results import first
from dmlcli.units import eps_text

HELP = """Sanity checks: gradient masking and failed attacks (Carlini et al. 2019, AutoAttack).

Runs a small attack set on the run's seeded evaluation samples and reports per check
pass / warn / fail with the measured value and its threshold: iterative vs single-step,
more budget, silent success and incomplete optimization (from a loss trace of PGD kept
by loss), a large eps and the eps sweep, RayS on the decision (and --surrogate
transfer) vs the white-box attacks per sample, zero input gradients per surface,
randomness and, with --baseline, that the attacks break an undefended model. Exits 0
whatever the statuses.
"""
COLOURS = {"pass": "green", "warn": "yellow", "fail": "red"}


def show(out: CheckOutcome, s: CheckSettings) -> None:
    """The table of checks, then whether the result was read from the store."""
    print_table(out)
    cached_note(out, s.artifacts)


command = command_of(api.check, show, help=HELP)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.2f}" if abs(float(value)) >= 1e-3 or value == 0 else f"{value:.1e}"


def print_table(out: CheckOutcome) -> None:
    """One table per stored check result: check, coloured status, value, threshold, detail."""
    for _, rows in out:
        if not len(rows):
            continue
        title = (
            f"{first(rows, 'run')}: sanity checks at eps {eps_text(float(first(rows, 'eps')))} "
            f"(large eps {eps_text(float(first(rows, 'large_eps')))}) on {first(rows, 'n')} "
            f"{first(rows, 'dataset')} test samples (seed {first(rows, 'seed')}, decision "
            f"{first(rows, 'decision')})"
        )
        table = Table(title=title, title_justify="left")
        table.add_column("check")
        table.add_column("status")
        table.add_column("value", justify="right")
        table.add_column("threshold", justify="right")
        table.add_column("detail", ratio=1)
        for r in rows.itertuples():
            colour = COLOURS.get(str(r.status), "white")
            table.add_row(
                r.check, f"[{colour}]{r.status}[/]", _number(r.value), _number(r.threshold),
                escape(str(r.detail)),
            )  # fmt: skip
        console.print(table)
        counts = ", ".join(
            f"[{c}]{int((rows['status'] == s).sum())} {s}[/]" for s, c in COLOURS.items()
        )
        console.print(f"{counts}; value and threshold: points of robust accuracy or % of samples")
    for path in out.new_files:
        console.print(f"[dim]wrote[/dim] {path}")
