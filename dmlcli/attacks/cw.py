"""CW-L2 (Carlini & Wagner 2017): Adam in tanh space on ``||x' - x||_2^2 + c f(x')``.

``x' = (tanh(w) + 1) / 2`` stays in [0, 1] for every ``w``. ``f`` is the margin loss on the
objective's surface clipped at ``-kappa``: ``max(z_y - max_{j != y} z_j, -kappa)``
(targeted: ``max(max_{j != t} z_j - z_t, -kappa)``). ``c`` is the penalty constant the
paper calls gamma: ``c = 1`` with 200 steps for Tables 2-3; ``c = 1``, 1000 steps, lr 0.1
and ``kappa`` in {0, 0.1} for the adaptive distortion of Table 5. The paper fixes ``c``
(``search_steps = 0``, the default). A fixed ``c`` that is too small for a model fails
on most samples and so reports them robust with distortion 0; ``search_steps = S``
runs Carlini & Wagner's binary search instead: ``S`` rounds of ``steps`` Adam iterations
from ``x``, per sample halving the bracket around ``c`` after a success and raising ``c``
(x10 while no success bounds it) after a failure. Per sample the attack returns the
smallest-L2 iterate of any round that fools the objective's decision (and, for
``kappa > 0``, has a surface margin of at least ``kappa``), or ``x`` itself when no iterate
does: its distortion is then 0 and the sample counts as robust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dmlcli.attacks.base import AttackBase, CallProgress, Objective
from dmlcli.attacks.losses import cw_loss
from dmlcli.attacks.surfaces import surface_scores
from dmlcli.errors import DmlError


@dataclass
class CW(AttackBase):
    """Unbounded CW-L2 (Carlini & Wagner 2017, "Towards evaluating the robustness of neural
    networks", Section V-A: minimize ``||(tanh(w) + 1)/2 - x||_2^2 + c * f((tanh(w) + 1)/2)``
    with Adam, ``f`` the margin loss f_6 of Section IV clipped at ``-kappa``), with their
    binary search over ``c`` when ``search_steps > 0`` (see the module docstring).

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - target: ``[B]`` or None (targeted only; drawn with ``seed`` if None).
        - returns: ``[B, C, H, W]`` in [0, 1]; ``x`` itself where no iterate fools.

    Examples:
        >>> attack = create_attack("cw", c=1.0, steps=20, lr=0.1, search_steps=2)
        >>> x_adv = attack(Objective(ensemble, "sum", "vote"), x, y)
        >>> l2 = (x_adv - x).flatten(1).norm(dim=1)  # 0 where the attack failed
    """

    c: float = 1.0
    kappa: float = 0.0
    steps: int = 200
    lr: float = 0.01
    targeted: bool = False
    seed: int = 0
    norm: str = "l2"
    eps: float | None = None
    search_steps: int = 0
    name: str = "cw"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise DmlError("cw: steps must be at least 1")
        if self.search_steps < 0:
            raise DmlError(f"cw: search_steps must be >= 0; got {self.search_steps}")
        for key in ("c", "kappa", "lr"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise DmlError(f"cw: {key} must be a finite number >= 0; got {value}")
        if self.norm != "l2" or self.eps is not None:
            raise DmlError("cw: the CW-L2 attack is unbounded (norm l2, no eps)")

    def setting(self) -> dict[str, Any]:
        out = {**super().setting(), "loss": "cw", "step_size": self.lr, "restarts": 1}
        if not self.search_steps:  # results stored before the search existed keep their key
            out.pop("search_steps")
        return out

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
    ) -> torch.Tensor:
        kappa = self.kappa

        def clipped(z: torch.Tensor, lab: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
            return cw_loss(z, lab, t).clamp(max=kappa)  # maximized: -f

        best = x.clone()
        best_l2 = torch.full((len(x),), float("inf"), device=x.device)
        c = torch.full((len(x),), float(self.c), device=x.device)
        lower = torch.zeros_like(c)
        upper = torch.full_like(c, math.inf)
        hit = torch.zeros(len(x), dtype=torch.bool, device=x.device)

        def check(xa: torch.Tensor, l2: torch.Tensor, logits: torch.Tensor) -> None:
            ok = objective.success(xa, logits, y, target)
            if kappa > 0 and objective.surface != "members":
                scores = surface_scores(objective.surface, logits)
                ok &= cw_loss(scores, y, target) >= kappa
            hit.logical_or_(ok)
            better = ok & (l2 < best_l2)
            best[better] = xa[better]
            best_l2[better] = l2[better]

        rounds = max(1, self.search_steps)
        with torch.enable_grad():
            for r in range(rounds):
                hit.zero_()
                w = torch.atanh((2 * x - 1) * (1 - 1e-6)).requires_grad_(True)
                optimizer = torch.optim.Adam([w], lr=self.lr)
                for step in range(self.steps + 1):
                    xa = (torch.tanh(w) + 1) / 2
                    l2sq = (xa - x).pow(2).flatten(1).sum(1)
                    value, logits = objective.loss(xa, y, clipped, target)
                    with torch.no_grad():
                        check(xa.detach(), l2sq.detach().sqrt(), logits)
                    if step == self.steps:
                        break
                    cost = (l2sq - c * value).sum()
                    optimizer.zero_grad()
                    cost.backward()
                    optimizer.step()
                    progress.steps(
                        r * self.steps + step + 1,
                        rounds * self.steps,
                        f"{self.name}: round {r + 1}/{rounds}, step {step + 1}/{self.steps}",
                    )
                with torch.no_grad():  # Carlini & Wagner's bracket update
                    upper = torch.where(hit, torch.minimum(upper, c), upper)
                    lower = torch.where(hit, lower, torch.maximum(lower, c))
                    c = torch.where(torch.isinf(upper), c * 10, (lower + upper) / 2)
                progress((r + 1) / rounds, f"{self.name}: round {r + 1}/{rounds} done")
        return best
