"""Recipes: one TOML file per dataset -> the ordered API calls that reproduce the paper.

A recipe is a plan of :mod:`dmlcli.api` calls, checked against their signatures before
anything runs (:mod:`~dmlcli.recipes.schema`, :mod:`~dmlcli.recipes.calls`), expanded into
steps with their command lines and done-or-not status (:mod:`~dmlcli.recipes.plan`) and run
step by step, resumably (:mod:`~dmlcli.recipes.execute`)::

    from dmlcli import recipes

    recipes.run("recipes/digits.toml", artifacts="artifacts")
"""

from __future__ import annotations

from dmlcli.recipes.calls import EVAL_STAGES, STAGES, Signature, available, signature
from dmlcli.recipes.execute import Prepared, StepOutcome, execute, prepare, run, run_step, select
from dmlcli.recipes.plan import (
    Step,
    marker_path,
    plan,
    read_marker,
    save_recipe_json,
    snapshot,
    step_status,
    write_marker,
)
from dmlcli.recipes.schema import Recipe, load_recipe, validate_recipe

__all__ = [
    "EVAL_STAGES",
    "STAGES",
    "Prepared",
    "Recipe",
    "Signature",
    "Step",
    "StepOutcome",
    "available",
    "execute",
    "load_recipe",
    "marker_path",
    "plan",
    "prepare",
    "read_marker",
    "run",
    "run_step",
    "save_recipe_json",
    "select",
    "signature",
    "snapshot",
    "step_status",
    "validate_recipe",
    "write_marker",
]
