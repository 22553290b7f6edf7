"""AutoAttack (Croce & Hein 2020) through the ``pyautoattack`` package (Tables 7-8).

AutoAttack sees a classifier ``x -> [B, C]`` scores: the objective's surface scores (summed
logits for the paper's protocol; ``mean-softmax`` and ``member:k`` also work, ``members``
has no class scores). Versions: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``,
``rand`` (APGD-CE and APGD-DLR with ``eot`` draws, for randomized defenses) and ``custom``
(``attacks`` list). ``auto`` picks ``rand`` when the model's head is randomized (R-DML,
AUG-DML) and ``standard`` otherwise.

Two honest caveats are recorded rather than hidden: AutoAttack decides success on the
argmax of the scores it attacks (e.g. the summed logits), so it stops on a sample once the
*sum* is fooled even if the *vote* is not (the result is then scored on the decision, and
the adaptive suite's APGD checks the decision itself); and its own warnings (randomized
defense, zero gradients, Square beating the white-box attacks, ...) are captured from its
logger, the ``warnings`` module and stdout into ``self.warnings`` and never swallowed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dmlcli.attacks.base import Objective, as_objective, check_budget, seeded
from dmlcli.attacks.surfaces import surface_scores
from dmlcli.errors import DmlError

VERSIONS = ("auto", "standard", "plus", "rand", "custom")
SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_NORMS = {"linf": "Linf", "l2": "L2"}


class ScoresModel(nn.Module):
    """The objective's surface scores as a plain classifier ``x -> [B, C]`` (one draw)."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        if objective.surface == "members":
            raise DmlError(
                "autoattack needs class scores: use surface sum, mean-softmax or member:k"
            )
        self.objective = objective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return surface_scores(self.objective.surface, self.objective.logits(x))


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@dataclass
class AutoAttack:
    """AutoAttack on ``x`` ``[B, C, H, W]`` in [0, 1], ``y`` ``[B]`` (untargeted only).

    ``steps`` sets APGD's iterations (100 in AutoAttack), ``square_queries`` Square's query
    budget (5000), ``eot`` the draws of the ``rand`` version (20). ``warnings`` collects
    AutoAttack's own warnings of every call (deduplicated, in order).
    """

    eps: float
    norm: str = "linf"
    version: str = "auto"
    attacks: tuple[str, ...] = ()
    steps: int = 100
    square_queries: int = 5000
    eot: int = 20
    seed: int = 0
    targeted: bool = False
    name: str = "autoattack"
    warnings: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        check_budget(self.norm, self.eps, self.name)
        if self.version not in VERSIONS:
            raise DmlError(
                f"unknown AutoAttack version {self.version!r}; choose one of {', '.join(VERSIONS)}"
            )
        self.attacks = tuple(self.attacks)
        bad = [a for a in self.attacks if a not in SUB_ATTACKS]
        if bad:
            raise DmlError(
                f"unknown AutoAttack attack {bad[0]!r}; choose from {', '.join(SUB_ATTACKS)}"
            )
        if self.version == "custom" and not self.attacks:
            raise DmlError("AutoAttack version custom needs a list of attacks")
        if self.attacks and self.version != "custom":
            raise DmlError("an AutoAttack attack list needs version custom")
        if self.targeted:
            raise DmlError(
                "autoattack is untargeted here (its targeted attacks pick their own targets)"
            )
        if self.steps < 1 or self.square_queries < 1 or self.eot < 1:
            raise DmlError("autoattack: steps, square queries and eot must be at least 1")

    def resolved_version(self, randomized: bool) -> str:
        """``auto`` -> ``rand`` for a randomized head, else ``standard``."""
        if self.version == "auto":
            return "rand" if randomized else "standard"
        return self.version

    def setting(self) -> dict[str, Any]:
        """The setting; resolve ``auto`` first (``resolved_version``) to record the real one."""
        version = self.version
        return {
            "name": self.name,
            "eps": self.eps,
            "norm": self.norm,
            "version": version,
            "attacks": list(self.attacks),
            "steps": self.steps,
            "square_queries": self.square_queries,
            "eot": self.eot if version in ("rand", "auto") else 1,
            "seed": self.seed,
            "targeted": False,
            "loss": "autoattack",
            "restarts": 1,
            "step_size": None,
        }

    def _build(self, model: nn.Module, num_classes: int, version: str, device: Any) -> Any:
        from pyautoattack import AutoAttack as _AA

        aa = _AA(
            model,
            attacks=list(self.attacks) if version == "custom" else None,
            device=device,
            eps=self.eps,
            norm=_NORMS[self.norm],
            seed=self.seed,
            version=version,
        )
        for apgd in (aa.apgd, aa.apgd_targeted):
            n = self.steps
            apgd.n_iter = apgd.n_iter_orig = n
            apgd.n_iter_2 = max(int(0.22 * n), 1)
            apgd.n_iter_min = max(int(0.06 * n), 1)
            apgd.size_decr = max(int(0.03 * n), 1)
        aa.square.n_queries = self.square_queries
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, num_classes - 1)
        if version == "rand":
            aa.apgd.eot_iter = self.eot
        return aa

    def __call__(
        self,
        model: nn.Module | Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if target is not None:
            raise DmlError("autoattack: a target was given to an untargeted attack")
        objective = as_objective(model)
        scores = ScoresModel(objective)
        version = self.resolved_version(objective.randomized)
        with torch.no_grad():
            num_classes = scores(x[:1]).shape[-1]
        sink: list[str] = []
        logger = logging.getLogger("auto-attack")
        handler, propagate = _Collect(sink), logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        stdout = io.StringIO()
        try:
            with (
                seeded(self.seed, x.device),
                warnings.catch_warnings(record=True) as caught,
                contextlib.redirect_stdout(stdout),
            ):
                warnings.simplefilter("always")
                aa = self._build(scores, num_classes, version, x.device)
                aa.verbose = False
                x_adv, _ = aa.run_standard_evaluation(x.detach(), y, batch_size=len(x))
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
        sink += [str(w.message) for w in caught]
        sink += [f"stdout: {line}" for line in stdout.getvalue().splitlines() if line.strip()]
        for message in sink:
            if message not in self.warnings:
                self.warnings.append(message)
        return x_adv.detach()
