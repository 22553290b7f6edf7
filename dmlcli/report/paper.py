"""The paper's published numbers, as recipes store them: ``[paper.<section>.<role>]`` maps
columns such as ``benign``, ``fgsm@0.2``, ``bim-10@0.2``, ``pgd-20@8/255``, ``cw`` or
``autoattack@0.3`` to accuracies. The report puts each beside our number for the same attack
and budget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dmlcli.data import DATASETS
from dmlcli.errors import DmlError
from dmlcli.units import parse_eps

_COLUMN = re.compile(
    r"^(?P<attack>[a-z][a-z0-9]*(?:-[a-z][a-z0-9]*)*?)(?:-(?P<steps>\d+))?"
    r"(?:@(?P<eps>[0-9./]+))?$"
)
_LABEL = re.compile(r"^(?P<base>.*?)(?:-(?P<steps>\d+))?(?:x(?P<r>\d+))?$")


@dataclass(frozen=True)
class ColumnKey:
    """A paper table column: ``benign`` or an attack with optional steps and eps."""

    attack: str
    steps: int | None = None
    eps: float | None = None

    def matches(self, attack: str, steps: int | None, eps: float | None) -> bool:
        if self.attack != attack:
            return False
        if self.steps is not None and steps is not None and self.steps != steps:
            return False
        if self.eps is None or eps is None:
            return self.eps is None and eps is None
        return math.isclose(self.eps, eps, rel_tol=1e-6, abs_tol=1e-9)


@dataclass(frozen=True)
class PaperSection:
    """One ``[paper.<section>]`` of a recipe: ``roles`` sections map columns (``benign``,
    ``fgsm@0.2``, ...) to accuracies per model role; ``members`` sections map each of
    ``rows`` to a list ``[ensemble, model 1, ...]``."""

    kind: str  # "roles" or "members"
    doc: str
    rows: tuple[str, ...] = ()


#: The paper's published numbers a recipe may carry: ``[paper.<section>.<role>]``, ``<role>``
#: a key of ``[train]``. A column is ``benign`` or ``attack[-steps][@eps]`` (``fgsm@0.2``,
#: ``bim-10@0.2``, ``cw``, ``pgd-20@8/255``, ``autoattack@0.3``); cw_distortion's lists are
#: ``[ensemble k=0, ensemble k=0.1, model 1, ...]``. Every section may also say
#: :data:`PAPER_META` keys: ``table`` (its source), ``label`` (the header of the paper
#: columns, default "paper"), ``eps`` and ``note``.
PAPER_SECTIONS: dict[str, PaperSection] = {
    "whitebox": PaperSection("roles", "Tables 2, 3, 10: accuracy per model and attack"),
    "rdml": PaperSection("roles", "Tables 6, 9: DML vs R-DML, 5 restarts"),
    "autoattack": PaperSection("roles", "Tables 7, 8: AutoAttack accuracy"),
    "transfer": PaperSection(
        "members", "Tables 4, 11: attacks crafted on Model 1", ("benign", "untargeted", "targeted")
    ),
    "cw_distortion": PaperSection(
        "members",
        "Tables 5, 12: adaptive CW-L2 (ensemble k=0, ensemble k=0.1, models 1..K)",
        ("accuracy", "distortion"),
    ),
}
PAPER_META = ("table", "label", "eps", "note")


def parse_column(text: str) -> ColumnKey:
    """``'bim-10@0.2'`` -> ColumnKey('bim', 10, 0.2); ``'benign'``; ``'cw'``; raises on junk."""
    m = _COLUMN.match(text.strip().lower())
    if not m:
        raise DmlError(f"cannot read column {text!r}; write e.g. benign, fgsm@0.2, pgd-20@8/255")
    eps = parse_eps(m["eps"]) if m["eps"] else None
    return ColumnKey(m["attack"], int(m["steps"]) if m["steps"] else None, eps)


def check_paper(paper: Any, roles: Sequence[str]) -> dict[str, Any]:
    """Check a recipe's ``[paper]`` table against :data:`PAPER_SECTIONS` (``roles``: the
    recipe's ``[train]`` keys) and return it; a problem is one :class:`DmlError` line naming
    the key (the recipe reader adds the file)."""
    if not isinstance(paper, dict):
        raise DmlError("[paper] must be a table")
    out: dict[str, Any] = {}
    for section, body in paper.items():
        if section in ("source", "note", "dataset"):
            _check_str(f"paper.{section}", body)
            if section == "dataset" and body not in DATASETS:
                raise DmlError(
                    f"bad value for 'paper.dataset': {body!r}; choose from {', '.join(DATASETS)}"
                )
            out[section] = body
            continue
        if section not in PAPER_SECTIONS:
            allowed = sorted(f"paper.{k}" for k in (*PAPER_SECTIONS, "source", "note", "dataset"))
            raise DmlError(f"unknown key 'paper.{section}'; allowed: {', '.join(allowed)}")
        if not isinstance(body, dict):
            raise DmlError(f"[paper.{section}] must be a table")
        for key, value in body.items():
            full = f"paper.{section}.{key}"
            if key in PAPER_META:
                _check_str(full, value)
                if key == "eps":
                    _check_eps(full, value)
                continue
            if key not in roles:
                raise DmlError(
                    f"unknown key {full!r}: neither {', '.join(PAPER_META)} nor a [train] "
                    f"model (models: {', '.join(roles) or 'none'})"
                )
            if not isinstance(value, dict):
                raise DmlError(f"bad value for {full!r}: expected a table")
            for col, v in value.items():
                _check_cell(PAPER_SECTIONS[section], full, col, v)
        out[section] = body
    return out


def _check_cell(spec: PaperSection, full: str, col: str, v: Any) -> None:
    """One ``column = number`` (roles) or ``row = [numbers]`` (members) of a paper section."""
    where = f"{full}.{col}"
    if spec.kind == "roles":
        try:
            parse_column(col)
        except DmlError as exc:
            raise DmlError(f"bad key {where!r}: {exc}") from None
        _check_pct(where, v)
        return
    if col not in spec.rows:
        allowed = sorted(f"{full}.{r}" for r in spec.rows)
        raise DmlError(f"unknown key {where!r}; allowed: {', '.join(allowed)}")
    if not isinstance(v, list) or not v:
        raise DmlError(f"bad value for {where!r}: a list [ensemble, model 1, ...]")
    for item in v:
        if col != "distortion":
            _check_pct(where, item)
        elif isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
            raise DmlError(f"bad value for {where!r}: {item!r} is not a distortion >= 0")


def _check_str(key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise DmlError(f"bad value for {key!r}: expected a string, got {value!r}")


def _check_pct(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise DmlError(f"bad value for {key!r}: {value!r} is not a percentage in [0, 100]")


def _check_eps(key: str, value: Any) -> None:
    try:
        parse_eps(str(value))
    except DmlError as exc:
        raise DmlError(f"bad value for {key!r}: {exc}") from None


def split_label(label: str) -> tuple[str, int | None, int | None]:
    """An attack label -> (attack, steps, restarts): ``'pgd-20x5'`` -> ('pgd', 20, 5);
    ``'fgsm'`` -> ('fgsm', None, None); ``'autoattack-standard'`` -> ('autoattack', None,
    None); ``'cw-200'`` -> ('cw', 200, None)."""
    m = _LABEL.match(label)
    base = m["base"] if m else label
    if base.startswith("autoattack"):
        base = "autoattack"
    steps = int(m["steps"]) if m and m["steps"] else None
    restarts = int(m["r"]) if m and m["r"] else None
    return base, steps, restarts


def paper_value(numbers: dict[str, Any], label: str, eps: float | None) -> float | None:
    """The paper's number for our attack ``label`` at ``eps`` from ``{'fgsm@0.2': 23.81}``."""
    base, steps, _ = split_label(label)
    for key, value in numbers.items():
        try:
            col = parse_column(key)
        except DmlError:
            continue
        if col.attack != "benign" and col.matches(base, steps, eps):
            return float(value)
    return None
