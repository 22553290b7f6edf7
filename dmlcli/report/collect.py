"""Read an artifacts store into tidy pieces for the report: runs, histories, results, recipes.

Nothing is recomputed and nothing is unpickled: checkpoints contribute only their JSON
metadata (configuration, benign accuracy), results are the parquet files the other commands
wrote, read and checked through their schema (:mod:`dmlcli.results`), and recipes are the
JSON copies ``dml run`` stored under ``ARTIFACTS/recipes/``. Unreadable files, and results of
another schema version, are listed in :attr:`Collection.problems` and otherwise ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli.data import DATASETS
from dmlcli.errors import DmlError
from dmlcli.eval.robustness import stored_worst_case_key, worst_case_plan
from dmlcli.files import read_parquet, read_tensor_digest
from dmlcli.models.config import EnsembleConfig
from dmlcli.models.io import checkpoint_config
from dmlcli.models.spec import config_of, read_spec, spec_digest
from dmlcli.results import worst_case
from dmlcli.store import Store

#: Display names of the model roles (a recipe's [train] keys, else inferred from the head).
ROLE_LABELS = {
    "baseline": "Baseline",
    "dml": "DML Ensemble",
    "rdml": "R-DML Ensemble",
    "augdml": "AUG-DML Ensemble",
}


@dataclass
class RunInfo:
    """A trained run: its configuration and benign accuracy (checkpoint metadata)."""

    name: str
    config: EnsembleConfig
    benign: dict[str, float]
    saved: str = ""
    digest: str = ""  # SHA-256 of the checkpoint's tensors: results of others are stale
    history: pd.DataFrame | None = None
    role: str = ""
    label: str = ""

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def head(self) -> str:
        return self.config.head

    @property
    def members(self) -> int:
        return self.config.members

    @property
    def backbone(self) -> str:
        return self.config.backbone

    @property
    def is_baseline(self) -> bool:
        return self.head == "linear"

    @property
    def defense(self) -> str:
        """How it was trained (:attr:`EnsembleConfig.defense`)."""
        return self.config.defense

    @property
    def group(self) -> str:
        """Its group of seeds (``dml train --seeds``), or its own name."""
        return Store.group_of(self.name)


@dataclass
class Result:
    """One result parquet: its kind, run, stored setting/metadata, and rows (read lazily)."""

    kind: str
    run: str
    path: Path
    meta: dict[str, Any]
    store: Store
    #: Rows computed from other results instead of read (a worst case whose stored file
    #: is not built from the current attack results: see :func:`_current_worst_cases`).
    derive: Callable[[], pd.DataFrame] | None = None

    @property
    def setting(self) -> dict[str, Any]:
        return self.meta.get("setting", {}) or {}

    @cached_property
    def df(self) -> pd.DataFrame:
        if self.derive is not None:
            return self.derive()
        return self.store.read_result(self.path)[0]


@dataclass
class Collection:
    """Everything the report reads from a store."""

    root: Path
    runs: dict[str, RunInfo] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    recipes: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def datasets(self) -> list[str]:
        """Datasets with at least one run, in the registry's order."""
        present = {r.dataset for r in self.runs.values()}
        present |= {self.dataset_of(r) for r in self.results} - {None}
        return [d for d in DATASETS if d in present] + sorted(present - set(DATASETS))

    def runs_of(self, dataset: str) -> list[RunInfo]:
        """Runs of ``dataset``: baseline first, then DML, R-DML, AUG-DML, others by name."""
        order = {"baseline": 0, "dml": 1, "rdml": 2, "augdml": 3}
        runs = [r for r in self.runs.values() if r.dataset == dataset]
        return sorted(runs, key=lambda r: (order.get(r.role, 9), r.name))

    def dataset_of(self, result: Result) -> str | None:
        if result.run in self.runs:
            return self.runs[result.run].dataset
        ds = result.meta.get("dataset") or result.setting.get("dataset")
        return str(ds) if ds else None

    def of(self, kind: str, dataset: str | None = None) -> list[Result]:
        """Results of ``kind`` (for ``dataset``) in run order, then file order."""
        out = [r for r in self.results if r.kind == kind]
        if dataset is not None:
            out = [r for r in out if self.dataset_of(r) == dataset]
        order = {name: i for i, name in enumerate(self.runs)}
        return sorted(out, key=lambda r: (order.get(r.run, 1 << 30), str(r.path)))

    def label(self, run: str) -> str:
        return self.runs[run].label if run in self.runs else run

    def recipe_for(self, dataset: str) -> dict[str, Any] | None:
        """The (latest stored) recipe of ``dataset``, with its paper numbers and roles."""
        mine = [r for r in self.recipes if r.get("dataset") == dataset]
        return mine[-1] if mine else None

    def paper(self, dataset: str) -> dict[str, Any]:
        recipe = self.recipe_for(dataset)
        return (recipe or {}).get("paper", {}) or {}

    def run_of_role(self, dataset: str, role: str) -> str | None:
        for r in self.runs_of(dataset):
            if r.role == role:
                return r.name
        return None


