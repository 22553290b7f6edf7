"""Attacks, one per module, behind one protocol: ``attack(model, x, y, target=None) -> x_adv``.

``create_attack(name, **params)`` builds one; ``list_attacks()`` names them. ``model`` is any
module mapping pixels in [0, 1] to member logits ``[K, B, C]`` or logits ``[B, C]``, or an
:class:`Objective` (surface + decision + EOT draws). Every attack derives from
:class:`~dmlcli.attacks.base.AttackBase` (the shared call: objective, targets, seeding,
output checks) and takes an optional ``progress=callable(fraction, info)`` keyword. See
:mod:`dmlcli.attacks.base`.
"""

from __future__ import annotations

import dataclasses
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

_CLASSES: dict[str, type] = {
    "fgsm": FGSM,
    "bim": BIM,
    "pgd": PGD,
    "apgd": APGD,
    "cw": CW,
    "autoattack": AutoAttack,
    "mora": MORA,
    "arc": ARC,
    "rays": RayS,
}
# Names that fix some parameters of a class: name -> (class name, fixed parameters).
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "apgd-ce": ("apgd", {"loss": "ce"}),
    "apgd-dlr": ("apgd", {"loss": "dlr"}),
    "cw-l2": ("cw", {}),
}


def list_attacks() -> list[str]:
    """Names accepted by :func:`create_attack`."""
    return [*_CLASSES, *_ALIASES]


def attack_parameters(name: str) -> list[str]:
    """The parameters :func:`create_attack` accepts for ``name``."""
    base, fixed = _ALIASES.get(name, (name, {}))
    if base not in _CLASSES:
        raise DmlError(f"unknown attack {name!r}; choose one of {', '.join(list_attacks())}")
    skip = {"name", "warnings", *fixed}
    return [f.name for f in dataclasses.fields(_CLASSES[base]) if f.name not in skip]


def create_attack(name: str, **params: Any) -> Attack:
    """The attack ``name`` with ``params`` (e.g. ``create_attack('pgd', eps=0.1, steps=20)``).

    Unknown names and parameters raise :class:`~dmlcli.errors.DmlError` naming the choices.
    """
    allowed = attack_parameters(name)
    base, fixed = _ALIASES.get(name, (name, {}))
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise DmlError(
            f"attack {name} has no parameter {unknown[0]!r}; its parameters: {', '.join(allowed)}"
        )
    try:
        return _CLASSES[base](**fixed, **params, name=name)
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
    "Attack",
    "AttackBase",
    "AutoAttack",
    "Objective",
    "Trace",
    "as_objective",
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
