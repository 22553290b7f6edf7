"""``dml check``: sanity checks for gradient masking and failed attacks -> one table."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from dmlcli import api
from dmlcli.cli.common import (
    ArtifactsOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    NOpt,
    RunArg,
    SeedOpt,
    cached_note,
    console,
    defaults,
    new_files,
    reporter,
    results_of,
)
from dmlcli.results import first
from dmlcli.units import eps_text

D = defaults(api.check)
COLOURS = {"pass": "green", "warn": "yellow", "fail": "red"}


def command(
    run: RunArg,
    baseline: Annotated[
        str | None,
        typer.Option(help="An undefended run of the same dataset the attacks must break."),
    ] = D["baseline"],
    surrogate: Annotated[
        str | None,
        typer.Option(help="Transfer APGD-CE adversarials from this run (per-sample check)."),
    ] = D["surrogate"],
    eps: Annotated[
        str | None, typer.Option(help="L-inf budget in pixels (default: the first paper eps).")
    ] = D["eps"],
    large_eps: Annotated[
        str | None,
        typer.Option(help="Budget where accuracy must reach ~0 (default 4x paper eps, <= 0.5)."),
    ] = D["large_eps"],
    n: NOpt = D["n"],
    decision: Annotated[
        str, typer.Option(help="Decision scored: vote (paper), meta-vote, sum, member:k.")
    ] = D["decision"],
    steps: Annotated[int, typer.Option(help="PGD steps (doubled in the budget check).")] = D[
        "steps"
    ],
    restarts: Annotated[int, typer.Option(help="PGD restarts (doubled in the budget check).")] = D[
        "restarts"
    ],
    queries: Annotated[
        int, typer.Option(help="RayS (hard-label, on the decision) queries per sample.")
    ] = D["queries"],
    eot: Annotated[int, typer.Option(help="EOT draws on randomized heads.")] = D["eot"],
    batch_size: Annotated[int, typer.Option(help="Images per batch (kept as a part).")] = D[
        "batch_size"
    ],
    data_dir: DataDirOpt = D["data_dir"],
    seed: SeedOpt = D["seed"],
    device: DeviceOpt = D["device"],
    force: ForceOpt = D["force"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Sanity checks: gradient masking and failed attacks (Carlini et al. 2019, AutoAttack).

    Runs a small attack set on the run's seeded evaluation samples and reports per check
    pass / warn / fail with the measured value and its threshold: iterative vs single-step,
    more budget, silent success and incomplete optimization (from a loss trace of PGD kept
    by loss), a large eps and the eps sweep, RayS on the decision (and --surrogate
    transfer) vs the white-box attacks per sample, zero input gradients per surface,
    randomness and, with --baseline, that the attacks break an undefended model. Exits 0
    whatever the statuses.
    """
    options = dict(locals())
    with reporter() as progress:
        df = api.check(**options, progress=progress)
    print_table(df)
    cached_note(df, artifacts)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.2f}" if abs(float(value)) >= 1e-3 or value == 0 else f"{value:.1e}"


def print_table(df: Any) -> None:
    """One table per stored check result: check, coloured status, value, threshold, detail."""
    for _, rows in results_of(df):
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
    for path in new_files(df):
        console.print(f"[dim]wrote[/dim] {path}")
