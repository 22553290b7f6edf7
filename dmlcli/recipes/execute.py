"""Running a recipe: choose its steps, call each step's API function, record what finished.

``prepare`` reads the recipe and plans it (nothing is written), ``execute`` runs the selected
steps that are not done, and :func:`run` does both: the library's one call behind
``dml run``. A step is a plain Python call of ``dmlcli.api.<stage>``, never a re-entry into
the command line.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlcli.errors import DmlError
from dmlcli.recipes import calls
from dmlcli.recipes.calls import STAGES
from dmlcli.recipes.plan import Step, plan, save_recipe_json, snapshot, write_marker
from dmlcli.recipes.schema import Recipe, load_recipe
from dmlcli.runner import Reporter
from dmlcli.store import Store


@dataclass
class Prepared:
    """A recipe planned against a store: every step, and those ``--only`` selected."""

    recipe: Recipe
    root: Path
    steps: list[Step]
    selected: list[Step]
    only: tuple[str, ...] = ()


@dataclass
class StepOutcome:
    """What happened to a selected step: ``ran``, ``done earlier`` or ``skipped``."""

    step: Step
    state: str
    seconds: float | None = None
    marker: Path | None = None
    result: Any = None  # what the API call returned (its typed outcome: dmlcli.api.outcome)


def prepare(
    recipe: str | Path,
    only: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    artifacts: str | Path | None = None,
) -> Prepared:
    """Read, check and plan ``recipe`` against the store ``artifacts`` (nothing is written);
    a bad recipe, ``--data-dir`` or ``--only`` is one :class:`DmlError` line."""
    spec = load_recipe(recipe)
    root = Store(artifacts).root
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DmlError(f"--data-dir {data_dir} is not a directory")
    steps = plan(spec, root, data_dir=data_dir, device=device or None)
    only = tuple(only or ())
    return Prepared(spec, root, steps, select(steps, only), only)


def select(steps: list[Step], only: Sequence[str]) -> list[Step]:
    """The steps named by ``only`` (stage, train key or step id/prefix); all if empty."""
    if not only:
        return list(steps)
    chosen: list[Step] = []
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
                f"--only {name!r} matches no step; use a stage ({', '.join(STAGES)}) or a step "
                f"id ({ids})"
            )
        chosen += [s for s in hits if s not in chosen]
    return [s for s in steps if s in chosen]


def run_step(step: Step, progress: Reporter | None = None) -> Any:
    """Call the step's API function and return what it returns; its failure is one
    :class:`DmlError` naming the step."""
    fn = calls.api_function(step.stage)
    if fn is None or not step.available:
        raise DmlError(f"step {step.id}: dml {step.stage} is not part of this build")
    takes = inspect.signature(fn).parameters
    extra = {"progress": progress} if "progress" in takes else {}
    try:
        return fn(*step.args, **step.kwargs, **extra)
    except DmlError as exc:
        raise DmlError(f"step {step.id} failed: {exc}") from None


def execute(
    prepared: Prepared,
    progress: Reporter | None = None,
    on_start: Callable[[Step], None] | None = None,
    on_done: Callable[[StepOutcome], None] | None = None,
) -> list[StepOutcome]:
    """Run the selected steps that are not done, in order, writing each one's marker; the
    report runs again whenever another step ran (or steps were chosen with ``only``).
    ``on_start`` is told of each step about to run and ``on_done`` of each that ran (the CLI
    prints its command line and the results it wrote)."""
    spec, root = prepared.recipe, prepared.root
    save_recipe_json(root, spec)
    ran_any = False
    out: list[StepOutcome] = []
    for step in prepared.selected:
        if step.status in ("unavailable", "blocked"):
            out.append(StepOutcome(step, "skipped"))
            continue
        must = step.status in ("run", "changed") or (
            step.stage == "report" and (ran_any or bool(prepared.only))
        )
        if not must:
            out.append(StepOutcome(step, "done earlier"))
            continue
        if on_start is not None:
            on_start(step)
        before = snapshot(root)
        began = time.perf_counter()
        result = run_step(step, progress)
        seconds = time.perf_counter() - began
        marker = write_marker(root, spec, step, seconds, before)
        ran_any = True
        out.append(StepOutcome(step, "ran", seconds, marker, result))
        if on_done is not None:
            on_done(out[-1])
    return out


def run(
    recipe: str | Path,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    data_dir: str | Path | None = None,
    device: str | None = None,
    artifacts: str | Path | None = None,
    progress: Reporter | None = None,
) -> list[StepOutcome]:
    """Run a recipe's pipeline (``dml run``): plan it, then run every selected step that is
    not done. With ``dry_run`` nothing runs or is written and every outcome is ``planned``."""
    prepared = prepare(recipe, only, data_dir, device, artifacts)
    if dry_run:
        return [StepOutcome(s, "planned") for s in prepared.selected]
    return execute(prepared, progress)
