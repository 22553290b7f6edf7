"""Attacks, one per module, behind one protocol: ``attack(model, x, y, target=None) -> x_adv``.

``create_attack(name, **params)`` builds one; ``list_attacks()`` names them. ``model`` is any
module mapping pixels in [0, 1] to member logits ``[K, B, C]`` or logits ``[B, C]``, or an
:class:`Objective` (surface + decision + EOT draws). Every attack derives from
:class:`~dmlcli.attacks.base.AttackBase` (the shared call: objective, targets, seeding,
output checks) and takes an optional ``progress=callable(fraction, info)`` keyword. See
:mod:`dmlcli.attacks.base`.

Each name's :class:`AttackEntry` also says how reports show it (display name, report order), so
a new attack is its module plus one entry here: the report reads :func:`attack_entry` and lists
no attack by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dmlcli.attacks.apgd import APGD
from dmlcli.attacks.arc import ARC
from dmlcli.attacks.autoattack import AutoAttack
from dmlcli.attacks.base import (
    Attack,
    AttackBase,
    Objective,
    Trace,
    as_objective,
    random_targets,
)
from dmlcli.attacks.cw import CW
from dmlcli.attacks.fgsm import FGSM
from dmlcli.attacks.losses import create_loss, list_losses
from dmlcli.attacks.mora import MORA
from dmlcli.attacks.pgd import BIM, PGD
from dmlcli.attacks.rays import RayS
from dmlcli.attacks.surfaces import create_surface, list_surfaces
from dmlcli.errors import DmlError
from dmlcli.runtime import seeded

#: Report order of a name the registry does not order: after the paper's attacks (0-7), ties
#: sorted by name.
LATER = 9


@dataclass(frozen=True)
class AttackEntry:
    """One name in the attack registry: what :func:`create_attack` builds for it and how the
    report shows it, kept together so that a new attack is one entry, not edits in the report.

    ``cls`` is None for a label that results carry but :func:`create_attack` does not accept
    (a way the evaluation runs an attack, e.g. ``cw-search``)."""

    #: The name as report tables show it (``APGD-CE``).
    display: str
    #: Where report rows and columns put it: ascending, ties sorted by name.
    order: int = LATER
    #: The attack class, or None for a result label only.
    cls: type | None = None
    #: Parameters the name fixes (``apgd-ce`` is APGD with ``loss='ce'``).
    fixed: dict[str, Any] = field(default_factory=dict)
    #: Where the adversarial-example grid puts it (paper Fig. 19-21 show CW-L2 first).
    example_order: int = LATER


_ENTRIES: dict[str, AttackEntry] = {
    # attacks, by class (the order list_attacks names them in)
    "fgsm": AttackEntry("FGSM", order=0, cls=FGSM, example_order=3),
    "bim": AttackEntry("BIM", order=1, cls=BIM, example_order=2),
    "pgd": AttackEntry("PGD", order=2, cls=PGD, example_order=1),
    "apgd": AttackEntry("apgd", cls=APGD),
    "cw": AttackEntry("CW", order=5, cls=CW, example_order=0),
    "autoattack": AttackEntry("AutoAttack", order=7, cls=AutoAttack, example_order=4),
    "mora": AttackEntry("mora", cls=MORA),
    "arc": AttackEntry("arc", cls=ARC),
    "rays": AttackEntry("rays", cls=RayS),
    # names that fix some parameters of a class
    "apgd-ce": AttackEntry("APGD-CE", order=3, cls=APGD, fixed={"loss": "ce"}),
    "apgd-dlr": AttackEntry("APGD-DLR", order=4, cls=APGD, fixed={"loss": "dlr"}),
    "cw-l2": AttackEntry("cw-l2", cls=CW),
    # result labels that are no create_attack name (dmlcli.eval sets them)
    "cw-search": AttackEntry("CW (c searched)", order=6),
    "transfer-apgd-ce": AttackEntry("transfer APGD-CE"),
    "worst-case": AttackEntry("worst case"),
}


def list_attacks() -> list[str]:
    """Names accepted by :func:`create_attack`."""
    return [name for name, entry in _ENTRIES.items() if entry.cls is not None]


def attack_entry(name: str) -> AttackEntry:
    """The registry entry of an attack name or result label (``pgd``, ``cw-search``); a name
    the registry lacks shows as itself, after the known ones (:data:`LATER`)."""
    return _ENTRIES.get(name) or AttackEntry(name)


def attack_parameters(name: str) -> list[str]:
    """The parameters :func:`create_attack` accepts for ``name``."""
    entry = _ENTRIES.get(name)
    if entry is None or entry.cls is None:
        raise DmlError(f"unknown attack {name!r}; choose one of {', '.join(list_attacks())}")
    skip = {"name", "warnings", *entry.fixed}
    return [f.name for f in dataclasses.fields(entry.cls) if f.name not in skip]


def create_attack(name: str, **params: Any) -> Attack:
    """The attack ``name`` with ``params`` (e.g. ``create_attack('pgd', eps=0.1, steps=20)``).

    Unknown names and parameters raise :class:`~dmlcli.errors.DmlError` naming the choices.
    """
    allowed = attack_parameters(name)
    entry = _ENTRIES[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise DmlError(
            f"attack {name} has no parameter {unknown[0]!r}; its parameters: {', '.join(allowed)}"
        )
    try:
        return entry.cls(**entry.fixed, **params, name=name)
    except TypeError as exc:  # a missing required parameter such as eps
        raise DmlError(f"attack {name}: {exc}") from None


__all__ = [
    "APGD",
    "ARC",
    "BIM",
    "CW",
    "FGSM",
    "MORA",
    "PGD",
    "RayS",
    "LATER",
    "Attack",
    "AttackBase",
    "AttackEntry",
    "AutoAttack",
    "Objective",
    "Trace",
    "as_objective",
    "attack_entry",
    "attack_parameters",
    "create_attack",
    "create_loss",
    "create_surface",
    "list_attacks",
    "list_losses",
    "list_surfaces",
    "random_targets",
    "seeded",
]
