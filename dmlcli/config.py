"""Resolving a run's configuration: every choice that defines an ensemble, in one dict.

The resolved dict is stored as JSON in the checkpoint's metadata and is all
:class:`~dmlcli.models.ensemble.Ensemble` needs to rebuild the model.
"""

from __future__ import annotations

import math
from typing import Any

from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.models.backbones import list_backbones
from dmlcli.models.dml import HEADS, member_permutations, partition


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DmlError(message)


def resolve_config(
    dataset: str,
    members: int = 5,
    head: str = "dml",
    backbone: str | None = None,
    image_size: int | None = None,
    m_mode: str = "diag",
    m_init: str = "uniform",
    m_fixed: float = 0.1,
    centers: str = "identity",
    diversity: str = "split",
    head_samples: int = 20,
    head_sigma: float = 0.1,
    gamma: float = 0.01,
    beta: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """Validate the choices and fill in everything derived from them.

    ``diversity='split'`` gives each member a disjoint trainable set ``I_k`` (Section 3.3);
    ``'scaling'`` uses ``M_k = s_k I`` with ``s_k = 0.1 (k + 1)`` and no split (A.9.1).
    """
    info = dataset_info(dataset)
    backbone = backbone or info.backbone
    _check(
        backbone in list_backbones(),
        f"unknown backbone {backbone!r}; choose one of {', '.join(list_backbones())}",
    )
    _check(head in HEADS, f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    _check(members >= 2, f"an ensemble needs at least 2 members; got --members {members}")
    _check(members <= 64, f"--members {members} is more than this tool supports (64)")
    for name, value in (("gamma", gamma), ("beta", beta), ("m-fixed", m_fixed)):
        _check(math.isfinite(value) and value >= 0, f"--{name} must be a finite number >= 0")
    _check(m_mode in ("diag", "full"), f"unknown --m-mode {m_mode!r}; choose diag or full")
    _check(m_init in ("uniform", "fixed"), f"unknown --m-init {m_init!r}; choose uniform or fixed")
    _check(centers in ("identity", "1d"), f"unknown --centers {centers!r}; choose identity or 1d")
    _check(
        diversity in ("split", "scaling"),
        f"unknown --diversity {diversity!r}; choose split or scaling",
    )
    _check(head_samples >= 1, "--head-samples must be at least 1")
    _check(math.isfinite(head_sigma) and head_sigma >= 0, "--head-sigma must be >= 0")
    size = image_size or info.image_size
    _check(size >= 8, f"--image-size must be at least 8; got {size}")
    c = info.num_classes
    dml = head != "linear"
    if dml and diversity == "split":
        sets = partition(c, members)
    else:
        sets = [[] for _ in range(members)]
    return {
        "dataset": dataset,
        "backbone": backbone,
        "in_channels": info.channels,
        "image_size": size,
        "num_classes": c,
        "mean": list(info.mean),
        "std": list(info.std),
        "members": members,
        "head": head,
        "m_mode": m_mode,
        "m_init": m_init,
        "m_fixed": m_fixed,
        "centers": centers,
        "diversity": diversity,
        "scales": [0.1 * (k + 1) for k in range(members)]
        if dml and diversity == "scaling"
        else None,
        "permutations": member_permutations(c, members, seed) if dml else None,
        "trainable_sets": sets,
        "head_samples": head_samples,
        "head_sigma": head_sigma,
        "gamma": gamma if dml else 0.0,
        "beta": beta if dml else 0.0,
        "seed": seed,
    }
