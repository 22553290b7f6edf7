"""What several test modules build: tiny ensembles, result rows made through the schema,
an in-process CLI runner and file-tree fingerprints. (Fixtures live in conftest.py.)"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmlcli import results
from dmlcli.models.config import resolve_config
from dmlcli.models.ensemble import Ensemble


def tiny_ensemble(head: str = "dml", members: int = 3, seed: int = 0, **kw: Any) -> Ensemble:
    """An untrained digits ensemble (small CNN, 8x8x1 inputs, 10 classes) in eval mode."""
    return Ensemble(resolve_config("digits", members=members, head=head, seed=seed, **kw)).eval()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys: Any, *args: Any) -> CliResult:
    """Run ``dml ARGS...`` in-process: exit code, stdout and stderr."""
    from dmlcli.cli.app import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def tree_listing(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> sha256 (``dir`` for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def attack_rows(
    robust: Sequence[bool],
    *,
    clean: Sequence[bool] | None = None,
    attack: str = "pgd-10",
    eps: float | None = 0.2,
    run: str = "run",
    surface: str = "sum",
    decision: str = "vote",
    suite: str = "paper",
    members: int = 2,
    samples: Sequence[int] | None = None,
    seed: int = 0,
    **settings: Any,
) -> pd.DataFrame:
    """Rows of an ``attack`` result with the given per-sample outcomes (schema-checked)."""
    n = len(robust)
    clean = [True] * n if clean is None else list(clean)
    robust = [bool(r) and bool(c) for r, c in zip(robust, clean, strict=True)]
    labels = np.arange(n) % 10
    wrong = (labels + 1) % 10
    adv = np.where(robust, labels, wrong)
    row: dict[str, Any] = {
        "run": run,
        "checkpoint": "0" * 64,
        "dataset": "digits",
        "sample": list(samples) if samples is not None else list(range(n)),
        "label": labels,
        "attack": attack,
        "suite": suite,
        "norm": "linf" if eps is not None else "l2",
        "eps": eps,
        "steps": 10,
        "step_size": None,
        "restarts": 1,
        "targeted": False,
        "loss": "ce",
        "surface": surface,
        "decision": decision,
        "eot": 1,
        "seed": seed,
        "surrogate": None,
        "cascade": False,
        "target": -1,
        "clean_pred": np.where(clean, labels, wrong),
        "adv_pred": adv,
        "clean_correct": clean,
        "adv_correct": robust,
        "robust": robust,
        "skipped_by": "",
        "score_draws": 1,
        "clean_correct_rate": np.asarray(clean, dtype=float),
        "adv_correct_rate": np.asarray(robust, dtype=float),
        "target_hit": False,
        "linf": 0.0 if eps is None else eps,
        "l2": 1.0,
        "seconds": 0.01,
    }
    for k in range(1, members + 1):
        row[f"member_{k}"] = adv
    row.update(settings)
    return results.frame("attack", row)
