"""The typed configuration of an ensemble: every choice that defines one, in one frozen record.

:func:`resolve_config` validates a user's choices and fills in everything derived from them
(centers' permutations, trainable sets ``I_k``, normalization); the result is stored as JSON
in the checkpoint's metadata (:meth:`EnsembleConfig.to_json`) and is all
:class:`~dmlcli.models.ensemble.Ensemble` needs to rebuild the model
(:meth:`EnsembleConfig.from_json` validates it on load).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dmlcli.data import DATASETS, dataset_info
from dmlcli.errors import DmlError
from dmlcli.models.backbones import list_backbones
from dmlcli.models.dml import DML_HEADS, HEADS, member_permutations, partition

M_MODES = ("diag", "full")
M_INITS = ("uniform", "fixed")
CENTERS = ("identity", "1d")
DIVERSITY = ("split", "scaling")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DmlError(message)


@dataclass(frozen=True)
class EnsembleConfig:
    """An ensemble of ``members`` backbones ``G_k`` and one K-member head (Section 3).

    ``head``: ``linear`` (the cross-entropy baseline), ``dml`` (Eq. 2), ``rdml`` (Eq. 4-5),
    ``augdml`` (A.8) or ``mmc`` (Max-Mahalanobis centers of norm ``mmc_norm``, Pang et al.
    2020). ``permutations[k]`` shuffles member k's centers; ``trainable_sets[k]``
    is ``I_k``, the diagonal entries of ``M_k`` it trains (Section 3.3); ``scales`` replaces
    the split by ``M_k = s_k I`` (A.9.1). ``gamma``/``beta`` weigh Eq. 3's orthogonality and
    L1 terms. ``training`` records the optimisation settings and ``prior`` the run whose
    backbones it started from (both informational).
    """

    dataset: str
    backbone: str
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    members: int
    head: str = "dml"
    m_mode: str = "diag"
    m_init: str = "uniform"
    m_fixed: float = 0.1
    centers: str = "identity"
    diversity: str = "split"
    scales: tuple[float, ...] | None = None
    permutations: tuple[tuple[int, ...], ...] | None = None
    trainable_sets: tuple[tuple[int, ...], ...] = field(default=())
    head_samples: int = 20
    head_sigma: float = 0.1
    gamma: float = 0.01
    beta: float = 0.01
    mmc_norm: float = 10.0
    seed: int = 0
    training: dict[str, Any] | None = None
    prior: str | None = None

    @property
    def is_dml(self) -> bool:
        return self.head in DML_HEADS

    @property
    def defense(self) -> str:
        """How it was trained (``dml train --defense``); runs from before that option are
        named by their head: ``linear`` the baseline, ``mmc``, else ``dml``."""
        stored = (self.training or {}).get("defense")
        return str(stored) if stored else {"linear": "baseline", "mmc": "mmc"}.get(self.head, "dml")

    @property
    def randomized(self) -> bool:
        return self.head in ("rdml", "augdml")

    def replace(self, **changes: Any) -> EnsembleConfig:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> EnsembleConfig:
        """Check every field; returns ``self``. A bad value raises one :class:`DmlError`."""
        _check(self.dataset in DATASETS, f"unknown dataset {self.dataset!r}")
        _check(
            self.backbone in list_backbones(),
            f"unknown backbone {self.backbone!r}; choose one of {', '.join(list_backbones())}",
        )
        _check(self.head in HEADS, f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        _check(1 <= self.members <= 64, f"implausible member count {self.members}")
        for name in ("gamma", "beta", "m_fixed", "mmc_norm"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v >= 0, f"--{name.replace('_', '-')} must be >= 0")
        _check(self.m_mode in M_MODES, f"unknown --m-mode {self.m_mode!r}; choose diag or full")
        _check(self.m_init in M_INITS, f"unknown --m-init {self.m_init!r}; choose uniform or fixed")
        _check(
            self.centers in CENTERS, f"unknown --centers {self.centers!r}; choose identity or 1d"
        )
        _check(
            self.diversity in DIVERSITY,
            f"unknown --diversity {self.diversity!r}; choose split or scaling",
        )
        _check(self.head_samples >= 1, "--head-samples must be at least 1")
        _check(
            math.isfinite(self.head_sigma) and self.head_sigma >= 0,
            "--head-sigma must be a finite number >= 0",
        )
        _check(self.image_size >= 8, f"--image-size must be at least 8; got {self.image_size}")
        _check(self.num_classes >= 2, f"implausible class count {self.num_classes}")
        _check(
            len(self.mean) == len(self.std) == self.in_channels,
            "mean and std need one value per input channel",
        )
        _check(len(self.trainable_sets) == self.members, "one trainable set per member")
        if self.is_dml:
            perms = self.permutations or ()
            _check(
                len(perms) == self.members
                and all(sorted(p) == list(range(self.num_classes)) for p in perms),
                "permutations must hold one permutation of the classes per member",
            )
        return self

    # -- JSON -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists); what checkpoints store as ``config``."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std", "scales"):
            if out[key] is not None:
                out[key] = list(out[key])
        for key in ("permutations", "trainable_sets"):
            if out[key] is not None:
                out[key] = [list(v) for v in out[key]]
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "configuration") -> EnsembleConfig:
        """Rebuild and validate a stored configuration (one clear line on anything wrong)."""
        if not isinstance(data, dict):
            raise DmlError(f"{where}: metadata holds no run configuration")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise DmlError(f"{where}: unknown configuration key {unknown[0]!r}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        for name in required:
            if name not in data:
                raise DmlError(f"{where}: configuration lacks {name!r}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            values[name] = _typed(name, value, where)
        try:
            return cls(**values).validate()
        except DmlError as exc:
            raise DmlError(f"{where}: {exc}") from None


_INTS = {"in_channels", "image_size", "num_classes", "members", "head_samples", "seed"}
_FLOATS = {"m_fixed", "head_sigma", "gamma", "beta", "mmc_norm"}
_STRS = {"dataset", "backbone", "head", "m_mode", "m_init", "centers", "diversity"}


def _typed(name: str, value: Any, where: str) -> Any:
    """A stored JSON value as the field's type; a wrong type is one clear line."""

    def bad(kind: str) -> DmlError:
        return DmlError(f"{where}: configuration key {name!r} should be {kind}")

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if name in _INTS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("int")
        return value
    if name in _FLOATS:
        if not number(value):
            raise bad("a number")
        return float(value)
    if name in _STRS:
        if not isinstance(value, str):
            raise bad("str")
        return value
    if name in ("mean", "std") or (name == "scales" and value is not None):
        if not isinstance(value, list) or not all(number(v) for v in value):
            raise bad("a list of numbers")
        return tuple(float(v) for v in value)
    if name in ("permutations", "trainable_sets") and value is not None:
        ok = isinstance(value, list) and all(
            isinstance(v, list) and all(isinstance(i, int) for i in v) for v in value
        )
        if not ok:
            raise bad("a list of lists of integers")
        return tuple(tuple(v) for v in value)
    if name == "training" and value is not None and not isinstance(value, dict):
        raise bad("a table")
    if name == "prior" and value is not None and not isinstance(value, str):
        raise bad("str")
    return value


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
) -> EnsembleConfig:
    """Validate a user's choices and fill in everything derived from them.

    ``diversity='split'`` gives each member a disjoint trainable set ``I_k`` (Section 3.3);
    ``'scaling'`` uses ``M_k = s_k I`` with ``s_k = 0.1 (k + 1)`` and no split (A.9.1).
    """
    info = dataset_info(dataset)
    backbone = backbone or info.backbone
    _check(head in HEADS, f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    _check(
        members >= 2 or head == "mmc",
        f"an ensemble needs at least 2 members; got --members {members} (MMC alone trains one)",
    )
    _check(members <= 64, f"--members {members} is more than this tool supports (64)")
    c = info.num_classes
    dml = head in DML_HEADS
    if dml and diversity == "split":
        sets = partition(c, members)
    else:
        sets = [[] for _ in range(members)]
    return EnsembleConfig(
        dataset=dataset,
        backbone=backbone,
        in_channels=info.channels,
        image_size=image_size or info.image_size,
        num_classes=c,
        mean=tuple(info.mean),
        std=tuple(info.std),
        members=members,
        head=head,
        m_mode=m_mode,
        m_init=m_init,
        m_fixed=m_fixed,
        centers=centers,
        diversity=diversity,
        scales=tuple(0.1 * (k + 1) for k in range(members))
        if dml and diversity == "scaling"
        else None,
        permutations=tuple(tuple(p) for p in member_permutations(c, members, seed))
        if dml
        else None,
        trainable_sets=tuple(tuple(s) for s in sets),
        head_samples=head_samples,
        head_sigma=head_sigma,
        gamma=gamma if dml else 0.0,
        beta=beta if dml else 0.0,
        seed=seed,
    ).validate()
