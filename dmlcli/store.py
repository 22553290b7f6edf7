"""The artifacts directory and its layout. Every path of the store is built here, every write
is atomic, every read is validated.

Layout::

    artifacts/
      models/<run>/model.safetensors      all members + the run configuration (JSON metadata)
      models/<run>/history.parquet        per-epoch training history
      models/<run>/resume.safetensors     last epoch/step checkpoint for --resume
      models/<run>/spec.json              a user's ensemble: where its model spec is, its digest
      results/<run>/<kind>-<key>.parquet  one row per (sample, setting, scored model)
      results/<run>/.parts/<kind>-<key>/  finished batches of a result in progress
      results/<run>/.lock                 held while the run's worst cases are rebuilt
      recipes/<recipe>/recipe.json        a recipe as dml run read it (roles, paper numbers)
      recipes/<recipe>/<step>.json        marker of a finished recipe step
      report/                             dml report's output
      exports/<run>/                      dml export's files (CSV, AutoAttack log, TSV, ...)

``<key>`` is a short hash of the result's setting (its identity: checkpoint digest, attack,
budgets, samples, seed, ...) and of its schema version. The store knows files, not models:
it reads and writes tensors and tables (:mod:`dmlcli.files`) and checks result tables
against their schema (:mod:`dmlcli.results`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli import results
from dmlcli.errors import DmlError
from dmlcli.files import (
    atomic_write_json,
    file_lock,
    now,
    read_parquet,
    read_parquet_meta,
    versions,
    write_parquet,
)

MODEL_FILE, HISTORY_FILE, RESUME_FILE = "model.safetensors", "history.parquet", "resume.safetensors"
SPEC_RECORD = "spec.json"
PARTS_DIR = ".parts"
LOCK_FILE = ".lock"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SEED_RUN = re.compile(r"-seed(\d+)$")


def default_root() -> Path:
    """``$DML_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("DML_ARTIFACTS", "artifacts"))


