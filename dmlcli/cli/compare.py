"""``dml compare``: paired per-sample comparison of runs from their stored results."""

from __future__ import annotations

from dmlcli import api
from dmlcli.api.comparison import CompareOutcome, CompareSettings
from dmlcli.cli.common import command_of, console, summary

HELP = """Compare runs on the same evaluation samples: clean accuracy, the paper protocol and the
stored worst case at --eps, each with the difference, its paired bootstrap 95% CI and
McNemar's exact p-value (nothing is attacked: run dml attack on each run first)."""


def show(out: CompareOutcome, s: CompareSettings) -> None:
    """One row per (run B, measure), and per seed and over the seeds for groups."""
    grouped = out.by_seed
    rows = [
        (*((r.level,) if grouped else ()), r.run_b, r.measure, r.n, f"{r.acc_a:.1f}",
         f"{r.acc_b:.1f}", f"{r.diff:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}]",
         f"{r.p_value:.3g}")
        for r in out.rows.itertuples()
    ]  # fmt: skip
    columns = ["B", "measure", "n", "A %", "B %", "A-B [95% CI]", "p"]
    if grouped:
        columns = ["level", *columns]
    title = f"A = {out.base} vs each B, eps {s.eps}, decision {s.decision}"
    summary(title, columns, rows)
    console.print(
        "p: McNemar's exact test per run pair; over seeds: the paired t-test of the per-seed "
        "differences (CI: Student-t)"
        if grouped
        else "p: McNemar's exact test"
    )


command = command_of(api.compare, show, help=HELP)
