"""``dml run RECIPE``: the whole pipeline of a recipe, resumable step by step
(:mod:`dmlcli.recipes` plans and runs it; this module parses options and prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dmlcli import recipes
from dmlcli.api.outcome import Outcome
from dmlcli.api.settings import ARTIFACTS_HELP, DEVICE_HELP
from dmlcli.cli.common import console, reporter, summary
from dmlcli.store import Store

_STATUS = {
    "done": "[green]done[/green] (skipped)",
    "run": "[bold]will run[/bold]",
    "changed": "[yellow]settings changed: will run[/yellow]",
    "unavailable": "[dim]unavailable[/dim]",
    "blocked": "[dim]blocked[/dim]",
}


def command(
    recipe: Annotated[Path, typer.Argument(help="Recipe file, e.g. recipes/digits.toml.")],
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this stage (train, attack, ..., report), train key or step id; "
            "repeatable."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan (what exists, what will run).", metavar=""),
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder with the dataset's files (overrides the recipe).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "",
    artifacts: Annotated[
        Path | None, typer.Option("--artifacts", envvar="DML_ARTIFACTS", help=ARTIFACTS_HELP)
    ] = None,
) -> None:
    """Run a recipe: train, attack, transfer, CLEVER, certify, detect and report.

    Finished steps are skipped, so a rerun resumes where the last one stopped.
    """
    prepared = recipes.prepare(recipe, only, data_dir, device or None, artifacts)
    spec, root = prepared.recipe, prepared.root
    if spec.expect:
        console.print(f"[dim]{spec.expect}[/dim]")
    rows = [
        (
            step.id,
            _STATUS.get(step.status, step.status)
            if step in prepared.selected
            else "[dim]not selected[/dim]",
            step.note or step.short,
        )
        for step in prepared.steps
    ]
    summary(
        f"plan: recipe {spec.name} ({spec.dataset}) -> {root}", ["step", "status", "command"], rows
    )
    if dry_run:
        return
    with reporter() as progress:
        outcomes = recipes.execute(prepared, progress, on_start=_started, on_done=_finished)
    console.rule()
    done_rows = [
        (
            o.step.id,
            o.state,
            o.step.note if o.state == "skipped" else _time(o.seconds),
            o.marker or "",
        )
        for o in outcomes
    ]
    report_dir = Store(root).report_dir()
    files = [p for p in (report_dir / "report.md", report_dir / "report.html") if p.is_file()]
    summary(f"recipe {spec.name}: steps", ["step", "status", "time", "marker"], done_rows, files)


def _started(step: recipes.Step) -> None:
    console.rule(f"[bold]{step.id}[/bold]: {step.shell}")


def _finished(outcome: recipes.StepOutcome) -> None:
    """Say which results a step computed (``dml run`` prints no per-command tables)."""
    result = outcome.result
    for path in result.new_files if isinstance(result, Outcome) else []:
        console.print(f"[dim]wrote[/dim] {path}")


def _time(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f} s"
