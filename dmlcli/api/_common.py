"""What every API function shares: where and how a call runs (:class:`RunContext`), the
evaluation subset of a run's test split, and the checks of ``--batch-size`` and
``--decision``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dmlcli.api.settings import Common
from dmlcli.api.settings import as_list as as_list
from dmlcli.data import eval_set
from dmlcli.errors import DmlError
from dmlcli.models.aggregate import list_decisions
from dmlcli.models.io import Run
from dmlcli.runner import Reporter
from dmlcli.runtime import Shard, parse_shard, resolve_device
from dmlcli.store import Store

PathLike = str | Path  # a path option: a string or a Path


@dataclass(frozen=True)
class RunContext:
    """Where and how one API call runs: the store, the device, the seed, whether to
    recompute stored results, which shard of the parts to compute, and the progress bars."""

    store: Store
    device: torch.device
    seed: int
    force: bool
    shard: Shard | None
    progress: Reporter | None

    @classmethod
    def of(cls, s: Common, progress: Reporter | None = None) -> RunContext:
        """The context of settings ``s`` (its ``shard``, if the command has one)."""
        shard = parse_shard(getattr(s, "shard", None))
        return cls(Store(s.artifacts), resolve_device(s.device), s.seed, s.force, shard, progress)


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
