"""FGSM (Goodfellow et al. 2014): one step of size eps along the gradient sign (Tables 2-3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dmlcli.attacks.base import (
    AttackBase,
    CallProgress,
    Objective,
    ascent_step,
    check_budget,
    project,
)
from dmlcli.attacks.losses import create_loss


@dataclass
class FGSM(AttackBase):
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy 2014, "Explaining and
    harnessing adversarial examples", Section 4: ``eta = eps * sign(grad_x J(theta, x, y))``).

    ``x_adv = clip(x + eps * sign(grad_x loss))`` (L2: ``eps`` along the unit gradient). No
    random start, one gradient (averaged over the objective's EOT draws on a randomized
    head); targeted: the step ascends the targeted loss (toward ``target``).

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - target: ``[B]`` or None (targeted only; drawn with ``seed`` if None).
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` in ``norm``.

    Examples:
        >>> attack = create_attack("fgsm", eps=8 / 255)
        >>> x_adv = attack(Objective(ensemble, "sum", "vote"), x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """

    eps: float
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    seed: int = 0
    name: str = "fgsm"

    def __post_init__(self) -> None:
        check_budget(self.norm, self.eps, self.name)
        create_loss(self.loss)

    def setting(self) -> dict[str, Any]:
        return {**super().setting(), "steps": 1, "step_size": self.eps, "restarts": 1}

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
    ) -> torch.Tensor:
        _, grad, _ = objective.loss_grad(x, y, create_loss(self.loss), target)
        return project(ascent_step(x, grad, self.eps, self.norm), x, self.eps, self.norm)
