"""FGSM (Goodfellow et al. 2014): one step of size eps along the gradient sign (Tables 2-3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dmlcli.attacks.base import (
    Objective,
    as_objective,
    ascent_step,
    check_budget,
    project,
    resolve_target,
    seeded,
)
from dmlcli.attacks.losses import create_loss


@dataclass
class FGSM:
    """``x_adv = clip(x + eps * sign(grad_x loss))`` (L2: ``eps`` along the unit gradient).

    ``x`` ``[B, C, H, W]`` in [0, 1], ``y`` ``[B]``; no random start, one gradient (averaged
    over the objective's EOT draws on a randomized head).
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
        return {**asdict(self), "steps": 1, "step_size": self.eps, "restarts": 1}

    def __call__(
        self,
        model: nn.Module | Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        objective = as_objective(model)
        target = resolve_target(self, objective, x, y, target)
        with seeded(self.seed, x.device):
            _, grad, _ = objective.loss_grad(x, y, create_loss(self.loss), target)
        return project(ascent_step(x, grad, self.eps, self.norm), x, self.eps, self.norm).detach()
