"""What every API function shares: how a list option is read, how outcomes become one
DataFrame (``attrs['results']``), the evaluation subset of a run's test split, and the
checks of ``--batch-size`` and ``--decision``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from dmlcli.data import eval_set
from dmlcli.errors import DmlError
from dmlcli.models.aggregate import list_decisions
from dmlcli.models.io import Run
from dmlcli.runner import Outcome

PathLike = str | Path  # a path option: a string or a Path


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """A list option as a list: ``None`` is empty, one string (or path) is a list of one."""
    if value is None:
        return []
    return [value] if isinstance(value, str | Path) else list(value)


def rows_of(outcomes: Sequence[Outcome]) -> pd.DataFrame:
    """The rows of every outcome, one frame; ``attrs['results']`` says which is which."""
    frames, info, at = [], [], 0
    for o in outcomes:
        frames.append(o.rows)
        info.append(
            {
                "kind": o.job.kind,
                "run": o.job.run,
                "label": o.job.label,
                "path": str(o.path),
                "status": o.status,
                "rows": [at, at + len(o.rows)],
                "warnings": list(o.meta.get("warnings", [])),
                "meta": o.meta,
            }
        )
        at += len(o.rows)
    nonempty = [f for f in frames if len(f.columns)]
    df = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame()
    df.attrs["results"] = info
    return df


def eval_subset(
    run: Run, n: int, seed: int, data_dir: PathLike | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The test split of ``run``'s dataset and its seeded evaluation subset: (x uint8, y,
    indices), as :func:`dmlcli.data.eval_set`."""
    return eval_set(run.dataset, n, seed, data_dir or run.data_dir, image_size=run.image_size)


def check_batch(batch_size: int) -> None:
    """Refuse a ``--batch-size`` below 1 (one line, before anything runs)."""
    if batch_size < 1:
        raise DmlError(f"--batch-size must be at least 1; got {batch_size}")


def check_decision(decision: str, members: int) -> None:
    """Refuse a ``--decision`` that is not a decision rule of a ``members``-member ensemble."""
    choices = list_decisions(members)
    if decision not in choices:
        raise DmlError(f"unknown decision {decision!r}; choose one of {', '.join(choices)}")