def _infer_role(run: RunInfo) -> str:
    """A run's role from how it was trained: ``baseline``, ``dml``/``rdml``/``augdml`` (its
    head), or the competing defense (``adp``, ``gal``, ``trs``, ``dverge``, ``mmc``)."""
    return run.head if run.defense == "dml" else run.defense


def collect(store: Store) -> Collection:
    """Read ``store`` (raises :class:`DmlError` if it is not a store)."""
    root = store.root
    if not root.is_dir():
        raise DmlError(f"artifacts directory {root} does not exist")
    if not (root / "models").is_dir() and not (root / "results").is_dir():
        raise DmlError(f"{root} holds no models/ or results/: not a dml artifacts directory")
    col = Collection(root)
    for path in store.list_recipe_files():
        try:
            col.recipes.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            col.problems.append(f"{path}: unreadable recipe ({exc})")
    col.recipes.sort(key=lambda r: str(r.get("name", "")))
    roles: dict[str, str] = {}
    for recipe in col.recipes:
        for role, run in (recipe.get("roles") or {}).items():
            roles[run] = role
    for name in store.list_runs():
        try:
            config, meta = checkpoint_config(store.checkpoint_path(name))
            digest = read_tensor_digest(store.checkpoint_path(name))
        except DmlError as exc:
            col.problems.append(str(exc))
            continue
        benign = dict(meta.get("benign") or {})
        run = RunInfo(name, config, benign, str(meta.get("saved", "")), digest)
        hist = store.history_path(name)
        if hist.is_file():
            try:
                run.history = read_parquet(hist)[0]
            except DmlError as exc:
                col.problems.append(str(exc))
        col.runs[name] = run
    for name in store.list_spec_runs():  # users' ensembles (model specs) used in this store
        record = store.spec_record(name)
        try:
            if record is None:
                raise DmlError(f"{store.spec_record_path(name)}: unreadable spec record")
            digest = spec_digest(read_spec(record["spec"]))  # the files as they are now
            config = config_of(record)
        except (DmlError, KeyError, ValueError) as exc:
            col.problems.append(f"{name}: {exc}")
            continue
        col.runs[name] = RunInfo(name, config, {}, str(record.get("recorded", "")), digest)
    taken = {(col.runs[r].dataset, role) for r, role in roles.items() if r in col.runs}
    for name, run in col.runs.items():
        if name in roles or run.group in roles:  # a recipe's run, or one of its seeds
            run.role = roles.get(name) or roles[run.group]
        else:  # not in a recipe: its training says what it is, unless a recipe run has that role
            role = _infer_role(run)
            run.role = "" if (run.dataset, role) in taken else role
    _label_runs(col)
    for path in store.list_results():
        try:
            meta = store.result_meta(path)
        except DmlError as exc:
            col.problems.append(str(exc))
            continue
        run_name = str(meta["run"])
        checkpoint = (meta.get("setting") or {}).get("checkpoint")
        if run_name in col.runs and checkpoint != col.runs[run_name].digest:
            col.problems.append(f"{path}: stale (computed from another checkpoint of {run_name})")
            continue
        col.results.append(Result(meta["kind"], run_name, path, meta, store))
    _current_worst_cases(col)
    return col


def _current_worst_cases(col: Collection) -> None:
    """Stored worst cases not built from exactly the current attack results of their run
    (an attack or a merge since, by an older dml) are recomputed in memory, by the rule the
    store uses (:func:`~dmlcli.eval.robustness.worst_case_plan`), and noted in
    :attr:`Collection.problems`; the store is not written."""
    by_run: dict[str, dict[str, Result]] = {}
    for r in col.of("attack"):
        by_run.setdefault(r.run, {})[f"{r.path.name}@{r.meta.get('created')}"] = r
    plans = {
        run: worst_case_plan([(c, r.setting) for c, r in attacks.items()])
        for run, attacks in by_run.items()
    }
    for res in col.of("worst-case"):
        key = stored_worst_case_key(res.setting)
        components = plans.get(res.run, {}).get(key)
        if components is None or components == res.meta.get("components"):
            continue
        attacks = by_run[res.run]
        res.derive = lambda c=components, a=attacks, e=key[0]: worst_case([a[x].df for x in c], e)
        res.meta = {**res.meta, "components": components, "attacks": len(components)}
        col.problems.append(
            f"{res.path}: worst case older than the attack results of {res.run}; recomputed "
            "for this report (dml attack or dml merge refreshes the stored one)"
        )


def _label_runs(col: Collection) -> None:
    """Readable, unique labels per dataset: 'Baseline', 'DML Ensemble', else the run name."""
    by_key: dict[tuple[str, str], list[RunInfo]] = {}
    for run in col.runs.values():
        by_key.setdefault((run.dataset, run.role), []).append(run)
    for (_, role), runs in by_key.items():
        for run in runs:
            base = ROLE_LABELS.get(role)
            if base is None:
                run.label = run.name
            elif len(runs) == 1:
                run.label = base
            else:
                run.label = f"{base} ({run.name})"
