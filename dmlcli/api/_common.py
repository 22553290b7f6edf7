"""What every API function shares: where and how a call runs (:class:`RunContext`), the
evaluation subset of a run's test split, the check of ``--decision``, and swapping a run's
DML head (``--head``)."""

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


def check_decision(decision: str, members: int) -> None:
    """Refuse a ``--decision`` that is not a decision rule of a ``members``-member ensemble."""
    choices = list_decisions(members)
    if decision not in choices:
        raise DmlError(f"unknown decision {decision!r}; choose one of {', '.join(choices)}")


def check_head_swap(head: str | None, sigma: float | None, samples: int | None) -> None:
    """Refuse ``--head-sigma``/``--head-samples`` without the ``--head`` they configure."""
    if (sigma is not None or samples is not None) and head is None:
        raise DmlError("--head-sigma/--head-samples only apply with --head dml|rdml|augdml")


def with_head(r: Run, head: str | None, sigma: float | None, samples: int | None) -> Run:
    """``r``, or with ``head`` a copy of it whose DML head is swapped (noise ``sigma``,
    ``samples`` Monte-Carlo draws); the same weights, so the same checkpoint."""
    if head is None:
        return r
    if not hasattr(r.model, "with_head"):
        raise DmlError(f"--head: {r.name} has no DML head to swap")
    model = r.model.with_head(head, sigma, samples)
    return Run(r.name, model, r.checkpoint, r.dataset, r.meta, r.path)
