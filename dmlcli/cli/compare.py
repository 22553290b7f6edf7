"""``dml compare``: paired per-sample comparison of runs from their stored results."""

from __future__ import annotations

from typing import Annotated

import typer

from dmlcli import api
from dmlcli.cli.common import ArtifactsOpt, SeedOpt, console, defaults, summary

D = defaults(api.compare)


def command(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Two or more runs (or groups of seeds); the first is compared with each other."
        ),
    ],
    eps: Annotated[
        str, typer.Option(help="L-inf budget of the stored results, e.g. 0.1 or 8/255.")
    ],
    decision: Annotated[str, typer.Option(help="Decision the results were scored by.")] = D[
        "decision"
    ],
    n: Annotated[
        int | None, typer.Option("--n", help="Evaluation samples (when several were stored).")
    ] = D["n"],
    reps: Annotated[int, typer.Option(help="Bootstrap resamples of the 95% CI.")] = D["reps"],
    seed: SeedOpt = D["seed"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Compare runs on the same evaluation samples: clean accuracy, the paper protocol and the
    stored worst case at --eps, each with the difference, its paired bootstrap 95% CI and
    McNemar's exact p-value (nothing is attacked: run dml attack on each run first)."""
    names = list(runs)
    df = api.compare(
        runs, eps=eps, decision=decision, n=n, seed=seed, reps=reps, artifacts=artifacts
    )
    grouped = (df["level"] != "run").any()
    rows = [
        (*((r.level,) if grouped else ()), r.run_b, r.measure, r.n, f"{r.acc_a:.1f}",
         f"{r.acc_b:.1f}", f"{r.diff:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}]",
         f"{r.p_value:.3g}")
        for r in df.itertuples()
    ]  # fmt: skip
    columns = ["B", "measure", "n", "A %", "B %", "A-B [95% CI]", "p"]
    if grouped:
        columns = ["level", *columns]
    title = f"A = {names[0]} vs each B, eps {eps}, decision {decision}"
    summary(title, columns, rows)
    console.print(
        "p: McNemar's exact test per run pair; over seeds: the paired t-test of the per-seed "
        "differences (CI: Student-t)"
        if grouped
        else "p: McNemar's exact test"
    )