def validate_name(name: str) -> str:
    """A run name that cannot escape the store: letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME.match(name) or ".." in name:
        raise DmlError(
            f"bad run name {name!r}: use letters, digits, '.', '_' and '-' (no '..', no '/')"
        )
    return name


def setting_key(kind: str, setting: dict[str, Any]) -> str:
    """Short stable hash of a result's setting and its kind's schema version."""
    body = {"setting": setting, "schema_version": results.schema(kind).version}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


class Store:
    """An artifacts directory (see the module docstring for its layout)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- runs ----------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        return self.root / "models" / validate_name(name)

    def checkpoint_path(self, name: str) -> Path:
        return self.run_dir(name) / MODEL_FILE

    def history_path(self, name: str) -> Path:
        return self.run_dir(name) / HISTORY_FILE

    def resume_path(self, name: str) -> Path:
        return self.run_dir(name) / RESUME_FILE

    def has_run(self, name: str) -> bool:
        return self.checkpoint_path(name).is_file()

    def spec_record_path(self, name: str) -> Path:
        return self.run_dir(name) / SPEC_RECORD

    def record_spec(self, name: str, record: dict[str, Any]) -> None:
        """Remember a model spec's run (``spec`` path, ``dataset``, ``members``, ``checkpoint``
        digest, ...): its name then works like a trained run's, and the report lists it."""
        if self.has_run(name):
            raise DmlError(
                f"model spec name {name!r} is a run trained by dml in {self.root}; rename one"
            )
        atomic_write_json(self.spec_record_path(name), {**record, "recorded": now()})

    def spec_record(self, name: str) -> dict[str, Any] | None:
        """The record of spec run ``name``, or None (not a spec run, or unreadable)."""
        path = self.spec_record_path(name)
        try:
            body = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return body if isinstance(body, dict) and isinstance(body.get("spec"), str) else None

    def list_spec_runs(self) -> list[str]:
        """Names of the model-spec runs recorded in the store."""
        models = self.root / "models"
        if not models.is_dir():
            return []
        return sorted(p.parent.name for p in models.glob(f"*/{SPEC_RECORD}"))

    def list_runs(self) -> list[str]:
        models = self.root / "models"
        if not models.is_dir():
            return []
        return sorted(p.parent.name for p in models.glob(f"*/{MODEL_FILE}"))

    @staticmethod
    def seed_run(group: str, seed: int) -> str:
        """The run of ``seed`` in a group from ``dml train --seeds``: ``<group>-seed<s>``."""
        return validate_name(f"{group}-seed{seed}")

    @staticmethod
    def group_of(run: str) -> str:
        """The group of a seed run (``<group>-seed<s>`` -> ``<group>``); other runs are their
        own group."""
        return _SEED_RUN.sub("", run)

    def group_runs(self, group: str) -> dict[int, str]:
        """Seed -> run of the group ``group`` (runs named ``<group>-seed<s>``), by seed; empty
        when ``group`` is a run, a model spec's name or a path."""
        if not _NAME.match(group) or self.has_run(group) or self.spec_record(group) is not None:
            return {}
        found = {
            int(m.group(1)): name
            for name in self.list_runs()
            if (m := _SEED_RUN.search(name)) and name[: m.start()] == group
        }
        return dict(sorted(found.items()))

    def resolve(self, ref: str | Path) -> tuple[str, Path]:
        """A run name, a run folder or a ``.safetensors`` file -> (run name, checkpoint file);
        the name of a recorded model spec -> (its name, the spec file).

        The run name of a checkpoint outside the store is its folder's name when the file is
        called ``model.safetensors``, else the file's stem.
        """
        path = Path(ref)
        if path.suffix == ".safetensors":
            if not path.is_file():
                raise DmlError(f"checkpoint {path} does not exist")
            name = path.parent.name if path.name == MODEL_FILE else path.stem
            return validate_name(name), path
        if path.is_dir() and (path / MODEL_FILE).is_file():
            return validate_name(path.name), path / MODEL_FILE
        if path.is_dir():
            raise DmlError(f"{path} holds no {MODEL_FILE}")
        name = str(ref)
        record = self.spec_record(name) if _NAME.match(name) else None
        if record is not None:  # a user's ensemble, by the name its spec gave it
            return name, Path(record["spec"])
        if not self.checkpoint_path(name).is_file():
            runs = ", ".join([*self.list_runs(), *self.list_spec_runs()][:8]) or "none yet"
            group = self.group_runs(name)
            if group:
                raise DmlError(
                    f"{ref!r} is a group of seeds ({', '.join(group.values())}); "
                    "name one run, or use a command that takes a group (attack, compare)"
                )
            raise DmlError(f"no run named {ref!r} in {self.root} (runs: {runs})")
        return name, self.checkpoint_path(name)

    # -- results -------------------------------------------------------------------------
    def results_dir(self, run: str) -> Path:
        return self.root / "results" / validate_name(run)

    def result_path(self, kind: str, run: str, setting: dict[str, Any]) -> Path:
        return self.results_dir(run) / f"{kind}-{setting_key(kind, setting)}.parquet"

    def parts_dir(self, kind: str, run: str, setting: dict[str, Any]) -> Path:
        """Where the batches of the result ``result_path(kind, run, setting)`` are kept."""
        return self.results_dir(run) / PARTS_DIR / f"{kind}-{setting_key(kind, setting)}"

    def pending_parts(self, runs: list[str] | tuple[str, ...] = ()) -> list[Path]:
        """Part folders holding a manifest, of ``runs`` (every run when empty)."""
        base = self.root / "results"
        folders = sorted(p.parent for p in base.glob(f"*/{PARTS_DIR}/*/manifest.json"))
        if runs:
            folders = [f for f in folders if f.parent.parent.name in runs]
        return folders

    def lock(self, run: str):
        """A context holding ``run``'s results lock (``results/<run>/.lock``): rebuilds of
        derived results (the worst case) run under it, so two processes never interleave."""
        return file_lock(self.results_dir(run) / LOCK_FILE)

    def write_result(
        self,
        kind: str,
        run: str,
        setting: dict[str, Any],
        df: pd.DataFrame,
        extra: dict | None = None,
    ) -> Path:
        """Atomically store result rows of ``kind`` (cast to its schema) with their setting,
        schema version, library versions and command line."""
        path = self.result_path(kind, run, setting)
        meta = {
            **(extra or {}),
            "kind": kind,
            "run": run,
            "setting": setting,
            "schema_version": results.schema(kind).version,
            "versions": versions(),
            "command": " ".join(sys.argv),
            "created": now(),
        }
        write_parquet(path, results.frame(kind, df), meta)
        return path

    def read_result(self, path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Rows and metadata of a stored result, checked against its kind's schema."""
        df, meta = read_parquet(path)
        kind = meta.get("kind")
        if kind not in results.SCHEMAS:
            raise DmlError(f"{path} is not a dml result (kind {kind!r})")
        return results.check(kind, df, meta, str(path)), meta

    def result_meta(self, path: Path) -> dict[str, Any]:
        """The metadata of a stored result (its rows unread), checked for a known schema."""
        meta = read_parquet_meta(path)
        kind = meta.get("kind")
        if kind not in results.SCHEMAS:
            raise DmlError(f"{path} is not a dml result (kind {kind!r})")
        version = results.schema(kind).version
        if meta.get("schema_version") != version:
            raise DmlError(
                f"{path}: result schema version {meta.get('schema_version')} ({kind}); this "
                f"dml reads version {version}: recompute it (--force) or delete it"
            )
        return meta

    def list_results(self, kind: str | None = None, run: str | None = None) -> list[Path]:
        """Result files (of ``kind``, of ``run``), in path order."""
        base = self.root / "results"
        if not base.is_dir():
            return []
        folder = validate_name(run) if run else "*"
        return sorted(base.glob(f"{folder}/{kind + '-' if kind else ''}*.parquet"))

    # -- recipes and the report ------------------------------------------------------------
    def recipe_dir(self, recipe: str) -> Path:
        return self.root / "recipes" / validate_name(recipe)

    def recipe_file(self, recipe: str) -> Path:
        return self.recipe_dir(recipe) / "recipe.json"

    def marker_file(self, recipe: str, step: str) -> Path:
        return self.recipe_dir(recipe) / f"{step}.json"

    def list_recipe_files(self) -> list[Path]:
        return sorted((self.root / "recipes").glob("*/recipe.json"))

    def export_dir(self, run: str) -> Path:
        return self.root / "exports" / validate_name(run)

    def report_dir(self) -> Path:
        return self.root / "report"

    def result_files_snapshot(self) -> dict[str, int]:
        """Result files (relative paths) and their modification times (what a step wrote)."""
        return {str(p.relative_to(self.root)): p.stat().st_mtime_ns for p in self.list_results()}
