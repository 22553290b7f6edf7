"""``dml run RECIPE``: the whole pipeline of a recipe, resumable step by step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from dmlcli.cli import recipes as rc
from dmlcli.cli.common import ArtifactsOpt, DeviceOpt, console, flag, summary
from dmlcli.errors import DmlError
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
        bool, flag("Print the plan (what exists, what will run).", "--dry-run")
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder with the dataset's files (overrides the recipe).")
    ] = None,
    device: DeviceOpt = "",
    artifacts: ArtifactsOpt = None,
) -> None:
    """Run a recipe: train, attack, transfer, CLEVER, certify, detect and report.

    Finished steps are skipped, so a rerun resumes where the last one stopped.
    """
    spec = rc.load_recipe(recipe)
    root = Store(artifacts).root
    if data_dir is not None and not data_dir.is_dir():
        raise DmlError(f"--data-dir {data_dir} is not a directory")
    steps = rc.plan(spec, root, data_dir=data_dir, device=device or None)
    selected = _select(steps, only or [], spec)

    title = f"recipe {spec.name} ({spec.dataset}) -> {root}"
    if spec.expect:
        console.print(f"[dim]{spec.expect}[/dim]")
    rows = []
    for step in steps:
        if step not in selected:
            state = "[dim]not selected[/dim]"
        else:
            state = _STATUS.get(step.status, step.status)
        rows.append((step.id, state, step.note or step.short))
    summary(f"plan: {title}", ["step", "status", "command"], rows)
    if dry_run:
        return

    rc.save_recipe_json(root, spec)
    ran_any = False
    done_rows = []
    for step in steps:
        if step not in selected:
            continue
        if step.status in ("unavailable", "blocked"):
            done_rows.append((step.id, "skipped", step.note, ""))
            continue
        must = step.status in ("run", "changed") or (
            step.stage == "report" and (ran_any or bool(only))
        )
        if not must:
            done_rows.append((step.id, "done earlier", "", ""))
            continue
        console.rule(f"[bold]{step.id}[/bold]: {step.shell}")
        before = rc.snapshot(root)
        began = time.perf_counter()
        rc.run_step(step)
        seconds = time.perf_counter() - began
        marker = rc.write_marker(root, spec, step, seconds, before)
        ran_any = True
        done_rows.append((step.id, "ran", f"{seconds:.1f} s", str(marker)))
    console.rule()
    report_dir = Store(root).report_dir()
    files = [p for p in (report_dir / "report.md", report_dir / "report.html") if p.is_file()]
    summary(f"recipe {spec.name}: steps", ["step", "status", "time", "marker"], done_rows, files)


def _select(steps: list, only: list[str], recipe) -> list:
    """The steps named by ``--only`` (stage, train key or step id/prefix); all if empty."""
    if not only:
        return list(steps)
    chosen = []
    for name in only:
        hits = [
            s
            for s in steps
            if s.stage == name
            or s.id == name
            or s.id == f"train-{name}"
            or s.id.startswith(name + "-")
        ]
        if not hits:
            ids = ", ".join(s.id for s in steps)
            raise DmlError(
                f"--only {name!r} matches no step; use a stage ({', '.join(rc.STAGES)}) or a step "
                f"id ({ids})"
            )
        chosen += [s for s in hits if s not in chosen]
    return [s for s in steps if s in chosen]
